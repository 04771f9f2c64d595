"""Editing real photos: image files in, image files out, from a checkpoint that may come from anywhere.

Checkpoints are read with ``torch.load(weights_only=True)``: a file can only carry tensors and plain
containers, never code, so a checkpoint downloaded from a stranger cannot execute anything on load.
"""
from __future__ import annotations

import importlib
from pathlib import Path
import argparse
from typing import Any, Iterable, Sequence

import numpy as np
import torch
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


def parse_aus(text: str) -> torch.Tensor:
    """``"AU12=1,AU6=0.8"`` -> float ``[17]`` AU vector in ``[0, 1]`` (unnamed AUs are 0)."""
    from segexpr.data.labels import AU_INDEX, NUM_AUS

    aus = torch.zeros(NUM_AUS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip().upper().replace("AU0", "AU")
        if not sep or name not in AU_INDEX:
            raise ValueError(f"bad AU setting {item!r}: expected NAME=VALUE with NAME one of {', '.join(AU_INDEX)}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"bad AU value in {item!r}: {value!r} is not a number") from None
        if not 0.0 <= number <= 1.0:
            raise ValueError(f"AU intensity in {item!r} must be in [0, 1] (OpenFace intensity / 5)")
        aus[AU_INDEX[name]] = number
    return aus


def _load_joint(ckpt: str | Path, device: str):
    from segexpr.modules.joint import JointModule

    module = load_module(ckpt, expected=JointModule, map_location=device)
    if module.hparams.region_source == "landmarks":
        raise CheckpointError(f"{ckpt} was trained with region_source='landmarks'; editing photos from the command "
                              "line needs a segmenter or region_source='none' model (use the Python API with "
                              "landmarks=...)")
    return module


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="JointModule checkpoint (read with weights_only=True)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")


@torch.no_grad()
def edit_main(argv: Sequence[str] | None = None) -> int:
    """``segexpr edit``: set the expression of photos by label or AU vector."""
    from segexpr.data.labels import EXPRESSIONS

    parser = argparse.ArgumentParser(prog="segexpr edit", description=edit_main.__doc__)
    parser.add_argument("inputs", nargs="+", help="image files or folders")
    _common_arguments(parser)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--expression", help=f"target expression ({', '.join(EXPRESSIONS)}) or 'all'")
    target.add_argument("--aus", help="target AU intensities in [0, 1], e.g. 'AU6=0.8,AU12=1'")
    args = parser.parse_args(argv)
    if args.expression is not None and args.expression != "all" and args.expression not in EXPRESSIONS:
        parser.error(f"unknown expression {args.expression!r}; expected one of {', '.join(EXPRESSIONS)} or 'all'")
    aus = parse_aus(args.aus) if args.aus is not None else None
    images = [(path, read_image(path)) for path in list_images(args.inputs)]
    module = _load_joint(args.ckpt, args.device)
    targets = EXPRESSIONS if args.expression == "all" else [args.expression] if args.expression else ["aus"]
    for path, image in images:
        batch = image[None].to(args.device)
        for name in targets:
            edited = module.edit(batch, aus=aus[None]) if name == "aus" else module.edit(batch, expression=name)
            print(write_image(edited[0], args.out / f"{path.stem}_{name}.png"))
    return 0


@torch.no_grad()
def transfer_main(argv: Sequence[str] | None = None) -> int:
    """``segexpr transfer``: copy the expression of a reference photo onto each input photo."""
    parser = argparse.ArgumentParser(prog="segexpr transfer", description=transfer_main.__doc__)
    parser.add_argument("inputs", nargs="+", help="image files or folders whose identity is kept")
    parser.add_argument("--reference", required=True, help="image whose expression is copied")
    _common_arguments(parser)
    args = parser.parse_args(argv)
    images = [(path, read_image(path)) for path in list_images(args.inputs)]
    reference_path = list_images([args.reference])[0]
    reference = read_image(reference_path)[None].to(args.device)
    module = _load_joint(args.ckpt, args.device)
    for path, image in images:
        result = module.transfer(image[None].to(args.device), reference)
        print(write_image(result[0], args.out / f"{path.stem}_from_{reference_path.stem}.png"))
    return 0
