"""Region geometry as pure tensor operations: soft/hard region masks, boxes from masks and landmarks, crop,
paste, box masks and feathering. Used by generators, discriminators, objectives and the editor alike.

Coordinates: boxes are ``(cx, cy, w, h)`` in **normalised** image coordinates, the ``[-1, 1]`` grid space of
``F.affine_grid`` / ``F.grid_sample`` with ``align_corners=False``: ``-1`` is the left/top *edge* of the
image and ``+1`` the right/bottom edge, so the full image is a box ``(0, 0, 2, 2)`` and pixel column ``j``
(centre at continuous x ``j + 0.5``) sits at ``(2 * j + 1) / W - 1``. Landmarks use continuous pixel
coordinates, so ``x_norm = 2 * x / W - 1``.

Everything here is differentiable: boxes w.r.t. masks (moments) and landmarks (min/max), crops and pastes
w.r.t. images *and* boxes (``grid_sample`` is differentiable w.r.t. its sampling grid). That is what lets
GAN gradients reach the segmenter through the crop geometry, not just through the fusion weights.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from segexpr.labels import NUM_CLASSES, REGION_GROUPS, REGION_LANDMARKS, REGION_NAMES

#: Canonical ``(cx, cy, w, h)`` of each region on an aligned, centred face (normalised coordinates), used as
#: the fallback box when a region's mask is (nearly) empty. Rough positions of SynthFACS / aligned
#: AffectNet faces; the fusion weight of an empty region is ~0 anyway, so they only need to be plausible.
CANONICAL_REGION_BOXES: dict[str, tuple[float, float, float, float]] = {
    "brows": (0.0, -0.35, 1.0, 0.35),
    "eyes": (0.0, -0.15, 1.0, 0.35),
    "nose": (0.0, 0.1, 0.45, 0.5),
    "mouth": (0.0, 0.45, 0.75, 0.4),
    # one side of a two-sided part (``l_`` = image-left, x < 0): half of the pair's box
    "l_brow": (-0.25, -0.35, 0.5, 0.35),
    "r_brow": (0.25, -0.35, 0.5, 0.35),
    "l_eye": (-0.25, -0.15, 0.5, 0.35),
    "r_eye": (0.25, -0.15, 0.5, 0.35),
}
#: Fallback for a region without a canonical box: the whole image.
FULL_IMAGE_BOX: tuple[float, float, float, float] = (0.0, 0.0, 2.0, 2.0)


def canonical_boxes(regions: Sequence[str] = REGION_NAMES) -> torch.Tensor:
    """Default boxes ``[R, 4]`` for ``regions``: :data:`CANONICAL_REGION_BOXES`, else the whole image."""
    return torch.tensor([CANONICAL_REGION_BOXES.get(r, FULL_IMAGE_BOX) for r in regions], dtype=torch.float32)


def _pixel_centres(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Normalised (align_corners=False) coordinates of the ``size`` pixel centres along one axis."""
    return (2 * torch.arange(size, device=device, dtype=dtype) + 1) / size - 1


def _check_boxes(boxes: torch.Tensor, where: str) -> None:
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"{where} expects boxes [B, R, 4] as (cx, cy, w, h), got shape {tuple(boxes.shape)}")


