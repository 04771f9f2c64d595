"""Inference: the editor, networks from a checkpoint, the one photo-editing path, ONNX export.

* :class:`ExpressionEditor` (:mod:`segexpr.inference.editor`) -- edit by label or AU vector, transfer from a
  reference, region masks, face masks; any input size.
* :mod:`segexpr.inference.checkpoints` -- the one reader of JointModule checkpoints and the networks inference
  builds from them (with the factories of :mod:`segexpr.models`).
* :mod:`segexpr.inference.photo` -- the one photo path (detect, align, edit, paste back through the segmenter's
  face mask) that ``segexpr edit``/``transfer`` and the demo share.
* :func:`to_onnx` (:mod:`segexpr.inference.onnx`) -- a segmenter's logits as an ONNX graph.

Nothing here imports :mod:`segexpr.modules`: the training modules build on this package, not the other way round
(``JointModule.edit`` is an :class:`ExpressionEditor` over the module's networks).
"""
from segexpr.inference.checkpoints import EditingNetworks, load_editing_networks, read_joint_checkpoint
from segexpr.inference.editor import ExpressionEditor
from segexpr.inference.onnx import to_onnx
from segexpr.inference.photo import crop_edit, edit_photo_faces, load_photo_editor, reference_crop

__all__ = ["EditingNetworks", "ExpressionEditor", "crop_edit", "edit_photo_faces", "load_editing_networks",
           "load_photo_editor", "read_joint_checkpoint", "reference_crop", "to_onnx"]
