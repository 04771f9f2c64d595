"""The one conversion between segexpr's float images in ``[-1, 1]`` and uint8 pixels in ``[0, 255]``.

``uint8_to_images`` and ``images_to_uint8`` are inverses on uint8 input (``images_to_uint8(uint8_to_images(x)) == x``
for every uint8 ``x``). They work on any shape (channels first or last: the conversion is per value), so callers
permute as their layout needs. Here on the ops floor so that data/ (which never imports io/) can use them;
:mod:`segexpr.io.images` re-exports both.
"""
from __future__ import annotations

import torch

__all__ = ["images_to_uint8", "uint8_to_images"]


def uint8_to_images(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in ``[0, 255]`` (any shape; another dtype holding 0-255 values also works) -> float32 in
    ``[-1, 1]``, same shape: ``x / 127.5 - 1``."""
    return pixels.float() / 127.5 - 1.0


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in ``[-1, 1]`` (any shape) -> uint8 in ``[0, 255]``, clamped and rounded, same shape."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