def _size_pair(size: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    if len(pair) != 2 or min(pair) < 1:
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")
    return pair  # type: ignore[return-value]


def boxes_from_masks(
    masks: torch.Tensor,
    scale: float = 2.5,
    min_size: float = 0.15,
    eps: float = 1e-6,
    default_boxes: torch.Tensor | None = None,
    power: float = 1.0,
) -> torch.Tensor:
    """Region boxes from the moments of soft masks (differentiable w.r.t. ``masks``).

    **Robustness to diffuse probability** (``power``): the moments are those of the *sharpened* mask ``p ** power``
    (renormalised by its own mass, like any moment). A real parser leaves 0.1-1 % probability on distant pixels; at
    ``power=1`` every such pixel counts and the second moment grows with the squared distance, so a brow band with
    0.5 % spread over the rest of a 128 px image gets a box about three times too tall. At ``power=4`` a 1 % pixel
    weighs 1e-8 against ~1 for a confident one, so diffuse probability cannot move the box, while the mapping stays
    smooth: gradients reach every pixel in proportion to ``power * p ** (power - 1)`` (confident pixels most), and
    there is no kink a float rounding could flip (a threshold ``relu(p - tau)`` was tried first: with an untrained
    parser, whose brow probability sits near 2/19 ~ tau everywhere, rounding differences flipped pixels across the
    kink, and a DDP run no longer matched the single-process run). A hard ``{0, 1}`` mask gives the same box at
    every power. ``HierarchicalGenerator(box_power=4)`` is the model's default; ``power=1`` is the plain soft
    moments (the behaviour before the option existed).

    The centre is the mask's centroid (first moments); the width/height are ``scale`` times the standard
    deviation along each axis (second central moments), clamped to ``[2 * min_size, 2]`` (``min_size`` is a
    fraction of the full extent 2; the clamp has zero gradient where it binds, the centre keeps its gradient).
    For reference, a uniform bar of width ``a`` has std ``a / sqrt(12)``, so ``scale = 3.46`` spans it exactly
    and the default 2.5 spans its central 72 %; a Gaussian blob is covered to +-1.25 std.

    A region whose mass is below ``eps`` (as a fraction of the image area, i.e. ``masks.mean((-2, -1))``)
    gets its default box instead; the moments are computed with a clamped mass so nothing is NaN (values or
    gradients).

    Args:
        masks: float ``[B, R, H, W]`` in ``[0, 1]`` (e.g. :func:`segexpr.ops.regions.soft_regions`).
        scale: box side per standard deviation.
        min_size: minimum side as a fraction of the image extent (``0.15`` -> ``0.3`` in normalised units).
        eps: mass fraction under which a mask counts as empty.
        default_boxes: ``[R, 4]`` or ``[B, R, 4]`` fallback boxes; ``None`` -> the whole image ``(0, 0, 2, 2)``.
        power: exponent ``>= 1`` applied to the masks before the moments; the empty-mask test uses the sharpened
            mass.

    Returns:
        float ``[B, R, 4]`` boxes ``(cx, cy, w, h)`` in normalised coordinates (float32 for half-precision
        masks, else the masks' dtype).
    """
    if masks.dim() != 4:
        raise ValueError(f"boxes_from_masks expects masks [B, R, H, W], got shape {tuple(masks.shape)}")
    if scale <= 0 or not 0 < min_size <= 1:
        raise ValueError(f"boxes_from_masks needs scale > 0 and 0 < min_size <= 1, got {scale}, {min_size}")
    if power < 1:
        raise ValueError(f"boxes_from_masks needs power >= 1, got {power}")
    batch, regions, height, width = masks.shape
    # Moments in (at least) float32: half-precision sums over a whole image lose too much precision, and the
    # boxes stay float32 so the crop geometry is not quantised under bf16 autocast.
    m = masks.float() if masks.dtype in (torch.float16, torch.bfloat16) else masks
    if power != 1:
        m = m.clamp_min(0) ** power
    xs = _pixel_centres(width, m.device, m.dtype)
    ys = _pixel_centres(height, m.device, m.dtype)
    mass_x = m.sum(dim=2)  # [B, R, W]: marginal along x
    mass_y = m.sum(dim=3)  # [B, R, H]
    mass = mass_x.sum(dim=-1)
    safe_mass = mass.clamp_min(eps * height * width)
    cx = (mass_x * xs).sum(-1) / safe_mass
    cy = (mass_y * ys).sum(-1) / safe_mass
    var_x = (mass_x * (xs - cx[..., None]) ** 2).sum(-1) / safe_mass
    var_y = (mass_y * (ys - cy[..., None]) ** 2).sum(-1) / safe_mass
    # + eps inside the sqrt: finite gradient for a single-pixel (zero-variance) mask.
    w = (scale * torch.sqrt(var_x + eps)).clamp(2 * min_size, 2.0)
    h = (scale * torch.sqrt(var_y + eps)).clamp(2 * min_size, 2.0)
    boxes = torch.stack([cx, cy, w, h], dim=-1)

    if default_boxes is None:
        default = torch.tensor(FULL_IMAGE_BOX, device=m.device).expand(batch, regions, 4)
    else:
        default = default_boxes.to(device=m.device, dtype=m.dtype)
        if default.shape not in ((regions, 4), (batch, regions, 4)):
            raise ValueError(f"default_boxes must be [{regions}, 4] or [{batch}, {regions}, 4], "
                             f"got shape {tuple(default.shape)}")
        default = default.expand(batch, regions, 4)
    empty = (mass < eps * height * width)[..., None]
    return torch.where(empty, default, boxes)


def boxes_from_landmarks(
    landmarks: torch.Tensor,
    image_size: tuple[int, int],
    regions: Sequence[str] = REGION_NAMES,
    margin: float = 0.25,
    min_size: float = 0.15,
    region_landmarks: Mapping[str, Sequence[int]] = REGION_LANDMARKS,
) -> torch.Tensor:
    """Keypoint boxes (the baseline the segmentation-conditioned model replaces).

    Each region's box is the bounding box of its iBUG landmarks (:data:`REGION_LANDMARKS`), grown by
    ``margin`` times its extent on every side, with sides clamped to ``[2 * min_size, 2]``.

    Args:
        landmarks: float ``[B, 68, 2]`` ``(x, y)`` in continuous pixel coordinates (pixel ``(i, j)`` centred
            at ``(j + 0.5, i + 0.5)``), iBUG 68 order.
        image_size: ``(H, W)`` of the image the landmarks refer to.
        regions: region names, keys of ``region_landmarks``.
        margin: growth per side as a fraction of the landmark extent.
        min_size: minimum side as a fraction of the image extent.
        region_landmarks: region -> landmark indices.

    Returns:
        float ``[B, R, 4]`` boxes ``(cx, cy, w, h)`` in normalised coordinates.
    """
    if landmarks.dim() != 3 or landmarks.shape[-1] != 2 or landmarks.shape[1] != 68:
        raise ValueError(f"boxes_from_landmarks expects landmarks [B, 68, 2], got shape {tuple(landmarks.shape)}")
    unknown = [r for r in regions if r not in region_landmarks]
    if unknown:
        raise ValueError(f"no landmarks defined for regions {unknown}; known: {sorted(region_landmarks)}")
    height, width = _size_pair(tuple(image_size), "image_size")
    if margin < 0 or not 0 < min_size <= 1:
        raise ValueError(f"boxes_from_landmarks needs margin >= 0 and 0 < min_size <= 1, got {margin}, {min_size}")
    scale = torch.tensor([2.0 / width, 2.0 / height], device=landmarks.device, dtype=landmarks.dtype)
    points = landmarks * scale - 1  # continuous pixel -> normalised coordinates
    boxes = []
    for region in regions:
        idx = torch.as_tensor(list(region_landmarks[region]), device=landmarks.device)
        pts = points.index_select(1, idx)
        low, high = pts.min(dim=1).values, pts.max(dim=1).values  # [B, 2]
        centre = (low + high) / 2
        size = ((high - low) * (1 + 2 * margin)).clamp(2 * min_size, 2.0)
        boxes.append(torch.cat([centre, size], dim=-1))
    return torch.stack(boxes, dim=1)


def square_boxes(boxes: torch.Tensor, image_size: int | Sequence[int]) -> torch.Tensor:
    """Grow each box's shorter side (in pixels) to its longer one, keeping the centre: a square crop of it is then
    not stretched (a 3.6:1 brow band resampled into a square crop is 3.6x magnified vertically only).

    Args:
        boxes: float ``[..., 4]`` ``(cx, cy, w, h)`` in normalised coordinates.
        image_size: ``(H, W)`` (or one int for a square image) the coordinates refer to.

    Returns:
        boxes of the same shape; sides clamped to ``2`` (the image extent), so a box wider than the image's
        height stays wider than tall. Differentiable (the gradient goes to the longer side).
    """
    if boxes.shape[-1] != 4:
        raise ValueError(f"square_boxes expects boxes [..., 4], got shape {tuple(boxes.shape)}")
    height, width = _size_pair(image_size, "image_size")
    cx, cy, w, h = boxes.unbind(-1)
    side = torch.maximum(w * width, h * height)  # twice the side in pixels
    return torch.stack([cx, cy, (side / width).clamp(max=2.0), (side / height).clamp(max=2.0)], dim=-1)


def _crop_thetas(boxes: torch.Tensor) -> torch.Tensor:
    """Affine maps from crop grid ``[-1, 1]`` to image coordinates: ``x = cx + w / 2 * u``. ``[B*R, 2, 3]``."""
    cx, cy, w, h = boxes.reshape(-1, 4).unbind(-1)
    zero = torch.zeros_like(cx)
    return torch.stack([torch.stack([w / 2, zero, cx], -1), torch.stack([zero, h / 2, cy], -1)], dim=1)


def _paste_thetas(boxes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_crop_thetas`: image coordinates -> crop grid, ``u = (x - cx) * 2 / w``."""
    cx, cy, w, h = boxes.reshape(-1, 4).unbind(-1)
    zero = torch.zeros_like(cx)
    return torch.stack([torch.stack([2 / w, zero, -2 * cx / w], -1),
                        torch.stack([zero, 2 / h, -2 * cy / h], -1)], dim=1)


def crop(
    images: torch.Tensor,
    boxes: torch.Tensor,
    size: int | tuple[int, int],
    padding_mode: str = "border",
) -> torch.Tensor:
    """Differentiable crops: resample each box of each image to ``size`` (bilinear, ``align_corners=False``).

    Args:
        images: float ``[B, C, H, W]``.
        boxes: ``[B, R, 4]`` ``(cx, cy, w, h)`` normalised.
        size: crop size ``h`` (square) or ``(h, w)``.
        padding_mode: ``grid_sample`` padding for boxes that leave the image (``"border"`` avoids feeding the
            local networks black bars).

    Returns:
        float ``[B, R, C, h, w]``. Differentiable w.r.t. ``images`` and ``boxes``.
    """
    if images.dim() != 4:
        raise ValueError(f"crop expects images [B, C, H, W], got shape {tuple(images.shape)}")
    _check_boxes(boxes, "crop")
    if boxes.shape[0] != images.shape[0]:
        raise ValueError(f"crop: images have batch {images.shape[0]} but boxes have batch {boxes.shape[0]}")
    crop_h, crop_w = _size_pair(size, "crop size")
    batch, regions = boxes.shape[:2]
    channels = images.shape[1]
    if regions == 0:
        return images.new_zeros(batch, 0, channels, crop_h, crop_w)
    theta = _crop_thetas(boxes).to(images.dtype)
    grid = F.affine_grid(theta, [batch * regions, channels, crop_h, crop_w], align_corners=False)
    # All R crops of an image in one sampling grid [B, R * h, w, 2] over the image itself: no copy of the full
    # image per region (an expanded [B * R, C, H, W] source would be materialised by the reshape).
    grid = grid.reshape(batch, regions * crop_h, crop_w, 2)
    crops = F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return crops.reshape(batch, channels, regions, crop_h, crop_w).transpose(1, 2)


def paste_premultiplied(
    crops: torch.Tensor, boxes: torch.Tensor, out_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste crops back into image frames with one ``grid_sample`` call (differentiable).

    The crops and a channel of ones are resampled together with zero padding, so the result is the crop's
    content already multiplied by its validity (bilinear weights that fall inside the crop). Callers that blend
    ``validity * pasted + (1 - validity) * background`` use it as is, without a division.

    Args:
        crops: float ``[B, R, C, h, w]``.
        boxes: ``[B, R, 4]`` the boxes the crops came from.
        out_size: ``(H, W)`` of the image frame.

    Returns:
        ``(validity * pasted [B, R, C, H, W], validity [B, R, 1, H, W])``, ``pasted`` as in :func:`paste`.
    """
    if crops.dim() != 5:
        raise ValueError(f"paste expects crops [B, R, C, h, w], got shape {tuple(crops.shape)}")
    _check_boxes(boxes, "paste")
    if crops.shape[:2] != boxes.shape[:2]:
        raise ValueError(f"paste: crops {tuple(crops.shape[:2])} and boxes {tuple(boxes.shape[:2])} disagree on [B, R]")
    height, width = _size_pair(tuple(out_size), "out_size")
    batch, regions, channels = crops.shape[:3]
    if regions == 0:
        return crops.new_zeros(batch, 0, channels, height, width), crops.new_zeros(batch, 0, 1, height, width)
    flat = crops.reshape(batch * regions, channels, *crops.shape[-2:])
    flat = torch.cat([flat, torch.ones_like(flat[:, :1])], dim=1)  # content + validity in one resampling
    theta = _paste_thetas(boxes).to(crops.dtype)
    grid = F.affine_grid(theta, [batch * regions, channels + 1, height, width], align_corners=False)
    sampled = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    sampled = sampled.reshape(batch, regions, channels + 1, height, width)
    return sampled[:, :, :channels], sampled[:, :, channels:]


def paste(
    crops: torch.Tensor, boxes: torch.Tensor, out_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste crops back into image frames with the inverse affine map (differentiable, one ``grid_sample``).

    Args:
        crops: float ``[B, R, C, h, w]``.
        boxes: ``[B, R, 4]`` the boxes the crops came from.
        out_size: ``(H, W)`` of the image frame.

    Returns:
        ``(pasted [B, R, C, H, W], validity [B, R, 1, H, W])``. ``validity`` in ``[0, 1]`` is 1 inside the box,
        ramps to 0 over one crop pixel around the box edge (0.5 on the edge) and is 0 outside; ``pasted`` is
        the crop's content where ``validity > 0`` (edge pixels extended, not darkened: the zero-padded
        resampling divided by its validity equals border padding there) and 0 elsewhere.
    """
    weighted, validity = paste_premultiplied(crops, boxes, out_size)
    inside = validity > 0
    # The double where keeps gradients finite where validity is 0.
    pasted = torch.where(inside, weighted / torch.where(inside, validity, torch.ones_like(validity)),
                         torch.zeros_like(weighted))
    return pasted, validity


def box_masks(boxes: torch.Tensor, out_size: tuple[int, int], feather: float = 0.1) -> torch.Tensor:
    """Soft rectangles: 1 deep inside each box, ramping linearly to 0 at the box edge, 0 outside.

    The ramp spans ``feather`` times the half-side *inside* the box, so the mask never reaches beyond the
    region a pasted crop covers. Used as fusion masks for ``region_source="landmarks"``.

    Args:
        boxes: ``[B, R, 4]`` ``(cx, cy, w, h)`` normalised.
        out_size: ``(H, W)``.
        feather: ramp width as a fraction of the half-side, in ``[0, 1]`` (0: hard box).

    Returns:
        float ``[B, R, 1, H, W]`` in ``[0, 1]``, differentiable w.r.t. ``boxes`` (where the ramp is non-flat).
    """
    _check_boxes(boxes, "box_masks")
    if not 0 <= feather <= 1:
        raise ValueError(f"box_masks: feather must be in [0, 1], got {feather}")
    height, width = _size_pair(tuple(out_size), "out_size")
    xs = _pixel_centres(width, boxes.device, boxes.dtype)
    ys = _pixel_centres(height, boxes.device, boxes.dtype)
    cx, cy, w, h = (t[..., None] for t in boxes.unbind(-1))  # [B, R, 1]

    def ramp(coords: torch.Tensor, centre: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
        inside = half - (coords - centre).abs()  # distance to the edge, positive inside
        if feather == 0:
            return (inside > 0).to(boxes.dtype)
        return (inside / (feather * half).clamp_min(1e-6)).clamp(0, 1)

    mask_x = ramp(xs, cx, w / 2)  # [B, R, W]
    mask_y = ramp(ys, cy, h / 2)  # [B, R, H]
    return (mask_y[..., :, None] * mask_x[..., None, :]).unsqueeze(2)


def feather_masks(masks: torch.Tensor, dilate: int = 3, blur: int = 3) -> torch.Tensor:
    """Grow and soften region masks so local edits blend in without seams (differentiable).

    Dilation is a ``(2 * dilate + 1)`` max pool (a grey-level dilation; gradient flows to each window's max);
    the blur is a ``(2 * blur + 1)`` box filter over replicate-padded masks (so image borders do not darken).

    Args:
        masks: float ``[B, R, H, W]`` in ``[0, 1]``.
        dilate: dilation radius in pixels (0: none).
        blur: blur radius in pixels (0: none).

    Returns:
        float ``[B, R, H, W]`` in ``[0, 1]``.
    """
    if masks.dim() != 4:
        raise ValueError(f"feather_masks expects masks [B, R, H, W], got shape {tuple(masks.shape)}")
    if dilate < 0 or blur < 0:
        raise ValueError(f"feather_masks: dilate and blur must be >= 0, got {dilate}, {blur}")
    out = masks
    # Both filters are separable: a row pass then a column pass gives the square window's result at 2k instead
    # of k * k reads per pixel (a quarter less time at the main job's 7-px windows, forward and backward).
    if dilate > 0:
        k = 2 * dilate + 1
        out = F.max_pool2d(out, (k, 1), stride=1, padding=(dilate, 0))
        out = F.max_pool2d(out, (1, k), stride=1, padding=(0, dilate))
    if blur > 0:
        k = 2 * blur + 1
        out = F.pad(out, (blur, blur, blur, blur), mode="replicate")
        out = F.avg_pool2d(F.avg_pool2d(out, (k, 1), stride=1), (1, k), stride=1)
    return out.clamp(0, 1)


# ------------------------------------------------------------------ region masks from parsing
def _check_groups(groups: Mapping[str, Sequence[int]], num_classes: int) -> None:
    for name, classes in groups.items():
        bad = [c for c in classes if not 0 <= int(c) < num_classes]
        if not classes or bad:
            raise ValueError(f"region group {name!r} has invalid classes {list(classes)} for {num_classes} classes")


def soft_regions(
    logits: torch.Tensor,
    groups: Mapping[str, Sequence[int]] = REGION_GROUPS,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Turn parsing logits into soft, differentiable region masks.

    Args:
        logits: float ``[B, C, H, W]`` segmenter output (unnormalised), classes in order A.
        groups: region name -> class indices summed into that region (default: brows, eyes, nose, mouth).
        temperature: softmax temperature; lower is sharper.

    Returns:
        float ``[B, R, H, W]`` in ``[0, 1]``, one channel per group in ``groups`` order. The sum over
        regions never exceeds 1 (the groups are disjoint subsets of one softmax). Gradients flow to
        ``logits``.
    """
    if logits.dim() != 4:
        raise ValueError(f"soft_regions expects logits [B, C, H, W], got shape {tuple(logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    _check_groups(groups, logits.shape[1])
    probs = F.softmax(logits.float() / temperature, dim=1)
    return torch.stack([probs[:, list(c)].sum(1) for c in groups.values()], dim=1).to(logits.dtype)


def hard_regions(mask: torch.Tensor, groups: Mapping[str, Sequence[int]] = REGION_GROUPS) -> torch.Tensor:
    """Binary region masks from a labelled class map.

    Args:
        mask: int64 ``[B, H, W]`` (or ``[H, W]``) class map in order A.
        groups: as in :func:`soft_regions`.

    Returns:
        float ``[B, R, H, W]`` (or ``[R, H, W]``) with values in ``{0, 1}``.
    """
    if mask.dtype.is_floating_point:
        raise ValueError(f"hard_regions expects an integer class map, got dtype {mask.dtype}")
    _check_groups(groups, NUM_CLASSES)
    channel_dim = 0 if mask.dim() == 2 else 1
    return torch.stack([torch.isin(mask, torch.tensor(list(c), device=mask.device)) for c in groups.values()],
                       dim=channel_dim).float()


def region_inputs(source: str, images: torch.Tensor, *, logits: torch.Tensor | None = None,
                  landmarks: torch.Tensor | None = None, groups: Mapping[str, Sequence[int]] = REGION_GROUPS
                  ) -> dict[str, torch.Tensor | None]:
    """The generator's ``region_masks``/``landmarks`` keyword arguments for ``region_source=source``.

    ``"segmenter"``: ``soft_regions(logits, groups)`` in the images' dtype (``logits`` required);
    ``"landmarks"``: ``landmarks`` float ``[B, 68, 2]`` pixel coordinates (required); ``"none"``: neither.
    """
    if source == "segmenter":
        if logits is None:
            raise ValueError("region_source='segmenter' needs parsing logits")
        return {"region_masks": soft_regions(logits, groups).to(images.dtype), "landmarks": None}
    if source == "landmarks":
        if landmarks is None:
            raise KeyError("region_source='landmarks' needs 'landmarks' (float [B, 68, 2] pixel coordinates)")
        return {"region_masks": None, "landmarks": landmarks.to(images.dtype)}
    return {"region_masks": None, "landmarks": None}
