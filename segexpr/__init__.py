"""segexpr: segmentation-conditioned hierarchical GANs and disentangled expression transfer.

The front door: the public names of every floor, importable from here::

    import segexpr

    editor = segexpr.ExpressionEditor.from_checkpoint("last.ckpt")
    model = segexpr.JointModule(segmenter={"name": "unet"}, image_size=64)
    data = segexpr.SyntheticFacesDataModule(size=64)

Names are resolved on first use (PEP 562 ``__getattr__``): ``import segexpr`` itself imports nothing heavy (no
torch), so ``segexpr --help`` stays fast. Each name still lives in its own module (listed in ``_EXPORTS``);
code inside segexpr imports from there, never from this front door.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # the vocabulary
    **dict.fromkeys(("EXPRESSIONS", "NUM_EXPRESSIONS", "AU_NAMES", "NUM_AUS", "REGION_NAMES", "SIDED_REGION_NAMES",
                     "CELEBAMASK_HQ_CLASSES", "expression_prototype"), "segexpr.labels"),
    # tensor operations and I/O
    "soft_regions": "segexpr.ops.regions",
    **dict.fromkeys(("images_to_uint8", "uint8_to_images"), "segexpr.ops.pixels"),
    **dict.fromkeys(("read_image", "write_image"), "segexpr.io.images"),
    **dict.fromkeys(("CheckpointError", "load_module"), "segexpr.io.checkpoints"),
    # data
    **dict.fromkeys(("SyntheticFaces", "SyntheticFacesDataModule", "render"), "segexpr.data.synthetic"),
    "CelebAMaskHQDataModule": "segexpr.data.celebamask_hq",
    "AffectNetDataModule": "segexpr.data.affectnet",
    "RaFDDataModule": "segexpr.data.rafd",
    "GANimationDataModule": "segexpr.data.ganimation",
    "CombinedDataModule": "segexpr.data.combined",
    "to_batch_tensors": "segexpr.data.transforms",
    # networks
    **dict.fromkeys(("create_segmenter", "list_segmenters"), "segexpr.models.segmenters"),
    "create_generator": "segexpr.models.generators",
    "create_discriminator": "segexpr.models.discriminators",
    "build_network": "segexpr.models.factory",
    # training modules
    "JointModule": "segexpr.modules.joint",
    "SegmenterModule": "segexpr.modules.segmenter",
    "GeneratorModule": "segexpr.modules.generator",
    "AUDiscriminatorModule": "segexpr.modules.discriminator",
    # inference
    "ExpressionEditor": "segexpr.inference.editor",
    "load_editing_networks": "segexpr.inference.checkpoints",
    **dict.fromkeys(("edit_photo_faces", "load_photo_editor"), "segexpr.inference.photo"),
    "to_onnx": "segexpr.inference.onnx",
    # evaluation
    "SynthFACSEditBenchmark": "segexpr.evaluation.benchmark",
    "standard_judge": "segexpr.evaluation.judge",
    **dict.fromkeys(("load_joint", "load_recognizer", "train_recognizer"), "segexpr.evaluation.recognizer"),
    "evaluate_datamodule": "segexpr.evaluation.real_data",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'segexpr' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
