"""Colour palette for parsing masks and overlays on images, and the confusion-matrix picture."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from segexpr.labels import NUM_CLASSES
from segexpr.ops.pixels import uint8_to_images

if TYPE_CHECKING:
    from PIL import Image

#: One RGB colour (uint8) per order-A class; background is black.
PALETTE = torch.tensor([
    [0, 0, 0], [204, 153, 102], [128, 0, 128], [178, 0, 178], [0, 102, 255], [0, 178, 255], [255, 255, 0],
    [0, 153, 76], [0, 204, 102], [255, 128, 0], [255, 51, 51], [102, 0, 0], [255, 102, 178], [204, 0, 102],
    [153, 204, 0], [102, 153, 153], [0, 76, 153], [102, 51, 0], [230, 230, 230],
], dtype=torch.uint8)
assert PALETTE.shape[0] == NUM_CLASSES


def colorize(mask: torch.Tensor) -> torch.Tensor:
    """Class map int64 ``[..., H, W]`` (order A) -> RGB float ``[..., 3, H, W]`` in ``[-1, 1]``."""
    if mask.dtype.is_floating_point:
        raise ValueError(f"colorize expects an integer class map, got dtype {mask.dtype}")
    if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) >= NUM_CLASSES):
        raise ValueError(f"mask values must be in [0, {NUM_CLASSES - 1}], got [{int(mask.min())}, {int(mask.max())}]")
    return uint8_to_images(PALETTE.to(mask.device)[mask].movedim(-1, -3))


def overlay(image: torch.Tensor, mask: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend a colourised mask over an image.

    Args:
        image: float ``[B, 3, H, W]`` or ``[3, H, W]`` in ``[-1, 1]``.
        mask: int64 ``[B, H, W]`` or ``[H, W]`` class map (order A) of the same spatial size.
        alpha: weight of the mask colours; background pixels keep the image.

    Returns:
        float tensor shaped like ``image``, in ``[-1, 1]``.
    """
    if image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and mask {tuple(mask.shape)} differ in size")
    colours = colorize(mask)
    weight = alpha * (mask != 0).unsqueeze(-3).to(image.dtype)
    return (1 - weight) * image + weight * colours



def label_columns(grid: torch.Tensor, titles: list[str] | tuple[str, ...], tile_width: int, padding: int = 2,
                  header: int = 16) -> "Image.Image":
    """Write column titles above a ``torchvision.utils.make_grid`` result.

    Args:
        grid: float ``[3, H, W]`` in ``[0, 1]`` (as ``make_grid`` returns for ``[0, 1]`` tiles).
        titles: one title per column, left to right.
        tile_width: width of one tile in ``grid`` (without padding).
        padding: the ``padding`` the grid was made with.
        header: height of the title strip.
    """
    from PIL import Image, ImageDraw

    if grid.dim() != 3 or grid.shape[0] != 3:
        raise ValueError(f"grid must be [3, H, W], got {tuple(grid.shape)}")
    body = Image.fromarray(grid.detach().float().cpu().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())
    canvas = Image.new("RGB", (body.width, body.height + header), "white")
    canvas.paste(body, (0, header))
    draw = ImageDraw.Draw(canvas)
    for column, name in enumerate(titles):
        draw.text((padding + column * (tile_width + padding) + 2, 2), name, fill="black")
    return canvas


def titled_grid(tiles: torch.Tensor, titles: list[str] | tuple[str, ...], padding: int = 2,
                header: int = 16, upscale: int = 1) -> "Image.Image":
    """A PIL image of ``tiles`` laid out with one column per title and the titles written above.

    Args:
        tiles: float ``[N, 3, h, w]`` in ``[-1, 1]``, row-major (``len(titles)`` tiles per row).
        titles: column titles.
        padding: pixels between tiles.
        header: height of the title strip.
        upscale: nearest-neighbour enlargement of small tiles, for viewing.
    """
    import torch.nn.functional as F
    from torchvision.utils import make_grid

    if tiles.dim() != 4 or tiles.shape[1] != 3:
        raise ValueError(f"tiles must be [N, 3, h, w], got {tuple(tiles.shape)}")
    if not titles or tiles.shape[0] % len(titles):
        raise ValueError(f"{tiles.shape[0]} tiles do not fill rows of {len(titles)} titled columns")
    if upscale > 1:
        tiles = F.interpolate(tiles, scale_factor=upscale, mode="nearest")
    grid = make_grid(tiles.detach().float().cpu().clamp(-1, 1), nrow=len(titles), padding=padding,
                     normalize=True, value_range=(-1, 1), pad_value=1.0)
    return label_columns(grid, titles, tiles.shape[-1], padding=padding, header=header)


def confusion_image(confusion: Sequence[Sequence[int]], names: Sequence[str], title: str = "",
                    cell: int = 48) -> "Image.Image":
    """A confusion matrix as a picture: rows are targets, columns the judged class, cells shaded by row share.

    ``confusion[i][j]`` counts items of target ``names[i]`` read as ``names[j]``; each cell shows its count and
    is shaded by the fraction of its row (the diagonal is per-class accuracy). Returns a PIL RGB image.
    """
    from PIL import Image, ImageDraw

    n = len(names)
    if len(confusion) != n or any(len(row) != n for row in confusion):
        raise ValueError(f"confusion must be {n} x {n} for {n} names, got {[len(r) for r in confusion]}")
    margin, top = 80, 44 if title else 24
    image = Image.new("RGB", (margin + n * cell + 8, top + margin // 2 + n * cell + 24), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((8, 6), title, fill="black")
    draw.text((margin, top - 14), "judged as ->", fill="black")
    for j, name in enumerate(names):
        draw.text((margin + j * cell + 3, top + 2), name[:8], fill="black")
    grid_top = top + margin // 2
    for i, row in enumerate(confusion):
        total = max(1, sum(row))
        draw.text((6, grid_top + i * cell + cell // 2 - 6), names[i][:11], fill="black")
        for j, count in enumerate(row):
            share = count / total
            shade = int(255 * (1 - share))
            colour = (shade, shade, 255) if i == j else (255, shade, shade)
            box = (margin + j * cell, grid_top + i * cell, margin + (j + 1) * cell - 1, grid_top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=colour, outline=(200, 200, 200))
            draw.text((box[0] + 6, box[1] + cell // 2 - 6), str(count), fill="black" if share < 0.6 else "white")
    draw.text((6, grid_top + n * cell + 6), "rows: target expression; blue: correct; red: confusions",
              fill="black")
    return image
