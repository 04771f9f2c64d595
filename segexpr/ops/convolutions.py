"""Convolutions rewritten for speed: the same function as the plain layers, computed another way.

``upsample_conv3x3`` is ``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)`` without the
upsampled tensor. Every output pixel of that composition reads a 2x2 neighbourhood of the *input*: after a
nearest upsample, a 3x3 window covers two input rows (and columns), whose taps add up by the output pixel's
parity. So the four parities are four 2x2 convolutions of the input, written here as one 3x3 convolution (zero
taps where a parity reads nothing) with ``4 * C_out`` output channels, then ``pixel_shuffle``. On a CPU this
avoids writing, reading and back-propagating through the 4x larger upsampled map, and gives the convolution wider
output blocks; what it saves in the main job's step is measured by ``examples/benchmarks/step_rewrites.py``. The
weights are combined at call time, so parameters and checkpoints are those of the plain layer.

``conv2d_channels_last`` is ``conv2d`` computed in channels-last memory on a CPU. oneDNN's direct convolution is
faster there for wide maps with few output channels, such as the generator's 7x7 heads (16 -> 4 channels at
64 px), even with the two layout copies; what it saves in the main job's step is measured by
``examples/benchmarks/step_rewrites.py``. Only for those layers: through a whole network the copies between layers
take back what the convolutions gain.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["conv2d_channels_last", "upsample_conv3x3"]


def _parity_taps(weight: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-tap kernel axis ``dim`` re-expressed on the input grid, for even and odd output pixels: after a nearest
    upsample an even output pixel reads input offsets (-1, 0) with taps (w0, w1 + w2), an odd one offsets (0, +1)
    with (w0 + w1, w2); both as zero-padded 3-tap kernels over offsets (-1, 0, +1)."""
    w0, w1, w2 = weight.unbind(dim)
    zero = torch.zeros_like(w0)
    return torch.stack([w0, w1 + w2, zero], dim), torch.stack([zero, w0 + w1, w2], dim)


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(nearest_upsample_2x(x), weight, bias, stride=1, padding=1)`` computed on ``x``'s own grid.

    Args:
        x: ``[B, C_in, H, W]``.
        weight: ``[C_out, C_in, 3, 3]``; bias: ``[C_out]`` or ``None``.

    Returns:
        ``[B, C_out, 2H, 2W]``, equal to the plain composition within float rounding (gradients too).
    """
    if weight.dim() != 4 or tuple(weight.shape[-2:]) != (3, 3):
        raise ValueError(f"upsample_conv3x3 needs a 3x3 weight [C_out, C_in, 3, 3], got {tuple(weight.shape)}")
    if x.dim() != 4 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"upsample_conv3x3: input [B, {weight.shape[1]}, H, W] expected, got {tuple(x.shape)}")
    out_channels, in_channels = weight.shape[:2]
    # [C_out, 4, C_in, 3, 3], parity (a, b) = (row, column) at index 2a + b, pixel_shuffle's channel order.
    # Plain adds and stacks (not einsum), so the weight keeps its dtype and autocast treats the convolution
    # exactly as it treats the plain layer's.
    parity = torch.stack([kernel for rows in _parity_taps(weight, -2) for kernel in _parity_taps(rows, -1)], 1)
    parity_bias = None if bias is None else bias.repeat_interleave(4)
    y = F.conv2d(x, parity.reshape(out_channels * 4, in_channels, 3, 3), parity_bias, padding=1)
    return F.pixel_shuffle(y, 2)


def conv2d_channels_last(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         padding: int | tuple[int, int] = 0) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=padding)`` computed in channels-last memory on a CPU.

    Args:
        x: ``[B, C_in, H, W]``.
        weight: ``[C_out, C_in, k, k]``; bias: ``[C_out]`` or ``None``.

    Returns:
        ``[B, C_out, H', W']`` in the default (contiguous) layout, equal to ``conv2d`` within float rounding
        (gradients too). Elsewhere than on a CPU, and under ``vmap`` (whose batched weights make a grouped
        convolution that channels-last does not help), it is plain ``conv2d``.
    """
    if x.device.type != "cpu" or torch._C._functorch.is_batchedtensor(x) or \
            torch._C._functorch.is_batchedtensor(weight):
        return F.conv2d(x, weight, bias, padding=padding)
    y = F.conv2d(x.contiguous(memory_format=torch.channels_last),
                 weight.contiguous(memory_format=torch.channels_last), bias, padding=padding)
    return y.contiguous()
