"""The one uint8 <-> ``[-1, 1]`` pair (segexpr.ops.pixels, re-exported by segexpr.io.images) and no other copy."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import torch

from segexpr.io import images as io_images
from segexpr.ops.pixels import images_to_uint8, uint8_to_images

PACKAGE = Path(__file__).resolve().parent.parent / "segexpr"
#: Where 127.5 may still appear as a number: the pair itself, and the photo pipeline's *change* (a difference of
#: two [-1, 1] images in pixel units, not a conversion of an image).
ALLOWED = {"ops/pixels.py": "the pair", "faces/pipeline.py": "a change (edited - crop) in pixel units"}


def test_the_pair_round_trips_every_uint8_value():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 256, 1).expand(3, 256, 4)
    images = uint8_to_images(pixels)
    assert images.dtype == torch.float32 and images.shape == pixels.shape
    assert float(images.min()) == -1.0 and float(images.max()) == 1.0
    assert torch.equal(images_to_uint8(images), pixels)


def test_images_to_uint8_clamps_and_rounds():
    out = images_to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 5.0, 2 / 255 - 1 + 0.001]))
    assert out.tolist() == [0, 0, 128, 255, 255, 1]  # 0 -> 127.5 rounds half to even, 128


def test_io_re_exports_the_pair():
    assert io_images.images_to_uint8 is images_to_uint8 and io_images.uint8_to_images is uint8_to_images


def test_read_and_write_use_the_pair(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(rgb).save(tmp_path / "a.png")
    image = io_images.read_image(tmp_path / "a.png")
    assert torch.equal(image, uint8_to_images(torch.from_numpy(rgb).permute(2, 0, 1)))
    io_images.write_image(image, tmp_path / "b.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), rgb)


def conversion_constants() -> list[str]:
    """``file:line`` of every number 127.5 in segexpr's code (strings such as error hints do not count)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and type(node.value) is float and node.value == 127.5:
                if relative not in ALLOWED:
                    found.append(f"{relative}:{node.lineno}")
    return found


def test_no_other_copy_of_the_conversion():
    found = conversion_constants()
    assert not found, f"uint8 <-> [-1, 1] written out again (use segexpr.ops.pixels / segexpr.io.images): {found}"
