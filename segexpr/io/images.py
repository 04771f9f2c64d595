"""Image files in and out: float ``[3, H, W]`` tensors in ``[-1, 1]``."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "list_images", "read_image", "write_image"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


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
