"""Editing real photos: image files in, image files out, from a checkpoint that may come from anywhere.

Checkpoints are read with ``torch.load(weights_only=True)``: a file can only carry tensors and plain
containers, never code, so a checkpoint downloaded from a stranger cannot execute anything on load.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, unsafe, or does not match the model it is loaded into."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint safely (``weights_only=True``) and check its structure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... depending on damage
        raise CheckpointError(
            f"cannot read checkpoint {path} safely (weights_only=True): {type(err).__name__}: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def load_module(path: str | Path, expected: type | None = None, map_location: str | torch.device = "cpu"):
    """Rebuild a segexpr LightningModule from a checkpoint without unpickling code.

    The class is taken from the checkpoint's hyperparameters (``_class_path``, written by LightningCLI and by
    segexpr's modules) or from ``expected``; it must be a class inside the ``segexpr`` package. Weights are
    loaded strictly: missing or unexpected keys are reported by name.
    """
    ckpt = read_checkpoint(path)
    hparams = dict(ckpt.get("hyper_parameters") or {})
    class_path = hparams.pop("_class_path", None)
    hparams.pop("_instantiator", None)
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
    except TypeError as err:
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


def list_images(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders into a sorted list of image files; missing paths are an error."""
    found: list[Path] = []
    missing = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            missing.append(str(p))
    if missing:
        raise FileNotFoundError(f"input images not found: {', '.join(missing)}")
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return found


def read_image(path: str | Path) -> torch.Tensor:
    """Read an image file as float ``[3, H, W]`` in ``[-1, 1]`` (RGB); unreadable files name themselves."""
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def write_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write a float ``[3, H, W]`` image in ``[-1, 1]`` to ``path`` (format from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)
    return path


def apply_at_resolution(fn, images: Sequence[torch.Tensor], size: int, batch_size: int = 8) -> list[torch.Tensor]:
    """Run ``fn`` (batch ``[B,3,size,size]`` -> same) on images of any size and bring the *change* back.

    Each image is resized to ``size``, edited, and the edit's residual (output minus resized input) is
    upsampled and added to the original, so detail the model never saw at its resolution is kept.
    """
    outputs: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        small = torch.stack([F.interpolate(im[None], size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True)[0] for im in chunk])
        residual = fn(small) - small
        for im, res in zip(chunk, residual):
            up = F.interpolate(res[None], size=im.shape[-2:], mode="bilinear", align_corners=False)[0]
            outputs.append((im + up).clamp(-1, 1))
    return outputs
