"""Pixel metrics of edits: agreement with ground truth, and change where nothing should change.

Every image here follows the segexpr batch contract: float ``[B, 3, H, W]`` in ``[-1, 1]``.

* :class:`GroundTruthMetrics` -- PSNR / SSIM / L1 of an edit against its ground truth. Only SynthFACS has a
  ground truth for an edit (``render(identity, target_aus)``); on real data use it for reconstructions.
* :class:`UnwantedChange` -- mean L1 between source and edit *outside* the pixels an expression may change.
  The "changeable" mask comes from SynthFACS' ``changeable_area`` (exact) or from a parsing mask through
  :func:`expression_area` (approximate).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanAbsoluteError, Metric, MetricCollection
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from segexpr.labels import REGION_GROUPS
from segexpr.ops.regions import hard_regions

__all__ = ["GroundTruthMetrics", "UnwantedChange", "expression_area", "check_images", "check_image_pair"]

#: Slack allowed beyond ``[-1, 1]`` for float round-off (e.g. ``tanh`` outputs after a dtype cast).
RANGE_TOLERANCE = 1e-3


def check_images(images: Tensor, name: str = "images", *, check_range: bool = True) -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``images`` is float ``[B, 3, H, W]`` in ``[-1, 1]``.

    The range check allows :data:`RANGE_TOLERANCE` of round-off and costs one device synchronisation.
    """
    if not isinstance(images, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be [B, 3, H, W] RGB images, got shape {tuple(images.shape)}")
    if not images.dtype.is_floating_point:
        raise ValueError(f"{name} must be a float tensor in [-1, 1], got dtype {images.dtype} "
                         "(convert uint8 images with x / 127.5 - 1)")
    if check_range and images.numel():
        lo, hi = float(images.min()), float(images.max())
        if lo < -1 - RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise ValueError(f"{name} must lie in [-1, 1] (segexpr's image range), got values in [{lo:.4g}, {hi:.4g}]"
                             + ("; images in [0, 1] or [0, 255] must be mapped with x * 2 - 1 or x / 127.5 - 1"
                                if lo >= -RANGE_TOLERANCE else ""))


def check_image_pair(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Validate two image batches (see :func:`check_images`) and require equal shapes."""
    check_images(a, name_a)
    check_images(b, name_b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


class GroundTruthMetrics(MetricCollection):
    """PSNR, SSIM and L1 of images against their ground truth, accumulated over batches.

    Thin wrapper over torchmetrics' own metrics, all with ``data_range=2.0`` (images in ``[-1, 1]``):

    * ``psnr`` -- :class:`~torchmetrics.image.PeakSignalNoiseRatio`, torchmetrics' default reduction: the PSNR
      of the mean squared error *pooled over every pixel of every image* (not a mean of per-image PSNRs).
      Higher is better. It is ``+inf`` exactly when every prediction equals its ground truth (MSE 0); that
      is intended, not an error -- filter it before averaging across runs.
    * ``ssim`` -- :class:`~torchmetrics.image.StructuralSimilarityIndexMeasure` (Gaussian 11x11 window, sigma 1.5),
      mean over images, in ``[-1, 1]``, 1 for identical images. Images must be at least 11 px on each side.
    * ``l1`` -- :class:`~torchmetrics.MeanAbsoluteError`, mean absolute difference per channel value, in
      ``[0, 2]`` for ``[-1, 1]`` images. Lower is better.

    ``update(preds, target)`` takes float ``[B, 3, H, W]`` in ``[-1, 1]`` of equal shape; ``compute()``
    returns ``{"psnr", "ssim", "l1"}`` (with ``prefix``/``postfix`` applied) as scalar tensors. Every member
    syncs under DDP through its own states (sums).
    """

    def __init__(self, prefix: str | None = None, postfix: str | None = None) -> None:
        super().__init__(
            {
                "psnr": PeakSignalNoiseRatio(data_range=2.0),
                "ssim": StructuralSimilarityIndexMeasure(data_range=2.0),
                "l1": MeanAbsoluteError(),
            },
            prefix=prefix,
            postfix=postfix,
            compute_groups=False,
        )

    def update(self, preds: Tensor, target: Tensor) -> None:  # type: ignore[override]
        """Accumulate a batch: ``preds`` (edits) and ``target`` (ground truth), float ``[B, 3, H, W]`` in [-1, 1]."""
        self._validate(preds, target)
        # torchmetrics flattens with .view(): strided inputs (slices, expand, permute) must be made contiguous.
        super().update(preds.float().contiguous(), target.float().contiguous())

    def forward(self, preds: Tensor, target: Tensor) -> dict[str, Any]:  # type: ignore[override]
        """Accumulate a batch and return the metrics of that batch alone."""
        self._validate(preds, target)
        return super().forward(preds.float().contiguous(), target.float().contiguous())

    @staticmethod
    def _validate(preds: Tensor, target: Tensor) -> None:
        check_image_pair(preds, target, "preds", "target")
        if min(preds.shape[-2:]) < 11:
            raise ValueError(f"SSIM's 11x11 window needs images of at least 11 px, got {tuple(preds.shape[-2:])}")


def expression_area(
    mask: Tensor,
    dilation: int = 4,
    groups: Mapping[str, Sequence[int]] = REGION_GROUPS,
) -> Tensor:
    """Pixels an expression edit may change, estimated from a parsing mask.

    The union of the expression regions (:func:`segexpr.ops.regions.hard_regions`: brows, eyes, nose,
    mouth by default), dilated by a square ``(2 * dilation + 1)`` window so that moving contours (a raised
    brow, an opened mouth) stay inside. It is an *approximation*: cheek raise (AU6), chin raise (AU17) and jaw
    drop (AU26) move skin outside every parsing region, so part of a correct edit can fall outside this area
    and count as unwanted change. On SynthFACS use the exact ``changeable_area`` instead.

    Args:
        mask: int64 ``[B, H, W]`` (or ``[H, W]``) class map in order A.
        dilation: dilation radius in pixels (>= 0); about 3 % of the image side is a reasonable choice.
        groups: region name -> order-A classes, as in :func:`hard_regions`.

    Returns:
        bool ``[B, H, W]`` (or ``[H, W]``), True where the expression may change the image.
    """
    if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 0:
        raise ValueError(f"dilation must be an int >= 0 (pixels), got {dilation!r}")
    if mask.dim() not in (2, 3):
        raise ValueError(f"expression_area expects a class map [B, H, W] or [H, W], got shape {tuple(mask.shape)}")
    squeeze = mask.dim() == 2
    batch = mask.unsqueeze(0) if squeeze else mask
    area = hard_regions(batch, groups).amax(dim=1, keepdim=True)  # [B, 1, H, W] in {0, 1}
    if dilation:
        area = F.max_pool2d(area, kernel_size=2 * dilation + 1, stride=1, padding=dilation)
    area = area[:, 0] > 0.5
    return area[0] if squeeze else area


class UnwantedChange(Metric):
    """Mean L1 between source and edit outside the pixels the expression may change.

    For every pixel where ``changeable`` is False the absolute difference is averaged over the 3 channels
    and over all such pixels of all images seen (pooled: an image contributes in proportion to its
    unchangeable area). Range ``[0, 2]`` for ``[-1, 1]`` images; 0 means the edit left identity, hair,
    background and lighting untouched. Lower is better. Global changes (colour shifts, blur of the whole
    face) that PSNR against a target might forgive are exactly what this catches.

    ``update(source, edited, changeable)``:

    * ``source``, ``edited``: float ``[B, 3, H, W]`` in ``[-1, 1]``, same shape;
    * ``changeable``: bool ``[B, H, W]`` -- True where the expression may change the image (SynthFACS'
      ``changeable_area``, or :func:`expression_area` of a parsing mask).

    ``compute()`` returns a scalar tensor; it raises if no unchangeable pixel was ever seen.
    States are sums (``dist_reduce_fx="sum"``), so the metric syncs exactly under DDP.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    abs_sum: Tensor
    count: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("abs_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, source: Tensor, edited: Tensor, changeable: Tensor) -> None:
        check_image_pair(source, edited, "source", "edited")
        if not isinstance(changeable, Tensor) or changeable.dtype != torch.bool:
            got = changeable.dtype if isinstance(changeable, Tensor) else type(changeable).__name__
            raise ValueError(f"changeable must be a bool tensor [B, H, W] (True where the expression may change), "
                             f"got {got}")
        expected = (source.shape[0], *source.shape[-2:])
        if tuple(changeable.shape) != expected:
            raise ValueError(f"changeable must be [B, H, W] = {expected} to match the images, "
                             f"got {tuple(changeable.shape)}")
        keep = (~changeable.to(source.device)).unsqueeze(1)  # [B, 1, H, W]
        diff = (edited.double() - source.double()).abs().mean(dim=1, keepdim=True)
        self.abs_sum += (diff * keep).sum()
        self.count += keep.sum()

    def compute(self) -> Tensor:
        if int(self.count) == 0:
            raise RuntimeError("UnwantedChange saw no unchangeable pixel: every pixel was marked changeable "
                               "(or update() was never called)")
        return (self.abs_sum / self.count).float()
