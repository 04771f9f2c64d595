"""Expression judges: torchvision classifiers that read expression and AUs, for *evaluating* edits.

A judge must not share the GAN critic's architecture (a PatchGAN conv stack, :class:`AUDiscriminator`): a
generator trained against the critic learns what that family responds to, and a judge of the same family
rewards it. So the judges here are torchvision image classifiers of other families, trained from scratch
(nothing is downloaded): ShuffleNetV2 (channel-shuffle units) and MobileNetV3 (inverted residuals with
squeeze-excitation); ResNet-18 is available too.

    judge = create_judge("shufflenet_v2_x0_5", image_size=64)
    logits, aus = judge(images)   # images [B, 3, S, S] in [-1, 1] -> [B, 8] logits, [B, 17] AUs in [0, 1]
    feats = judge.features(images)  # [B, judge.num_features], pooled penultimate features (FID/KID)
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torchvision import models as tv

from segexpr.data.labels import NUM_AUS, NUM_EXPRESSIONS

__all__ = ["JUDGE_FAMILIES", "ExpressionJudge", "create_judge", "list_judges"]

#: family name -> (torchvision builder, dotted name of its final Linear layer, which the judge's own head replaces)
JUDGE_FAMILIES: dict[str, tuple[Callable[..., nn.Module], str]] = {
    "shufflenet_v2_x0_5": (tv.shufflenet_v2_x0_5, "fc"),
    "mobilenet_v3_small": (tv.mobilenet_v3_small, "classifier.3"),
    "resnet18": (tv.resnet18, "fc"),
}


def list_judges() -> list[str]:
    """The judge families :func:`create_judge` builds."""
    return sorted(JUDGE_FAMILIES)


class ExpressionJudge(nn.Module):
    """A torchvision classifier body with one linear head for expression logits and AU intensities.

    Args:
        family: a key of :data:`JUDGE_FAMILIES`.
        image_size: the side it is trained and evaluated at (the metrics resize other sizes to it).
        num_expressions, num_aus: head sizes (8 AffectNet expressions, 17 AUs by default).

    ``forward(images [B, 3, S, S] in [-1, 1])`` returns ``(logits [B, E], aus [B, A] in [0, 1])``, the
    recogniser contract of :func:`segexpr.metrics.recognise`; ``head_logits`` returns the raw ``[B, E + A]``.
    """

    def __init__(self, family: str = "shufflenet_v2_x0_5", image_size: int = 64,
                 num_expressions: int = NUM_EXPRESSIONS, num_aus: int = NUM_AUS) -> None:
        super().__init__()
        if family not in JUDGE_FAMILIES:
            raise ValueError(f"unknown judge family {family!r}; expected one of {list_judges()}")
        if not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"image_size must be an integer >= 32 (the families downsample 32x), got {image_size!r}")
        builder, last = JUDGE_FAMILIES[family]
        body = builder(weights=None, num_classes=num_expressions + num_aus)
        parent_name, _, leaf = last.rpartition(".")
        parent = body.get_submodule(parent_name) if parent_name else body
        old: nn.Linear = getattr(parent, leaf)
        setattr(parent, leaf, nn.Identity())  # the body now ends in pooled features
        self.body = body
        self.head = nn.Linear(old.in_features, num_expressions + num_aus)
        self.family, self.image_size = family, int(image_size)
        self.num_expressions, self.num_aus = int(num_expressions), int(num_aus)
        self.num_features = int(old.in_features)

    def features(self, images: Tensor) -> Tensor:
        """Pooled penultimate features ``[B, num_features]``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.family} judge expects images [B, 3, H, W], got {tuple(images.shape)}")
        return self.body(images)

    def head_logits(self, images: Tensor) -> Tensor:
        """Raw head output ``[B, E + A]``: expression logits then AU logits."""
        return self.head(self.features(images))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head_logits(images)
        return out[:, :self.num_expressions], torch.sigmoid(out[:, self.num_expressions:])


def create_judge(family: str = "shufflenet_v2_x0_5", *, image_size: int = 64) -> ExpressionJudge:
    """An untrained :class:`ExpressionJudge` of ``family`` (see :data:`JUDGE_FAMILIES`) at ``image_size`` px."""
    return ExpressionJudge(family, image_size=image_size)
