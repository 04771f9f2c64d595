"""``segexpr edit`` and ``segexpr transfer``: photos in, edited photos out, from a checkpoint.

By default every face of a photo is detected, aligned, edited at the model's size and pasted back through the
segmenter's face mask (:func:`segexpr.inference.photo.edit_photo_faces`, the path the demo shares; needs
``pip install 'segexpr[photo]'``); ``--no-align`` edits each whole image as one already aligned face crop. The checkpoint is opened and checked first, then the images are read, edited
and written one at a time. Outputs mirror the inputs' relative paths under ``--out``, keep the input's format
(or ``--format``), mode (grey stays grey, RGBA keeps its alpha) and size, are written atomically, and never
replace an existing file without ``--overwrite``.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from segexpr.cli import UserError
from segexpr.inference.editor import MIN_IMAGE_SIZE, ExpressionEditor
from segexpr.inference.photo import crop_edit, edit_photo_faces, load_photo_editor, reference_crop
from segexpr.io.images import FORMATS, image_inputs, open_image, save_image

PHOTO_HINT = ("face detection needs dlib: pip install 'segexpr[photo]', or pass --no-align when the images are "
              "already aligned face crops")


def parse_aus(text: str) -> torch.Tensor:
    """``"AU12=1,AU6=0.8"`` -> float ``[17]`` AU vector in ``[0, 1]`` (unnamed AUs are 0; a repeated AU is an error)."""
    from segexpr.labels import AU_INDEX, NUM_AUS

    aus = torch.zeros(NUM_AUS)
    seen: set[str] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip().upper().replace("AU0", "AU")
        if not sep or name not in AU_INDEX:
            raise ValueError(f"bad AU setting {item!r}: expected NAME=VALUE with NAME one of {', '.join(AU_INDEX)}")
        if name in seen:
            raise ValueError(f"{name} is given twice in {text!r}; give each AU once")
        seen.add(name)
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"bad AU value in {item!r}: {value!r} is not a number") from None
        if not 0.0 <= number <= 1.0:  # also refuses NaN
            raise ValueError(f"AU intensity in {item!r} must be in [0, 1] (OpenFace intensity / 5)")
        aus[AU_INDEX[name]] = number
    if not seen:
        raise ValueError(f"no AU settings in {text!r}; expected e.g. 'AU6=0.8,AU12=1'")
    return aus


def check_device(device: str) -> str:
    """``device`` when torch can use it, else a :class:`UserError` that says why (before any file is read)."""
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"--device {device!r} is not a torch device ({err})") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device} requested but torch.cuda.is_available() is False")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise UserError(f"--device {device} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError(f"--device {device} requested but torch.backends.mps.is_available() is False")
    return device


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="JointModule checkpoint (read with weights_only=True)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder; outputs mirror the inputs' paths relative to the input folder")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--format", choices=sorted(FORMATS),
                        help="output format (default: the input's own, from its suffix)")
    parser.add_argument("--overwrite", action="store_true", help="replace output files that exist")
    parser.add_argument("--skip-invalid", action="store_true",
                        help="skip unreadable or too small images, list them at the end and exit with code 1 "
                             "(default: stop at the first one, after writing the images before it)")
    parser.add_argument("--no-align", dest="align", action="store_false",
                        help="edit each whole image as one aligned face crop (no face detection)")
    parser.add_argument("--max-faces", type=int, default=8, help="edit at most this many faces per photo, the "
                                                                  "largest (default: 8)")
    parser.add_argument("--min-face-size", type=int, default=32,
                        help="skip faces smaller than this many pixels (default: 32)")


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A plain-text parser: ``description``'s paragraphs are wrapped (no reStructuredText markup)."""
    import textwrap

    text = "\n\n".join(textwrap.fill(paragraph, 78) for paragraph in description.split("\n\n"))
    return argparse.ArgumentParser(prog=prog, description=text, formatter_class=argparse.RawDescriptionHelpFormatter)


@dataclass
class _Job:
    """One input file and the outputs it becomes."""

    source: Path
    outputs: list[tuple[str, Path]] = field(default_factory=list)  # (target name, output path)


