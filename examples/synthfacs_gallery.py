"""SynthFACS gallery: rows = identities, columns = the 8 prototype expressions, plus mask-overlay rows.

    python examples/synthfacs_gallery.py --out synthfacs_gallery.png --size 128 --identities 6

Each identity gets an image row and, below it, the same faces with their parsing masks overlaid
(segexpr.visualize.overlay). ``--upscale`` enlarges small renders (nearest neighbour) for viewing. An existing
``--out`` is an error unless ``--overwrite``; the picture is written atomically.
"""
from __future__ import annotations

import argparse

import torch
from PIL import Image

from segexpr.data.labels import EXPRESSIONS, NUM_EXPRESSIONS, expression_prototype
from segexpr.data.synthetic import render
from segexpr.data.transforms import to_batch_tensors
from segexpr.files import refuse_existing
from segexpr.io.images import save_image
from segexpr.visualize import overlay, titled_grid


def gallery(size: int, identities: int, first_identity: int = 0, upscale: int = 1) -> Image.Image:
    """PIL image of the grid with a label strip naming the expression of each column."""
    rows = []
    for identity in range(first_identity, first_identity + identities):
        samples = [to_batch_tensors(render(identity, expression_prototype(e), size)) for e in range(NUM_EXPRESSIONS)]
        images = torch.stack([s["image"] for s in samples])
        masks = torch.stack([s["mask"] for s in samples])
        rows += [images, overlay(images, masks, alpha=0.6)]
    return titled_grid(torch.cat(rows), EXPRESSIONS, upscale=upscale)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="synthfacs_gallery.png")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--identities", type=int, default=6)
    parser.add_argument("--first-identity", type=int, default=0)
    parser.add_argument("--upscale", type=int, default=1)
    args = parser.parse_args(argv)
    try:  # before rendering: an existing picture is only replaced on request
        refuse_existing([args.out], overwrite=args.overwrite)
    except FileExistsError as err:
        raise SystemExit(f"synthfacs_gallery.py: {err}") from None
    save_image(gallery(args.size, args.identities, args.first_identity, args.upscale), args.out,
               overwrite=args.overwrite)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
