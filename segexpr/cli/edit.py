"""``segexpr edit`` and ``segexpr transfer``: image files in, edited image files out, from a checkpoint."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import torch

from segexpr.editor import ExpressionEditor
from segexpr.io.checkpoints import CheckpointError
from segexpr.io.images import list_images, read_image, write_image


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


def _load_editor(ckpt: str | Path, device: str) -> ExpressionEditor:
    editor = ExpressionEditor.from_checkpoint(ckpt, device=device)
    if editor.region_source == "landmarks":
        raise CheckpointError(f"{ckpt} was trained with region_source='landmarks'; editing photos from the command "
                              "line needs a segmenter or region_source='none' model (use the Python API with "
                              "landmarks=...)")
    return editor


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
    editor = _load_editor(args.ckpt, args.device)
    targets = EXPRESSIONS if args.expression == "all" else [args.expression] if args.expression else ["aus"]
    for path, image in images:
        batch = image[None].to(args.device)
        for name in targets:
            edited = editor.edit(batch, aus=aus[None]) if name == "aus" else editor.edit(batch, expression=name)
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
    editor = _load_editor(args.ckpt, args.device)
    for path, image in images:
        result = editor.transfer(image[None].to(args.device), reference)
        print(write_image(result[0], args.out / f"{path.stem}_from_{reference_path.stem}.png"))
    return 0