def _plan(inputs: Sequence[str], out: Path, names: Sequence[str], fmt: str | None, overwrite: bool) -> list[_Job]:
    """Every output path, checked before anything is edited: no collisions, no inputs replaced, no existing file
    replaced without ``--overwrite``."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file; --out names a folder")
    jobs: list[_Job] = []
    pairs = image_inputs(inputs)
    sources = {path for path, _ in pairs}
    planned: dict[Path, Path] = {}
    existing = []
    for path, relative in pairs:
        suffix = FORMATS[fmt][1] if fmt else path.suffix.lower()
        job = _Job(path)
        for name in names:
            target = out / relative.parent / f"{relative.stem}_{name}{suffix}"
            resolved = target.resolve()
            if resolved in sources:
                raise UserError(f"--out {out} would overwrite the input {resolved}; choose another output folder")
            if resolved in planned:
                raise UserError(f"{path} and {planned[resolved]} would both be written to {target}")
            planned[resolved] = path
            if target.exists() and not overwrite:
                existing.append(str(target))
            job.outputs.append((name, target))
        jobs.append(job)
    if existing:
        more = f" (and {len(existing) - 3} more)" if len(existing) > 3 else ""
        raise UserError(f"{', '.join(existing[:3])}{more} exist(s); pass --overwrite to replace (nothing was written)")
    return jobs


def _check_photo_support(align: bool) -> None:
    if align:
        try:
            from segexpr.faces.detect import import_dlib

            import_dlib()
        except ImportError:
            raise UserError(PHOTO_HINT) from None


def _editor_for(args: argparse.Namespace) -> ExpressionEditor:
    if args.max_faces < 1:
        raise UserError(f"--max-faces must be >= 1, got {args.max_faces}")
    if args.min_face_size < 1:
        raise UserError(f"--min-face-size must be >= 1, got {args.min_face_size}")
    check_device(args.device)
    _check_photo_support(args.align)
    return load_photo_editor(args.ckpt, args.device)  # the checkpoint is opened and checked before any image


def _open_photo(path: Path):
    image = open_image(path)
    if min(image.size) < MIN_IMAGE_SIZE:
        raise ValueError(f"{path} is {image.width}x{image.height} px; at least {MIN_IMAGE_SIZE} px per side is needed")
    return image


def _edit_file(editor: ExpressionEditor, image, edit_fn: Callable[[torch.Tensor], torch.Tensor],
               args: argparse.Namespace):
    """One photo through the one photo path (``--no-align``: the whole image as one face) -> edited PIL image."""
    return edit_photo_faces(editor, image, edit_fn, align=args.align, max_faces=args.max_faces,
                            min_face_size=args.min_face_size).image


def _run_jobs(jobs: list[_Job], editor: ExpressionEditor, edit_fns: dict[str, Callable], args: argparse.Namespace,
              prog: str) -> int:
    """Read, edit and write one image at a time; report failures at the end. Returns the exit code."""
    from segexpr.faces.pipeline import NoFaceFound

    failed: list[str] = []
    written = 0
    for job in jobs:
        try:
            image = _open_photo(job.source)
        except ValueError as err:
            if not args.skip_invalid:
                raise ValueError(f"{err} ({written} image(s) written before it; --skip-invalid to go on)") from None
            failed.append(str(err))
            continue
        try:
            for name, target in job.outputs:
                result = _edit_file(editor, image, edit_fns[name], args)
                print(save_image(result, target, overwrite=args.overwrite))
                written += 1
        except NoFaceFound as err:
            message = str(err).replace("use align=False", "use --no-align")
            failed.append(f"{job.source}: {message}")
            print(f"{prog}: {job.source}: {message}", file=sys.stderr)
    if failed:
        print(f"{prog}: {len(failed)} of {len(jobs)} input image(s) failed, {written} image(s) written:",
              file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


@torch.no_grad()
def edit_main(argv: Sequence[str] | None = None) -> int:
    """Set the expression of the faces in photos by label or AU vector."""
    from segexpr.labels import EXPRESSIONS

    parser = _parser("segexpr edit", "Set the expression of the faces in photos by label or AU vector.\n\n"
                     "Each face is detected, aligned, edited at the model's size and pasted back; --no-align edits "
                     "each whole image as one aligned face. Writes OUT/<relative path>_<expression>.<suffix>.")
    parser.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    _common_arguments(parser)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--expression", help=f"target expression ({', '.join(EXPRESSIONS)}) or 'all'")
    target.add_argument("--aus", help="target AU intensities in [0, 1], e.g. 'AU6=0.8,AU12=1' (each AU once)")
    args = parser.parse_args(argv)
    if args.expression is not None and args.expression != "all" and args.expression not in EXPRESSIONS:
        parser.error(f"unknown expression {args.expression!r}; expected one of {', '.join(EXPRESSIONS)} or 'all'")
    aus = parse_aus(args.aus) if args.aus is not None else None
    names = list(EXPRESSIONS) if args.expression == "all" else [args.expression] if args.expression else ["aus"]
    jobs = _plan(args.inputs, args.out, names, args.format, args.overwrite)
    editor = _editor_for(args)
    edit_fns = {name: crop_edit(editor, aus=aus) if name == "aus" else crop_edit(editor, expression=name)
                for name in names}
    return _run_jobs(jobs, editor, edit_fns, args, "segexpr edit")


@torch.no_grad()
def transfer_main(argv: Sequence[str] | None = None) -> int:
    """Copy the expression of a reference photo onto the faces in photos."""
    from segexpr.faces.pipeline import NoFaceFound

    parser = _parser("segexpr transfer", "Copy the expression of a reference photo onto the faces in photos.\n\n"
                     "The reference's largest face (--no-align: the whole reference image) gives the expression. "
                     "Writes OUT/<relative path>_from_<reference>.<suffix>.")
    parser.add_argument("inputs", nargs="+", help="image files or folders whose identity is kept")
    parser.add_argument("--reference", required=True, type=Path, help="one image file whose expression is copied")
    _common_arguments(parser)
    args = parser.parse_args(argv)
    if args.reference.is_dir():
        raise UserError(f"--reference must be one image file, got the folder {args.reference}")
    if not args.reference.is_file():
        raise FileNotFoundError(f"--reference {args.reference} not found")
    name = f"from_{args.reference.stem}"
    jobs = _plan(args.inputs, args.out, [name], args.format, args.overwrite)
    editor = _editor_for(args)
    reference_image = _open_photo(args.reference)
    try:
        ref_crop = reference_crop(editor, reference_image, align=args.align, min_face_size=args.min_face_size)
    except NoFaceFound as err:
        raise ValueError(f"--reference {args.reference}: {str(err).replace('align=False', '--no-align')}") from None
    return _run_jobs(jobs, editor, {name: crop_edit(editor, reference=ref_crop)}, args, "segexpr transfer")
