"""Shared base class of the segexpr face-parsing networks.

Every segmenter maps an image batch to per-pixel class logits at the input resolution::

    logits = segmenter(images)                 # [B, 3, H, W] in [-1, 1]  ->  [B, C, H, W]
    out = segmenter(images, return_aux=True)   # SegmenterOutput(logits, aux=(aux_1, ...))

Classes follow :data:`segexpr.labels.CELEBAMASK_HQ_CLASSES` (order A) when ``num_classes == 19``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

__all__ = ["Segmenter", "SegmenterOutput"]


class SegmenterOutput(NamedTuple):
    """Result of ``segmenter(x, return_aux=True)``.

    Attributes:
        logits: float ``[B, C, H, W]`` main-head logits at the input size (unnormalised).
        aux: auxiliary-head logits, each float ``[B, C, H, W]`` at the input size. Empty for
            architectures without auxiliary heads (``UNet``).
    """

    logits: torch.Tensor
    aux: tuple[torch.Tensor, ...]


class Segmenter(nn.Module):
    """Base class: validates inputs and defines the ``forward(x, return_aux=False)`` contract.

    Subclasses implement :meth:`_forward`, returning ``(logits, aux_tuple)`` where every tensor already
    has the input's spatial size; they should compute auxiliary heads only when ``return_aux`` is true.

    Args:
        num_classes: number of output classes (>= 2).
        in_channels: number of input image channels (>= 1).
    """

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
        self.num_classes = num_classes
        self.in_channels = in_channels

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError``/``TypeError`` unless ``x`` is a float ``[B, in_channels, H, W]`` tensor."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects images [B, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects {self.in_channels} input channels, "
                             f"got {x.shape[1]} (input shape {tuple(x.shape)})")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{type(self).__name__} expects a floating-point image in [-1, 1], got dtype {x.dtype}")
        if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"{type(self).__name__} got an empty input of shape {tuple(x.shape)}")

    def _forward(self, x: torch.Tensor, return_aux: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, return_aux: bool = False) -> torch.Tensor | SegmenterOutput:
        """Segment an image batch.

        Args:
            x: float ``[B, in_channels, H, W]`` images in ``[-1, 1]``; any ``H, W``.
            return_aux: also return the auxiliary heads' logits (for deep supervision during training).

        Returns:
            float ``[B, num_classes, H, W]`` logits, or a :class:`SegmenterOutput` when ``return_aux``.
        """
        self.check_input(x)
        logits, aux = self._forward(x, return_aux)
        if return_aux:
            return SegmenterOutput(logits, tuple(aux))
        return logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class map int64 ``[B, H, W]`` (argmax of the logits) for images ``[B, in_channels, H, W]``."""
        return self(x).argmax(1)
