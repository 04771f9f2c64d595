"""Face-parsing networks: ``BiSeNet`` and ``UNet`` behind one factory.

>>> from segexpr.models.segmenters import create_segmenter
>>> net = create_segmenter("unet", num_classes=19, base_channels=16)
>>> net(torch.zeros(2, 3, 37, 53)).shape   # any input size
torch.Size([2, 19, 37, 53])

All segmenters take float ``[B, 3, H, W]`` images in ``[-1, 1]`` and return logits ``[B, C, H, W]`` at the
input size; ``forward(x, return_aux=True)`` returns a :class:`SegmenterOutput` with auxiliary logits too.
Class indices follow :data:`segexpr.data.labels.CELEBAMASK_HQ_CLASSES` (order A) for 19 classes.
"""
from __future__ import annotations

from typing import Any

from segexpr.models.segmenters.base import Segmenter, SegmenterOutput
from segexpr.models.segmenters.bisenet import BiSeNet
from segexpr.models.segmenters.unet import UNet

__all__ = ["Segmenter", "SegmenterOutput", "BiSeNet", "UNet", "create_segmenter", "list_segmenters", "SEGMENTERS"]

#: Registered architectures: name -> class.
SEGMENTERS: dict[str, type[Segmenter]] = {"bisenet": BiSeNet, "unet": UNet}


def list_segmenters() -> list[str]:
    """Names accepted by :func:`create_segmenter`, sorted."""
    return sorted(SEGMENTERS)


def create_segmenter(name: str, num_classes: int = 19, **kwargs: Any) -> Segmenter:
    """Build a segmenter by name.

    Args:
        name: ``"bisenet"`` or ``"unet"`` (case-insensitive); see :func:`list_segmenters`.
        num_classes: number of output classes (19 = CelebAMask-HQ order A).
        **kwargs: architecture options, e.g. ``backbone_width``/``context_channels``/``fusion_channels``/
            ``spatial_stride``/``pretrained_backbone`` for BiSeNet, ``depth``/``base_channels`` for UNet.

    Raises:
        ValueError: unknown ``name``, invalid ``num_classes`` or option values.
        TypeError: an option the architecture does not accept.
    """
    key = str(name).lower()
    if key not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r}; available: {list_segmenters()}")
    cls = SEGMENTERS[key]
    try:
        return cls(num_classes=num_classes, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            import inspect
            accepted = [p for p in inspect.signature(cls).parameters if p != "num_classes"]
            raise TypeError(f"{cls.__name__} got an unexpected option ({err}); accepted options: {accepted}") from None
        raise
