"""Differentiable expression-region masks from parsing logits or labelled masks."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from segexpr.data.labels import NUM_CLASSES, REGION_GROUPS


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
