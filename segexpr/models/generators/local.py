"""The local generator: a GANimation-style generator for one region crop (geometry in ``segexpr.ops.regions``)."""
from __future__ import annotations

import torch
from torch import nn

from segexpr.models.generators.global_generator import GlobalGenerator


class LocalGenerator(nn.Module):
    """GANimation-style generator for one region crop: ``local = attention * crop + (1 - attention) * color``.

    Same architecture as :class:`GlobalGenerator` (encoder, code-modulated residual blocks, colour and
    attention heads), narrower and shallower by default.

    Args:
        base_channels: width after the first conv.
        n_down: stride-2 stages.
        n_res: code-modulated residual blocks.
        code_dim: expression code size.

    Shapes: ``crop`` float ``[N, 3, h, w]`` in ``[-1, 1]``, ``code`` ``[N, code_dim]`` ->
    ``(color [N, 3, h, w] in [-1, 1], attention [N, 1, h, w] in [0, 1])``.
    """

    def __init__(self, base_channels: int = 32, n_down: int = 2, n_res: int = 3, code_dim: int = 64) -> None:
        super().__init__()
        self.net = GlobalGenerator(3, base_channels, n_down, n_res, code_dim)
        self.code_dim = code_dim

    def forward(self, crop: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.decode(self.net.encode(crop), code, tuple(crop.shape[-2:]))
