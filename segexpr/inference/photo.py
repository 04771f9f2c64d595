"""The one photo-editing path: detect, align, edit at the model's size, paste the change back through the
segmenter's face mask.

``segexpr edit``/``segexpr transfer`` and the browser demo both edit photos through :func:`edit_photo_faces`, so a
photo edited on the command line and in the demo is the same photo: every face found by
:func:`segexpr.faces.edit_photo` is aligned to the model's crop, edited by ``edit_fn``, and only the *change* is
warped back onto the photo at its own resolution, inside the feathered face mask of the model's segmenter
(:meth:`ExpressionEditor.face_mask <segexpr.inference.editor.ExpressionEditor.face_mask>`; the template ellipse
for a model without one). ``align=False`` treats the whole image as one aligned face: it is resized to the
model's size, edited, and the change is resized back (no mask: the whole change is pasted).

Face detection needs the photo extra (``pip install 'segexpr[photo]'``) when called; importing this module
does not import dlib.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from segexpr.io.checkpoints import CheckpointError

__all__ = ["crop_edit", "edit_photo_faces", "face_mask_fn", "load_photo_editor", "reference_crop"]

EditFn = Callable[[torch.Tensor], torch.Tensor]


def load_photo_editor(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """:meth:`ExpressionEditor.from_checkpoint`, refusing a ``region_source="landmarks"`` model (photos carry no
    68-point landmarks; use the Python API with ``landmarks=``)."""
    from segexpr.inference.editor import ExpressionEditor

    editor = ExpressionEditor.from_checkpoint(path, device=device)
    if editor.region_source == "landmarks":
        raise CheckpointError(f"{path} was trained with region_source='landmarks'; editing photos needs a segmenter "
                              "or region_source='none' model (use the Python API with landmarks=...)")
    return editor


def crop_edit(editor: Any, *, expression: Any = None, aus: Any = None, reference: torch.Tensor | None = None
              ) -> EditFn:
    """What to do to the aligned crops: ``editor.edit`` to an expression or AU vector, or ``editor.transfer`` of
    the expression of ``reference`` (one aligned crop ``[1, 3, S, S]``, broadcast to every face). Exactly one."""
    if sum(x is not None for x in (expression, aus, reference)) != 1:
        raise ValueError("crop_edit needs exactly one of expression=, aus= or reference=")
    if expression is not None:
        return lambda crops: editor.edit(crops, expression=expression)
    if aus is not None:
        return lambda crops: editor.edit(crops, aus=aus)
    return lambda crops: editor.transfer(crops, reference.to(crops).expand(crops.shape[0], -1, -1, -1))


def face_mask_fn(editor: Any) -> EditFn | None:
    """The paste mask of an editor: its segmenter's face probability (skin, brows, eyes, nose, mouth, lips) on
    the crops, on the editor's device, returned on the CPU; ``None`` (the template ellipse) without a segmenter."""
    if getattr(editor, "segmenter", None) is None or not hasattr(editor, "face_mask"):
        return None
    device = editor.device
    return lambda crops: editor.face_mask(crops.to(device)).cpu()


def edit_photo_faces(editor: Any, image: Image.Image, edit_fn: EditFn, *, align: bool = True, max_faces: int = 8,
                     min_face_size: int = 32, pipeline: Any = None) -> Any:
    """Edit the faces of ``image`` with ``edit_fn`` (aligned crops ``[N, 3, S, S]`` in ``[-1, 1]`` -> same), at
    ``editor.image_size``; returns :class:`segexpr.faces.PhotoEditResult` (``.image`` is the edited photo).

    The crops go to ``editor.device`` (when the editor has one) and come back to the CPU. With ``align`` the
    change is pasted through :func:`face_mask_fn`; ``align=False`` edits the whole image as one face. Raises
    :class:`segexpr.faces.NoFaceFound` when no usable face is found, ``ImportError`` when face detection needs
    dlib. ``pipeline``: the module providing ``edit_photo`` (default :mod:`segexpr.faces.pipeline`).
    """
    if pipeline is None:
        from segexpr.faces import pipeline
    device = getattr(editor, "device", None)

    def run(crops: torch.Tensor) -> torch.Tensor:
        return edit_fn(crops if device is None else crops.to(device)).cpu()

    return pipeline.edit_photo(image, run, size=int(editor.image_size), face_mask_fn=face_mask_fn(editor) if align
                               else None, align=align, max_faces=max_faces, min_face_size=min_face_size)


def reference_crop(editor: Any, image: Image.Image, *, align: bool = True, min_face_size: int = 32,
                   pipeline: Any = None) -> torch.Tensor:
    """The reference's largest face as the model sees it: one aligned crop ``[1, 3, S, S]`` on the CPU
    (``align=False``: the whole image resized). Raises :class:`segexpr.faces.NoFaceFound` without a face."""
    if pipeline is None:
        from segexpr.faces import pipeline
    return pipeline.edit_photo(image, lambda crops: crops, size=int(editor.image_size), align=align, max_faces=1,
                               min_face_size=min_face_size).crops[:1]
