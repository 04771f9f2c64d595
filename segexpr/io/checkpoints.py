"""Reading segexpr checkpoints safely.

Checkpoints are read with ``torch.load(weights_only=True)``: a file can only carry tensors and plain
containers, never code, so a checkpoint downloaded from a stranger cannot execute anything on load.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Mapping

import torch

__all__ = ["CheckpointError", "is_legacy_joint_hparams", "load_module", "load_segmenter_weights", "load_weights_file",
           "network_state", "read_checkpoint", "upgrade_checkpoint", "upgrade_joint_hparams"]


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe, or does not match the model it is loaded into."""


def load_weights_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; errors name the file and never suggest unsafe loading."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... depending on damage
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_failure(err)}") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint safely (``weights_only=True``) and check its structure."""
    ckpt = load_weights_file(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def network_state(state_dict: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The weights under ``prefix`` in a LightningModule's ``state_dict``, with the prefix removed: a module's
    ``segmenter`` attribute is ``network_state(state, "segmenter.")``."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _load_failure(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, without torch's advice to retry with ``weights_only=False``
    (which would let the file run code): the first line of its message, minus that advice."""
    import re

    text = str(err)
    if "weights_only" in text or "Weights only load failed" in text:
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)|unsupported (?:global|class) ([\w.]+)", text, re.I)
        what = f" (it needs {next(g for g in unsafe.groups() if g)})" if unsafe else ""
        return ("it holds objects other than tensors and plain containers" + what + "; segexpr reads checkpoints "
                "with weights_only=True only, so such a file is refused (is it a segexpr checkpoint from a trusted "
                "source, undamaged?)")
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    kind = type(err).__name__
    return f"not a readable torch checkpoint, damaged or truncated ({kind}{': ' + first if first else ''})"


def load_module(path: str | Path, expected: type | None = None, map_location: str | torch.device = "cpu", *,
                checkpoint: Mapping[str, Any] | None = None):
    """Rebuild a segexpr LightningModule from a checkpoint without unpickling code.

    The class is taken from the checkpoint's hyperparameters (``_class_path``, written by LightningCLI and by
    segexpr's modules) or from ``expected``; it must be a class inside the ``segexpr`` package. Weights are
    loaded strictly: missing or unexpected keys are reported by name. ``checkpoint``: ``path``'s contents when
    the caller has read them already (with :func:`read_checkpoint`), so the file is read once.
    """
    ckpt = read_checkpoint(path) if checkpoint is None else checkpoint
    hparams = dict(ckpt.get("hyper_parameters") or {})
    class_path = hparams.pop("_class_path", None)
    hparams.pop("_instantiator", None)
    if is_legacy_joint_hparams(hparams):
        hparams = upgrade_joint_hparams(hparams)
    if class_path is not None:
        module_name, _, class_name = class_path.rpartition(".")
        if not module_name.startswith("segexpr."):
            raise CheckpointError(f"{path} names class {class_path!r}, which is not part of segexpr")
        cls = getattr(importlib.import_module(module_name), class_name)
        if expected is not None and not issubclass(cls, expected):
            raise CheckpointError(f"{path} holds a {cls.__name__}, expected a {expected.__name__}")
    elif expected is not None:
        cls = expected
    else:
        raise CheckpointError(f"{path} does not say which segexpr module it holds; pass `expected=`")
    try:
        module = cls(**hparams)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: hyperparameters do not fit {cls.__name__}: {err}") from err
    result = module.load_state_dict(ckpt["state_dict"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path} does not match {cls.__name__}: missing keys {result.missing_keys[:10]}"
            f"{' ...' if len(result.missing_keys) > 10 else ''}, unexpected keys {result.unexpected_keys[:10]}"
            f"{' ...' if len(result.unexpected_keys) > 10 else ''}")
    if hasattr(module, "on_load_checkpoint"):
        module.on_load_checkpoint(ckpt)
    return module.to(map_location).eval()


# ------------------------------------------------------------------ segexpr 0.1 JointModule checkpoints
def is_legacy_joint_hparams(hparams: Mapping[str, Any]) -> bool:
    """Whether JointModule hyperparameters come from segexpr 0.1 (parts as LightningModule class_path dicts)."""
    return any(isinstance(hparams.get(part), Mapping) and "class_path" in hparams[part]
               for part in ("segmenter", "generator", "discriminator"))


def upgrade_joint_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """segexpr 0.1 JointModule hyperparameters -> today's (network configs instead of wrapped LightningModules).

    0.1 wrapped each part in its LightningModule (``SegmenterModule``/``GeneratorModule``/``AUDiscriminatorModule``)
    and used only the networks; their training options (learning rates, loss weights) had no effect and are
    dropped. The segmentation-loss options move to JointModule's ``seg_ohem_thresh``/``seg_ohem_min_kept``/
    ``ignore_index``, the discriminator's ``image_size`` to JointModule's. A ``pretrained`` segmenter path or
    ``pretrained_backbone`` is dropped: the weights are in the checkpoint. The state-dict keys are unchanged.
    """
    new = dict(hparams)
    seg = dict((hparams.get("segmenter") or {}).get("init_args") or {}) if hparams.get("segmenter") else None
    if seg is not None:
        kwargs = {k: v for k, v in dict(seg.get("segmenter_kwargs") or {}).items() if k != "pretrained_backbone"}
        new["segmenter"] = {"name": seg.get("arch", "bisenet"), "num_classes": seg.get("num_classes", 19), **kwargs}
        new["seg_ohem_thresh"] = seg.get("ohem_thresh", 0.7)
        new["seg_ohem_min_kept"] = seg.get("ohem_min_kept")
        new["ignore_index"] = seg.get("ignore_index", 255)
    else:
        new["segmenter"] = None
    gen = dict((hparams.get("generator") or {}).get("init_args") or {})
    new["generator"] = {k: v for k, v in dict(gen.get("generator_kwargs") or {}).items() if k != "region_source"}
    # segexpr 0.1 reproduced bit for bit: plain soft-mask moments, local generators in a loop over regions
    new["generator"] = {"box_power": 1.0, "batch_regions": False, "box_aspect": "stretch", **new["generator"]}
    new["coder"] = dict(gen.get("coder_kwargs") or {})
    disc = dict((hparams.get("discriminator") or {}).get("init_args") or {})
    new["image_size"] = int(disc.get("image_size", 128))
    new["discriminator"] = {"head_grid": 1, **dict(disc.get("discriminator_kwargs") or {})}
    return new


def upgrade_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Write a copy of a segexpr 0.1 JointModule checkpoint that today's ``JointModule.load_from_checkpoint``
    reads (only the hyperparameters change). ``target`` must not exist (nothing is overwritten)."""
    source, target = Path(source), Path(target)
    if target.exists():
        raise FileExistsError(f"{target} exists; choose another output path (nothing was written)")
    ckpt = read_checkpoint(source)
    hparams = ckpt.get("hyper_parameters") or {}
    if not is_legacy_joint_hparams(hparams):
        raise CheckpointError(f"{source} is not a segexpr 0.1 JointModule checkpoint (nothing to upgrade)")
    ckpt["hyper_parameters"] = upgrade_joint_hparams(hparams)
    ckpt["hyper_parameters"].pop("_instantiator", None)
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, target)
    return target


def load_segmenter_weights(segmenter: torch.nn.Module, path: str | Path) -> None:
    """Initialise a segmenter network from a file, strictly (every key, every shape).

    Accepts a segexpr checkpoint holding ``segmenter.*`` weights (SegmenterModule or JointModule) or a plain
    ``state_dict`` of the network itself (e.g. face-parsing.PyTorch's ``79999_iter.pth`` for
    ``create_segmenter("bisenet", variant="face_parsing")``; a DataParallel ``module.`` prefix is removed). Read
    with ``weights_only=True``.
    """
    ckpt = load_weights_file(path)
    if isinstance(ckpt, Mapping) and "state_dict" in ckpt:
        state = network_state(ckpt["state_dict"], "segmenter.")
        if not state:
            raise CheckpointError(f"{path} holds no 'segmenter.*' weights (is it a SegmenterModule checkpoint?)")
    elif isinstance(ckpt, Mapping) and ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.items()}
    else:
        raise CheckpointError(f"{path} is neither a segexpr checkpoint nor a state_dict of tensors")
    try:
        segmenter.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit this {type(segmenter).__name__} segmenter: {err}") from err
