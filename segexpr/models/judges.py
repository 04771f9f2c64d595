"""Expression judges: torchvision classifiers that read expression and AUs, for *evaluating* edits.

A judge must not share the GAN critic's architecture (a PatchGAN conv stack, :class:`AUDiscriminator`): a
generator trained against the critic learns what that family responds to, and a judge of the same family
rewards it. So the judges here are torchvision image classifiers of other families, trained from scratch
(nothing is downloaded): ResNet-18 (residual blocks; ``resnet18_3stage`` stops after ``layer3``, whose 4x4 maps
are the last useful ones at 64 px) and a small VGG with batch norm (plain 3x3 stacks with max pooling).

    judge = create_judge("resnet18_3stage", image_size=64, input_size=32)
    logits, aus = judge(images)   # images [B, 3, S, S] in [-1, 1] -> [B, 8] logits, [B, 17] AUs in [0, 1]
    feats = judge.features(images)  # [B, judge.num_features], pooled penultimate features (FID/KID)
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tv

from segexpr.labels import NUM_AUS, NUM_EXPRESSIONS

__all__ = ["JUDGE_FAMILIES", "ExpressionJudge", "create_judge", "list_judges"]

def _without_last_linear(builder: Callable[..., nn.Module], path: str) -> Callable[[], tuple[nn.Module, int]]:
    """A torchvision classifier whose final Linear (at dotted ``path``) is removed: ``(body, feature width)``."""
    def build() -> tuple[nn.Module, int]:
        body = builder(weights=None)
        parent_name, _, leaf = path.rpartition(".")
        parent = body.get_submodule(parent_name) if parent_name else body
        width = getattr(parent, leaf).in_features
        setattr(parent, leaf, nn.Identity())
        return body, int(width)
    return build


def _resnet18_three_stages() -> tuple[nn.Module, int]:
    """ResNet-18 through ``layer3``: at 64 px ``layer4`` would work on 2x2 maps and holds 75 % of the weights."""
    body = tv.resnet18(weights=None)
    body.layer4, body.fc = nn.Identity(), nn.Identity()
    return body, 256


def _vgg_bn_small() -> tuple[nn.Module, int]:
    """torchvision's VGG with batch norm, 6 convolutions of widths 32-256 (``make_layers``), globally pooled
    (256-d): VGG-11's layout at a width a 64-px face needs."""
    features = tv.vgg.make_layers([32, "M", 64, "M", 128, 128, "M", 256, 256, "M"], batch_norm=True)
    body = nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return body, 256


def _densenet_small() -> tuple[nn.Module, int]:
    """torchvision's DenseNet at CIFAR-like width: three dense blocks of 4, 8, 8 layers, growth 16 (264-d).
    Not in the standard judge: a third family that checks whether the judge's two families agree by chance."""
    body = tv.DenseNet(growth_rate=16, block_config=(4, 8, 8), num_init_features=32, bn_size=4)
    body.classifier = nn.Identity()
    return body, int(body.features.norm5.num_features)


#: family name -> builder of (body returning pooled features [B, D], D); the judge adds its own linear head.
#: Families that did not learn SynthFACS expressions from scratch in 600 steps at 64 px (ground-truth accuracy
#: 0.13-0.43: SqueezeNet 1.1, GoogLeNet, RegNetX-400MF, ShuffleNetV2-x0.5; 0.89 after 1500 steps) are left out.
JUDGE_FAMILIES: dict[str, Callable[[], tuple[nn.Module, int]]] = {
    "densenet_small": _densenet_small,
    "resnet18": _without_last_linear(tv.resnet18, "fc"),
    "resnet18_3stage": _resnet18_three_stages,
    "vgg_bn_small": _vgg_bn_small,
}


def list_judges() -> list[str]:
    """The judge families :func:`create_judge` builds."""
    return sorted(JUDGE_FAMILIES)


class ExpressionJudge(nn.Module):
    """A torchvision classifier body with one linear head for expression logits and AU intensities.

    Args:
        family: a key of :data:`JUDGE_FAMILIES`.
        image_size: the side of the images it takes (the metrics resize other sizes to it).
        input_size: the side its body sees: images are first downsampled to it (antialiased bilinear), so the
            judge reads the face's shape, not pixel-level texture. ``None``: ``image_size`` (no resizing). Why
            32 in the standard judge: at 64 px two families disagreed by 0.14-0.20 on the same edits, reading
            traces a few pixels wide differently; at 32 px they agree within 0.05
            (docs/results/standard_judge_reading.md).
        num_expressions, num_aus: head sizes (8 AffectNet expressions, 17 AUs by default).

    ``forward(images [B, 3, S, S] in [-1, 1])`` returns ``(logits [B, E], aus [B, A] in [0, 1])``, the
    recogniser contract of :func:`segexpr.metrics.recognise`; ``head_logits`` returns the raw ``[B, E + A]``.
    """

    def __init__(self, family: str = "resnet18_3stage", image_size: int = 64, input_size: int | None = None,
                 num_expressions: int = NUM_EXPRESSIONS, num_aus: int = NUM_AUS) -> None:
        super().__init__()
        if family not in JUDGE_FAMILIES:
            raise ValueError(f"unknown judge family {family!r}; expected one of {list_judges()}")
        if not isinstance(image_size, int) or image_size < 32:
            raise ValueError(f"image_size must be an integer >= 32 (the families downsample 32x), got {image_size!r}")
        if input_size is not None and (not isinstance(input_size, int) or not 32 <= input_size <= image_size):
            raise ValueError(f"input_size must be an integer in [32, image_size={image_size}] or None, "
                             f"got {input_size!r}")
        self.body, width = JUDGE_FAMILIES[family]()
        self.head = nn.Linear(width, num_expressions + num_aus)
        self.family, self.image_size = family, int(image_size)
        self.input_size = int(input_size) if input_size is not None else self.image_size
        self.num_expressions, self.num_aus = int(num_expressions), int(num_aus)
        self.num_features = width

    def features(self, images: Tensor) -> Tensor:
        """Pooled penultimate features ``[B, num_features]``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.family} judge expects images [B, 3, H, W], got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != (self.input_size, self.input_size):
            images = F.interpolate(images, size=(self.input_size, self.input_size), mode="bilinear",
                                   antialias=True, align_corners=False)
        return self.body(images)

    def head_logits(self, images: Tensor) -> Tensor:
        """Raw head output ``[B, E + A]``: expression logits then AU logits."""
        return self.head(self.features(images))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.head_logits(images)
        return out[:, :self.num_expressions], torch.sigmoid(out[:, self.num_expressions:])


def create_judge(family: str = "resnet18_3stage", *, image_size: int = 64,
                 input_size: int | None = None) -> ExpressionJudge:
    """An untrained :class:`ExpressionJudge` of ``family`` (see :data:`JUDGE_FAMILIES`) taking ``image_size`` px
    images and reading them at ``input_size`` px (``None``: ``image_size``)."""
    return ExpressionJudge(family, image_size=image_size, input_size=input_size)
