"""Image files in and out: float ``[3, H, W]`` tensors in ``[-1, 1]``, or PIL images written atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from segexpr.files import atomic_path, refuse_existing
from segexpr.ops.pixels import images_to_uint8, uint8_to_images  # the one pair, re-exported here

__all__ = ["IMAGE_SUFFIXES", "FORMATS", "image_inputs", "images_to_uint8", "list_images", "open_image", "read_image",
           "save_image", "uint8_to_images", "write_image"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: ``--format`` choices -> (PIL format name, file suffix).
FORMATS = {"png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg"), "jpeg": ("JPEG", ".jpg"), "bmp": ("BMP", ".bmp"),
           "webp": ("WEBP", ".webp"), "tif": ("TIFF", ".tif"), "tiff": ("TIFF", ".tiff")}
_SUFFIX_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF",
                   ".tiff": "TIFF"}


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


def image_inputs(paths: Iterable[str | Path]) -> list[tuple[Path, Path]]:
    """Files and folders (searched recursively) -> sorted ``(file, relative path)`` pairs for mirrored outputs.

    With a single folder the relative paths are relative to it (``photos/a/face.jpg`` -> ``a/face.jpg``); with
    several inputs they are relative to the inputs' common parent folder, so ``a/face.jpg`` and ``b/face.jpg``
    keep distinct relative paths. A file given twice is listed once. Missing paths are an error.
    """
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"input images not found: {', '.join(missing)}")
    found: dict[Path, None] = {}
    for p in paths:
        if p.is_dir():
            found.update((q.resolve(), None) for q in sorted(p.rglob("*"))
                         if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found[p.resolve()] = None
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    roots = [p.resolve() if p.is_dir() else p.resolve().parent for p in paths]
    base = roots[0] if len(roots) == 1 else Path(os.path.commonpath([str(r) for r in roots]))
    return [(f, f.relative_to(base)) for f in found]


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file (any mode, EXIF untouched); unreadable files name themselves."""
    try:
        with Image.open(path) as im:
            im.load()
            copy = im.copy()  # keeps info (EXIF bytes, ICC, transparency) for exif_transpose and saving
            copy.format = im.format
            return copy
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def save_image(image: Image.Image, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``image`` to ``path`` atomically (a temp file in the same folder, then a rename; the format follows
    the suffix). An existing ``path`` is an error unless ``overwrite``; alpha cannot go into JPEG/BMP."""
    path = Path(path)
    fmt = _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image suffix {path.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    refuse_existing([path], overwrite=overwrite)  # before the conversions: the error names the file first
    if fmt in ("JPEG", "BMP") and ("A" in image.getbands() or image.mode == "P" and "transparency" in image.info):
        raise ValueError(f"{path}: {fmt} cannot keep the image's alpha channel; write PNG/WEBP/TIFF instead "
                         "(--format png)")
    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    with atomic_path(path, overwrite=overwrite) as tmp:
        extra = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        image.save(tmp, format=fmt, **extra)
    return path


def read_image(path: str | Path) -> torch.Tensor:
    """Read an image file as float ``[3, H, W]`` in ``[-1, 1]`` (RGB); unreadable files name themselves."""
    try:
        with Image.open(path) as im:
            array = np.array(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return uint8_to_images(torch.from_numpy(array).permute(2, 0, 1))


def write_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write a float ``[3, H, W]`` image in ``[-1, 1]`` to ``path`` (format from the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = images_to_uint8(image).permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)
    return path
