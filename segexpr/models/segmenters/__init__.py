"""Face-parsing networks: ``BiSeNet`` (two variants) and ``UNet`` behind one factory.

>>> from segexpr.models.segmenters import create_segmenter
>>> net = create_segmenter("unet", num_classes=19, base_channels=16)
>>> net(torch.zeros(2, 3, 37, 53)).shape   # any input size
torch.Size([2, 19, 37, 53])

All segmenters take float ``[B, 3, H, W]`` images in ``[-1, 1]`` and return logits ``[B, C, H, W]`` at the
input size; ``forward(x, return_aux=True)`` returns a :class:`SegmenterOutput` with auxiliary logits too.
Class indices follow :data:`segexpr.labels.CELEBAMASK_HQ_CLASSES` (order A) for 19 classes.
``create_segmenter("bisenet", variant="face_parsing")`` builds :class:`FaceParsingBiSeNet`, which loads
face-parsing.PyTorch checkpoints (``79999_iter.pth``) with :func:`load_face_parsing_checkpoint`.
"""
from __future__ import annotations

from typing import Any

from segexpr.models.segmenters.base import Segmenter, SegmenterOutput
from segexpr.models.segmenters.bisenet import BiSeNet
from segexpr.models.segmenters.face_parsing import FaceParsingBiSeNet, load_face_parsing_checkpoint
from segexpr.models.segmenters.unet import UNet

__all__ = ["Segmenter", "SegmenterOutput", "BiSeNet", "FaceParsingBiSeNet", "UNet", "create_segmenter",
           "list_segmenters", "load_face_parsing_checkpoint", "SEGMENTERS", "VARIANTS"]

#: Registered architectures: name -> class.
SEGMENTERS: dict[str, type[Segmenter]] = {"bisenet": BiSeNet, "unet": UNet}
#: Alternative implementations per name: name -> {variant: class}; ``variant=None`` means ``SEGMENTERS[name]``.
VARIANTS: dict[str, dict[str, type[Segmenter]]] = {
    "bisenet": {"segexpr": BiSeNet, "face_parsing": FaceParsingBiSeNet},
}


def list_segmenters() -> list[str]:
    """Names accepted by :func:`create_segmenter`, sorted."""
    return sorted(SEGMENTERS)


def create_segmenter(name: str, num_classes: int = 19, variant: str | None = None, **kwargs: Any) -> Segmenter:
    """Build a segmenter by name.

    Args:
        name: ``"bisenet"`` or ``"unet"`` (case-insensitive); see :func:`list_segmenters`.
        num_classes: number of output classes (19 = CelebAMask-HQ order A).
        variant: implementation of ``name`` (see :data:`VARIANTS`); ``None`` is the default. For ``"bisenet"``:
            ``"segexpr"`` (default, :class:`BiSeNet`) or ``"face_parsing"`` (:class:`FaceParsingBiSeNet`,
            face-parsing.PyTorch's exact network and checkpoint keys; no architecture options).
        **kwargs: architecture options, e.g. ``backbone_width``/``context_channels``/``fusion_channels``/
            ``spatial_stride``/``pretrained_backbone`` for BiSeNet, ``depth``/``base_channels`` for UNet.

    Raises:
        ValueError: unknown ``name`` or ``variant``, invalid ``num_classes`` or option values.
        TypeError: an option the architecture does not accept.
    """
    key = str(name).lower()
    if key not in SEGMENTERS:
        raise ValueError(f"unknown segmenter {name!r}; available: {list_segmenters()}")
    cls = SEGMENTERS[key]
    if variant is not None:
        accepted = VARIANTS.get(key, {})
        if variant not in accepted:
            raise ValueError(f"unknown variant {variant!r} for segmenter {key!r}; accepted: "
                             f"{sorted(accepted) + [None]}")
        cls = accepted[variant]
    try:
        return cls(num_classes=num_classes, **kwargs)
    except TypeError as err:
        if "unexpected keyword argument" in str(err):
            import inspect
            accepted = [p for p in inspect.signature(cls).parameters if p != "num_classes"]
            raise TypeError(f"{cls.__name__} got an unexpected option ({err}); accepted options: {accepted}") from None
        raise
