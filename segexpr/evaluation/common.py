"""Small helpers shared by the SynthFACS benchmark and the real-data evaluation (internal, not re-exported).

Edit/transfer function types, batching and resizing, and FID/KID with one shared feature extractor.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from segexpr.metrics import InceptionWeightsUnavailable, build_feature_extractor

EditFn = Callable[[Tensor, Tensor, Tensor], Tensor]          # (images, target labels [B], landmarks) -> edits
TransferFn = Callable[[Tensor, Tensor, Tensor], Tensor]      # (images, references, landmarks) -> transfers


def chunks(count: int, size: int) -> Iterable[slice]:
    """Slices of ``range(count)`` of at most ``size`` items, in order."""
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


def resize(images: Tensor, size: int) -> Tensor:
    """``images`` at ``size x size`` (bilinear, antialiased); unchanged when already that size."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def feature_extractor(choice: str, judge: nn.Module | None, size: int, notes: list[str]):
    """Resolve ``--fid-features``; returns ``None`` (FID/KID skipped, with a note) when nothing is usable."""
    if choice == "none":
        notes.append("FID/KID skipped (--fid-features none)")
        return None
    try:
        return build_feature_extractor(choice, judge, probe_size=size)
    except (InceptionWeightsUnavailable, ValueError) as err:
        notes.append(f"FID/KID skipped: {err}")
        return None


def distribution_metrics(extractor, real: Sequence[Tensor], fake: Sequence[Tensor], subset_size: int | None
                         ) -> dict[str, float]:
    """FID and KID of ``fake`` against ``real`` (lists of image batches) with one shared feature extractor."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    count = min(sum(x.shape[0] for x in real), sum(x.shape[0] for x in fake))
    subset = min(subset_size or 100, count)
    fid = FrechetInceptionDistance(feature=extractor, normalize=False)
    kid = KernelInceptionDistance(feature=extractor, subsets=20, subset_size=subset, normalize=False)
    device = real[0].device
    fid, kid = fid.to(device), kid.to(device)
    for batch in real:
        fid.update(batch, real=True)
        kid.update(batch, real=True)
    for batch in fake:
        fid.update(batch, real=False)
        kid.update(batch, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def small_set_note(extractor, count: int) -> list[str]:
    """A warning note when ``count`` images per set are too few for FID with this extractor's dimension."""
    dim = int(getattr(extractor, "num_features", 0))
    if dim and count < 2 * dim:
        return [f"FID from {count} images per set with {dim}-d features (< 2x the dimension): strongly biased and "
                "unstable; compare only at equal counts, or raise --count"]
    return []
