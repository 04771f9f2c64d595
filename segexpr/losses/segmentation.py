"""Segmentation losses: OHEM cross-entropy (face-parsing.PyTorch style) and soft Dice.

All functions take logits float ``[B, C, H, W]`` (unnormalised) and targets int64 ``[B, H, W]`` with values
in ``[0, C)`` or ``ignore_index``, and return a scalar loss.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from segexpr.ops.checks import check_on_device

__all__ = ["ohem_cross_entropy", "ohem_mask", "dice_loss"]


def _check(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, fn: str) -> None:
    if logits.dim() != 4:
        raise ValueError(f"{fn}: logits must be [B, C, H, W], got shape {tuple(logits.shape)}")
    if target.dim() != 3:
        raise ValueError(f"{fn}: target must be an int64 class map [B, H, W], got shape {tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise TypeError(f"{fn}: target must be an integer class map, got dtype {target.dtype}")
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"{fn}: logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree in "
                         f"batch or spatial size")
    labelled = target != ignore_index
    check_on_device((((target >= 0) & (target < logits.shape[1])) | ~labelled).all(),
                    f"{fn}: target values must be in [0, {logits.shape[1] - 1}] or ignore_index={ignore_index}",
                    lambda: f", got range [{int(target[labelled].min())}, {int(target[labelled].max())}]")


def _pixel_ce(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
              weight: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target.long(), weight=weight, ignore_index=ignore_index,
                           reduction="none")


@torch.no_grad()
def ohem_mask(
    logits: torch.Tensor,
    target: torch.Tensor,
    thresh: float = 0.7,
    min_kept: int | None = None,
    ignore_index: int = 255,
) -> torch.Tensor:
    """The pixels online hard example mining keeps, as a bool ``[B, H, W]`` mask.

    A labelled pixel is kept when the softmax probability of its true class is below ``thresh``
    (cross-entropy above ``-log(thresh)``). If fewer than ``min_kept`` pixels qualify, the ``min_kept``
    pixels with the highest cross-entropy are kept instead (ties broken by pixel order). Pixels equal to
    ``ignore_index`` are never kept.

    Args:
        logits: float ``[B, C, H, W]``.
        target: int64 ``[B, H, W]``.
        thresh: probability threshold in ``(0, 1]`` (face-parsing: 0.7).
        min_kept: minimum number of kept pixels; ``None`` means 1/16 of the labelled pixels
            (face-parsing's ``n_min = B * H * W // 16``). Clipped to the number of labelled pixels.
        ignore_index: label value excluded from the loss.
    """
    _check(logits, target, ignore_index, "ohem_mask")
    if not 0.0 < float(thresh) <= 1.0:
        raise ValueError(f"ohem thresh must be a probability in (0, 1], got {thresh}")
    if min_kept is not None and (isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept < 0):
        raise ValueError(f"min_kept must be a non-negative integer or None, got {min_kept!r}")
    valid = (target != ignore_index).flatten()
    safe_target = torch.where(target == ignore_index, torch.zeros_like(target), target).long()
    ce = _pixel_ce(logits, safe_target, -100, None).flatten()
    ce = torch.where(valid, ce, torch.full_like(ce, -math.inf))
    # Everything stays on the device (no host synchronisation on a GPU): k, the count above the threshold and
    # the choice between the two selections are tensors.
    n_valid = valid.sum()
    k = n_valid // 16 if min_kept is None else n_valid.clamp(max=min_kept)
    hard = valid & (ce > -math.log(thresh))
    # rank of every pixel by loss; stable sort: equal losses are taken in pixel order, so the selection is
    # deterministic
    order = torch.argsort(ce, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    keep = torch.where(hard.sum() < k, rank < k, hard)
    return keep.view_as(target)


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    thresh: float = 0.7,
    min_kept: int | None = None,
    ignore_index: int = 255,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy averaged over the hard pixels selected by :func:`ohem_mask`.

    Args:
        logits: float ``[B, C, H, W]`` unnormalised scores.
        target: int64 ``[B, H, W]`` class map in ``[0, C)`` or ``ignore_index``.
        thresh: keep pixels whose true-class probability is below this (face-parsing: 0.7).
        min_kept: at least this many hardest pixels are kept (default: 1/16 of the labelled pixels).
        ignore_index: label excluded from the loss.
        weight: optional per-class weights float ``[C]``.

    Returns:
        Scalar float tensor; 0 (with gradient) when no pixel is labelled.
    """
    keep = ohem_mask(logits, target, thresh, min_kept, ignore_index)
    ce = _pixel_ce(logits, target, ignore_index, weight)
    # mean over the kept pixels without a data-dependent shape; 0 (with gradient) when none is kept
    kept = keep.to(ce.dtype)
    return (ce * kept).sum() / kept.sum().clamp_min(1.0)


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    smooth: float = 1.0,
    eps: float = 1e-7,
) -> torch.Tensor:
    """Multiclass soft Dice loss, ``1 - mean_c dice_c`` over the classes present in ``target``.

    ``dice_c = (2 * sum(p_c * t_c) + smooth) / (sum(p_c) + sum(t_c) + smooth)`` with ``p = softmax(logits)``,
    ``t`` the one-hot target, sums over the batch and all labelled pixels (``ignore_index`` pixels are
    excluded). Classes absent from ``target`` are left out of the mean (as in smp's ``DiceLoss``), so a
    perfect, confident prediction gives a loss near 0.

    Args:
        logits: float ``[B, C, H, W]``.
        target: int64 ``[B, H, W]``.
        ignore_index: label excluded from the loss.
        smooth: additive smoothing in numerator and denominator (>= 0).
        eps: lower bound of the denominator.

    Returns:
        Scalar float tensor in ``[0, 1]``; 0 (with gradient) when no pixel is labelled.
    """
    _check(logits, target, ignore_index, "dice_loss")
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    num_classes = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).float()
    probs = F.softmax(logits.float(), dim=1) * valid
    safe_target = torch.where(target == ignore_index, torch.zeros_like(target), target).long()
    onehot = F.one_hot(safe_target, num_classes).movedim(-1, 1).float() * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    cardinality = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * intersection + smooth) / (cardinality + smooth).clamp_min(eps)
    present = onehot.sum(dims) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    return 1.0 - dice[present].mean()
