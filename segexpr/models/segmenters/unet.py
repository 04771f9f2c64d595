"""UNet face parser (Ronneberger et al. 2015) that accepts any input size.

The input is padded (replicate mode) to the next multiple of ``2 ** depth`` and the logits are cropped
back, so sizes such as 37 x 53 work and the output always matches the input.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from segexpr.models.segmenters.base import Segmenter

__all__ = ["UNet"]


#: Accepted values of ``UNet(norm=...)``.
NORMS: tuple[str, ...] = ("batch", "group", "instance")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    return nn.InstanceNorm2d(channels, affine=True)


class DoubleConv(nn.Sequential):
    """``(Conv3x3 -> Norm -> ReLU) x 2`` (BatchNorm by default)."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch") -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), _norm(norm, out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), _norm(norm, out_ch), nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample x2 (bilinear + 1x1 conv, or transposed conv), concatenate the skip, ``DoubleConv``."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, bilinear: bool, norm: str = "batch") -> None:
        super().__init__()
        if bilinear:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(in_ch, out_ch, 1, bias=False))
        else:
            self.up = nn.ConvTranspose2d(in_ch, out_ch, 2, stride=2)
        self.conv = DoubleConv(out_ch + skip_ch, out_ch, norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(Segmenter):
    """UNet with configurable depth and width.

    Args:
        num_classes: output classes (19 = CelebAMask-HQ order A).
        depth: number of 2x downsamplings (>= 1). Inputs are padded internally to a multiple of
            ``2 ** depth`` and cropped back.
        base_channels: width of the first level; level ``i`` has ``base_channels * 2 ** i`` channels,
            capped at ``max_channels``.
        max_channels: channel cap for deep levels.
        bilinear: bilinear upsampling + 1x1 conv (default) instead of transposed convolutions.
        in_channels: input image channels.
        norm: ``"batch"`` (default), ``"group"`` (GroupNorm, ``gcd(8, C)`` groups) or ``"instance"``. The last two
            are batch-size independent: per-sample results do not depend on the rest of the batch, which makes a
            DDP run equal a single-process run without ``sync_batchnorm`` (SyncBatchNorm needs GPUs).

    Shapes:
        input float ``[B, in_channels, H, W]`` in ``[-1, 1]``, any ``H, W >= 1``; output logits float
        ``[B, num_classes, H, W]``. UNet has no auxiliary heads: ``return_aux=True`` gives ``aux == ()``.
    """

    def __init__(
        self,
        num_classes: int = 19,
        depth: int = 4,
        base_channels: int = 32,
        max_channels: int = 512,
        bilinear: bool = True,
        in_channels: int = 3,
        norm: str = "batch",
    ) -> None:
        super().__init__(num_classes, in_channels)
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
        for name, value, low in (("depth", depth, 1), ("base_channels", base_channels, 1),
                                 ("max_channels", max_channels, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if depth > 8:
            raise ValueError(f"depth must be <= 8 (inputs are padded to a multiple of 2**depth), got {depth}")
        self.depth = depth
        widths = [min(base_channels * 2 ** i, max_channels) for i in range(depth + 1)]
        self.stem = DoubleConv(in_channels, widths[0], norm)
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1], norm)) for i in range(depth))
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i], widths[i], bilinear, norm)
                                for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def _forward(self, x: torch.Tensor, return_aux: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        h, w = x.shape[-2:]
        m = 2 ** self.depth
        ph, pw = (-h) % m, (-w) % m
        top, left = ph // 2, pw // 2
        if ph or pw:
            x = F.pad(x, (left, pw - left, top, ph - top), mode="replicate")
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.up:
            y = up(y, skips.pop())
        logits = self.head(y)[..., top:top + h, left:left + w]
        return logits, ()
