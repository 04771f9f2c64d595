"""Colour palette for parsing masks and overlays on images."""
from __future__ import annotations

import torch

from segexpr.data.labels import NUM_CLASSES

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
    rgb = PALETTE.to(mask.device)[mask].movedim(-1, -3).float()
    return rgb / 127.5 - 1.0


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
