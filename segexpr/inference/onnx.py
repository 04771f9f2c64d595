"""ONNX export of segexpr segmenters.

>>> from segexpr.inference import to_onnx
>>> to_onnx(module_or_segmenter, "parser.onnx", image_size=512)          # doctest: +SKIP

The exported graph has one input ``image`` float32 ``[B, 3, H, W]`` in ``[-1, 1]`` and one output ``logits``
float32 ``[B, C, H, W]`` (eval mode, main head only; take ``argmax`` over axis 1 for the class map, order A).
``B`` is dynamic when ``dynamic_batch=True``; ``H, W`` are fixed to ``image_size``.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["to_onnx"]


class _LogitsOnly(nn.Module):
    def __init__(self, segmenter: nn.Module) -> None:
        super().__init__()
        self.segmenter = segmenter

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.segmenter(image)


def _resolve(model: nn.Module) -> nn.Module:
    from segexpr.models.segmenters import Segmenter

    if isinstance(model, Segmenter):
        return model
    inner = getattr(model, "segmenter", None)
    if isinstance(inner, Segmenter):
        return inner
    raise TypeError(f"to_onnx expects a segexpr Segmenter or a module with a .segmenter Segmenter "
                    f"(e.g. SegmenterModule), got {type(model).__name__}")


def to_onnx(
    segmenter_or_module: nn.Module,
    path: str | os.PathLike,
    image_size: int | tuple[int, int] = 512,
    dynamic_batch: bool = True,
    opset: int = 17,
    batch_size: int = 1,
) -> Path:
    """Export a segmenter's eval-mode logits to an ONNX file.

    Args:
        segmenter_or_module: a :class:`~segexpr.models.segmenters.Segmenter` or a module holding one as
            ``.segmenter`` (:class:`~segexpr.modules.segmenter.SegmenterModule`). It is not modified
            (a CPU copy in eval mode is exported).
        path: output ``.onnx`` file; parent directories are created.
        image_size: ``S`` or ``(H, W)`` of the exported input.
        dynamic_batch: make the batch axis of input and output dynamic.
        opset: ONNX opset version (>= 11).
        batch_size: batch size of the example input used for tracing.

    Returns:
        The path written. Input ``image`` float32 ``[B, 3, H, W]``, output ``logits`` float32 ``[B, C, H, W]``.
    """
    segmenter = _resolve(segmenter_or_module)
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"image_size must be a positive int or (H, W), got {image_size!r}")
    if not isinstance(opset, int) or opset < 11:
        raise ValueError(f"opset must be an integer >= 11, got {opset!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    wrapper = _LogitsOnly(copy.deepcopy(segmenter).float().cpu().eval())
    example = torch.zeros(batch_size, segmenter.in_channels, *size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic_axes = {"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    with torch.no_grad():
        torch.onnx.export(wrapper, (example,), str(path), input_names=["image"], output_names=["logits"],
                          opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True,
                          dynamo=False)
    return path
