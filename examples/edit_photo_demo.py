"""Before/after picture of ``segexpr edit`` on a real photo, for the README.

Places scikit-image's astronaut portrait (NASA, public domain) on a larger canvas, edits it the way
``segexpr edit`` does (detect, align, edit at the model's size, paste back; ``segexpr.faces.edit_photo``) and writes
``before | after`` side by side:

    python examples/edit_photo_demo.py --ckpt outputs/synthetic/latest/checkpoints/last.ckpt \
        --expression happy --out docs/photo_edit_before_after.png

Needs ``pip install 'segexpr[photo]'`` (dlib) and scikit-image.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from segexpr.files import refuse_existing
from segexpr.io.images import save_image


def astronaut_on_canvas(face_size: int = 384, canvas: tuple[int, int] = (640, 480)) -> Image.Image:
    """The astronaut portrait resized to ``face_size`` and pasted on a grey ``canvas`` (width, height)."""
    from skimage import data

    face = Image.fromarray(data.astronaut()).resize((face_size, face_size), Image.LANCZOS)
    image = Image.new("RGB", canvas, (118, 126, 134))
    image.paste(face, ((canvas[0] - face_size) // 2, (canvas[1] - face_size) // 2))
    return image


def before_after(before: Image.Image, after: Image.Image, labels: tuple[str, str] = ("before", "after")
                 ) -> Image.Image:
    """``before | after`` side by side with a caption strip."""
    strip = 22
    out = Image.new("RGB", (before.width + after.width + 8, before.height + strip), (255, 255, 255))
    out.paste(before.convert("RGB"), (0, strip))
    out.paste(after.convert("RGB"), (before.width + 8, strip))
    draw = ImageDraw.Draw(out)
    draw.text((6, 5), labels[0], fill=(0, 0, 0))
    draw.text((before.width + 14, 5), labels[1], fill=(0, 0, 0))
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Write docs/photo_edit_before_after.png from a JointModule "
                                                 "checkpoint (astronaut photo, one expression edit).")
    parser.add_argument("--ckpt", required=True, help="JointModule checkpoint")
    parser.add_argument("--expression", default="happy", help="target expression (default: happy)")
    parser.add_argument("--out", type=Path, default=Path("docs/photo_edit_before_after.png"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    try:  # before loading anything: an existing picture is only replaced on request
        refuse_existing([args.out], overwrite=args.overwrite)
    except FileExistsError as err:
        raise SystemExit(f"edit_photo_demo.py: {err}") from None

    import torch

    from segexpr.inference.photo import crop_edit, edit_photo_faces, load_photo_editor

    editor = load_photo_editor(args.ckpt, device=args.device)
    photo = astronaut_on_canvas()
    with torch.no_grad():  # the photo path segexpr edit and the demo use
        result = edit_photo_faces(editor, photo, crop_edit(editor, expression=args.expression))
    picture = before_after(photo, result.image, ("photo", f"segexpr edit --expression {args.expression}"))
    save_image(picture, args.out, overwrite=args.overwrite)  # atomic
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
