"""CelebAMask-HQ, read in its original release layout.

Expected tree (the release as unpacked)::

    root/
      CelebA-HQ-img/{k}.jpg                                   1024 px images, k = 0..29999
      CelebAMask-HQ-mask-anno/{k // 2000}/{k:05d}_{part}.png  512 px, one white-on-black PNG per PRESENT part
      CelebA-HQ-to-CelebA-mapping.txt                         "idx orig_idx orig_file" (for the split)
      CelebAMask-HQ-attribute-anno.txt                        (not used)

* **Masks.** The 18 part files are binarised with ``convert('L') > 127`` (they are often RGB) and painted in
  :data:`~segexpr.labels.CELEBAMASK_HQ_PARTS` order (later parts win) into a 19-class order-A map. A
  missing part file means the part is absent; an image without any part file is an error.
* **Cache.** Merging 18 PNGs per image is slow, so each merged mask is written once (on first use, by whichever
  DataLoader worker needs it) as an 8-bit PNG under ``cache_dir`` (default ``$SEGEXPR_CACHE/celebamask_hq/<hash
  of the absolute root>``, with ``$SEGEXPR_CACHE`` defaulting to ``~/.cache/segexpr``; the dataset root may
  be read-only). The file name carries a hash of the image's part files' (name, size, mtime), so changing,
  adding or deleting a part file invalidates exactly that image's cache entry. Writes are atomic
  (temporary file + ``os.replace``), so concurrent workers or DDP ranks are safe.
* **Images** are resized to the mask resolution (1024 -> 512) before the shared transform.
* **Split.** ``CelebA-HQ-to-CelebA-mapping.txt`` joined with CelebA's partition thresholds (``orig_idx <
  162770`` train, ``< 182637`` val, else test) gives 24183 / 2993 / 2824 images. ``list_file`` overrides it
  (a file of image ids, one per line, or a ``{split: file}`` mapping).
* **Label order.** Masks are order A (face-parsing.PyTorch); ``label_order="B"`` emits the official order B
  (conversion after augmentation, so flips still swap left/right correctly). :func:`to_order_b` /
  :func:`to_order_a` convert numpy arrays and tensors.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from .base import FaceDataModule, IndexedFaceDataset
from segexpr.labels import A_TO_B, B_TO_A, CELEBAMASK_HQ_PARTS, NUM_CLASSES
from .transforms import build_transforms, check_augment, split_transforms
from .validation import (
    CorruptImageError,
    ProblemCollector,
    VerifyLevel,
    check_images,
    load_rgb,
)

logger = logging.getLogger("segexpr.data")

IMAGE_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
#: CelebA's official partition: orig_idx < 162770 train, < 182637 val, else test (0-based orig_idx).
CELEBA_SPLIT_THRESHOLDS: tuple[int, int] = (162770, 182637)
_PART_RE = re.compile(r"^(\d+)_([a-z_]+)\.png$")
_PART_INDEX = {name: i + 1 for i, name in enumerate(CELEBAMASK_HQ_PARTS)}  # part -> order-A class


# ------------------------------------------------------------------------------------------ label orders
def _remap(mask: Any, table: np.ndarray, what: str) -> Any:
    if isinstance(mask, torch.Tensor):
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"{what}: mask must be an integer tensor, got {mask.dtype}")
        if mask.numel() and (int(mask.min()) < 0 or int(mask.max()) >= NUM_CLASSES):
            raise ValueError(f"{what}: class ids must be in [0, {NUM_CLASSES}), got [{int(mask.min())}, {int(mask.max())}]")
        return torch.as_tensor(table, device=mask.device)[mask.long()].to(mask.dtype)
    arr = np.asarray(mask)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{what}: mask must be an integer array, got {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= NUM_CLASSES):
        raise ValueError(f"{what}: class ids must be in [0, {NUM_CLASSES}), got [{int(arr.min())}, {int(arr.max())}]")
    return table[arr].astype(arr.dtype)


def to_order_b(mask: Any) -> Any:
    """Order-A class map (numpy or torch, any integer dtype/shape) -> order B (official CelebAMask-HQ)."""
    return _remap(mask, A_TO_B, "to_order_b")


def to_order_a(mask: Any) -> Any:
    """Order-B class map (numpy or torch, any integer dtype/shape) -> order A (face-parsing.PyTorch)."""
    return _remap(mask, B_TO_A, "to_order_a")


# ------------------------------------------------------------------------------------------ masks
def merge_parts(parts: Mapping[str, str | os.PathLike]) -> np.ndarray:
    """Merge per-part mask files into one order-A class map.

    Args:
        parts: ``{part name: png path}`` for the parts present (names from ``CELEBAMASK_HQ_PARTS``).

    Returns:
        uint8 ``[H, W]`` with values in ``[0, 19)``, parts painted in ``CELEBAMASK_HQ_PARTS`` order (later
        wins). Raises :class:`CorruptImageError` naming an unreadable file, ``ValueError`` on size mismatch.
    """
    mask: np.ndarray | None = None
    for name in CELEBAMASK_HQ_PARTS:  # painting order, later parts win
        if name not in parts:
            continue
        path = parts[name]
        try:
            with Image.open(path) as im:
                part = np.asarray(im.convert("L")) > 127  # parts are often RGB; binarise luminance
        except Exception as exc:
            raise CorruptImageError(f"cannot decode mask part {path}: {type(exc).__name__}: {exc}") from exc
        if mask is None:
            mask = np.zeros(part.shape, np.uint8)
        elif part.shape != mask.shape:
            raise ValueError(f"mask part {path} has size {part.shape[::-1]}, other parts {mask.shape[::-1]}")
        mask[part] = _PART_INDEX[name]
    if mask is None:
        raise ValueError("merge_parts needs at least one part file")
    return mask


def default_cache_dir(root: str | os.PathLike) -> Path:
    """``$SEGEXPR_CACHE/celebamask_hq/<sha1(abs root)[:12]>`` (``$SEGEXPR_CACHE`` default ``~/.cache/segexpr``)."""
    base = Path(os.environ.get("SEGEXPR_CACHE", Path.home() / ".cache" / "segexpr"))
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return base / "celebamask_hq" / key


def _signature(stats: Sequence[tuple[str, int, int]]) -> str:
    """Hash of (part, size, mtime_ns) of an image's part files: the cache file's validity key."""
    return hashlib.sha1(repr(sorted(stats)).encode()).hexdigest()[:16]


def scan_parts(mask_root: Path, problems: ProblemCollector | None = None) -> dict[int, dict[str, tuple[Path, int, int]]]:
    """Index ``CelebAMask-HQ-mask-anno``: ``{k: {part: (path, size, mtime_ns)}}`` from one directory walk.

    Unknown part names are reported to ``problems`` (they would otherwise be silently ignored).
    """
    out: dict[int, dict[str, tuple[Path, int, int]]] = {}
    for dirpath, _dirnames, filenames in os.walk(mask_root):
        for fn in filenames:
            m = _PART_RE.match(fn)
            if not m:
                continue
            k, part = int(m.group(1)), m.group(2)
            path = Path(dirpath) / fn
            if part not in _PART_INDEX:
                if problems is not None:
                    problems.add(path, f"unknown part name {part!r} (expected one of {CELEBAMASK_HQ_PARTS})", item=k)
                continue
            st = path.stat()
            out.setdefault(k, {})[part] = (path, st.st_size, st.st_mtime_ns)
    return out


# ------------------------------------------------------------------------------------------ splits
def celeba_split(orig_idx: int, thresholds: tuple[int, int] = CELEBA_SPLIT_THRESHOLDS) -> str:
    """CelebA partition of a 0-based CelebA index: ``"train"``, ``"val"`` or ``"test"``."""
    return "train" if orig_idx < thresholds[0] else "val" if orig_idx < thresholds[1] else "test"


def read_mapping(path: str | os.PathLike, problems: ProblemCollector) -> dict[int, int]:
    """Parse ``CelebA-HQ-to-CelebA-mapping.txt`` (whitespace-separated ``idx orig_idx orig_file``, header
    optional) into ``{idx: orig_idx}``; malformed lines go to ``problems`` with their line numbers."""
    mapping: dict[int, int] = {}
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if line_no == 1 and fields[0] == "idx":
                continue
            if len(fields) < 2:
                problems.add(path, f"truncated line: expected 'idx orig_idx orig_file', got {line.strip()!r}",
                             line_no, item=("line", line_no))
                continue
            try:
                idx, orig = int(fields[0]), int(fields[1])
            except ValueError:
                problems.add(path, f"non-numeric idx/orig_idx in {line.strip()!r}", line_no, item=("line", line_no))
                continue
            if idx in mapping:
                problems.add(path, f"duplicate idx {idx}", line_no, item=idx)
                continue
            mapping[idx] = orig
    return mapping


def split_ids(mapping: Mapping[int, int], thresholds: tuple[int, int] = CELEBA_SPLIT_THRESHOLDS) -> dict[str, list[int]]:
    """``{"train", "val", "test"}: sorted CelebA-HQ ids`` from ``{idx: orig_idx}`` (24183/2993/2824 on the
    real mapping file)."""
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for idx in sorted(mapping):
        out[celeba_split(mapping[idx], thresholds)].append(idx)
    return out


def read_list_file(path: str | os.PathLike, problems: ProblemCollector) -> list[int]:
    """Image ids, one per line (``123``, ``123.jpg`` or ``CelebA-HQ-img/123.jpg``; ``#`` comments)."""
    ids: list[int] = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            stem = Path(text.split()[0]).stem
            try:
                ids.append(int(stem))
            except ValueError:
                problems.add(path, f"not an image id: {text!r}", line_no, item=("line", line_no))
    return ids


# ------------------------------------------------------------------------------------------ dataset
class CelebAMaskHQ(IndexedFaceDataset):
    """CelebAMask-HQ images with merged 19-class parsing masks.

    Args:
        root: the unpacked release (see module docstring).
        split: ``"train"``, ``"val"``, ``"test"`` (CelebA partition via the mapping file) or ``"all"``.
        transform: ``FaceTransform``-like callable ``(numpy sample, seed) -> tensors``; default: eval resize
            to ``image_size``.
        image_size: output side used by the default transform.
        label_order: ``"A"`` (default, segexpr's internal order) or ``"B"`` (official order).
        list_file: ids file overriding the split (str), or ``{split: file}``.
        cache_dir: where merged masks go (default :func:`default_cache_dir`); ``cache=False`` disables it.
        skip_invalid: skip problem images (count logged) instead of raising one error listing all problems.
        verify: image check level, see :mod:`segexpr.data.validation` (``"header"``: ~0.1 ms/file).
        thresholds: CelebA partition thresholds.
        seed: base seed of the per-item augmentation.

    Items: ``image`` float32 ``[3, S, S]`` in ``[-1, 1]``, ``mask`` int64 ``[S, S]`` (order ``label_order``).
    """

    name = "CelebAMaskHQ"

    def __init__(
        self,
        root: str | os.PathLike,
        split: Literal["train", "val", "test", "all"] = "train",
        transform: Callable | None = None,
        image_size: int = 512,
        label_order: Literal["A", "B"] = "A",
        list_file: str | os.PathLike | Mapping[str, str] | None = None,
        cache_dir: str | os.PathLike | None = None,
        cache: bool = True,
        skip_invalid: bool = False,
        verify: VerifyLevel = "header",
        thresholds: tuple[int, int] = CELEBA_SPLIT_THRESHOLDS,
        seed: int = 0,
    ) -> None:
        super().__init__(transform if transform is not None else build_transforms(image_size, train=False), seed)
        if label_order not in ("A", "B"):
            raise ValueError(f"label_order must be 'A' or 'B', got {label_order!r}")
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be train/val/test/all, got {split!r}")
        self.root = Path(root)
        self.split = split
        self.label_order = label_order
        self.name = f"CelebAMaskHQ({split})"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(self.root)
        self.cache = cache
        problems = ProblemCollector(self.name)
        if not (self.root / IMAGE_DIR).is_dir():
            problems.add(self.root / IMAGE_DIR, "image folder not found: is root the unpacked CelebAMask-HQ?")
        if not (self.root / MASK_DIR).is_dir():
            problems.add(self.root / MASK_DIR, "mask folder not found: is root the unpacked CelebAMask-HQ?")
        if problems.fatal():
            problems.finish(False)

        ids = self._select_ids(list_file, thresholds, problems)
        parts = scan_parts(self.root / MASK_DIR, problems)
        if self.cache:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            cached = set(os.listdir(self.cache_dir))
        else:
            cached = set()
        image_paths = [self.root / IMAGE_DIR / f"{k}.jpg" for k in ids]
        to_verify: list[tuple[int, Path]] = []
        self._parts: list[dict[str, Path]] = []
        self._cache_names: list[str] = []
        for k, img in zip(ids, image_paths):
            stats = parts.get(k, {})
            if not stats:
                problems.add(self.root / MASK_DIR / str(k // 2000) / f"{k:05d}_*.png",
                             f"no mask part files for image {k}", item=k)
            sig = _signature([(p, s, t) for p, (_, s, t) in stats.items()])
            cache_name = f"{k}_{sig}.png"
            if cache_name not in cached:  # only uncached masks need their part files checked
                to_verify.extend((k, path) for path, _, _ in stats.values())
            self._parts.append({p: path for p, (path, _, _) in stats.items()})
            self._cache_names.append(cache_name)
        # one pass over images + uncached part files; every problem is reported, not just the first
        results = check_images(image_paths + [p for _, p in to_verify], verify)
        for k, img, (msg, _size) in zip(ids, image_paths, results[: len(ids)]):
            if msg:
                problems.add(img, msg, item=k)
        for (k, path), (msg, _size) in zip(to_verify, results[len(ids):]):
            if msg:
                problems.add(path, f"mask part: {msg}", item=k)
        bad = problems.finish(skip_invalid, len(ids), "images")
        keep = [i for i, k in enumerate(ids) if k not in bad]
        self.ids = [str(ids[i]) for i in keep]
        self._keys = [ids[i] for i in keep]
        self._parts = [self._parts[i] for i in keep]
        self._cache_names = [self._cache_names[i] for i in keep]
        problems.require_nonempty(len(self.ids), f"split={split!r}, root={self.root}")
        if self.cache:
            self._remove_stale(cached)

    def _select_ids(self, list_file: Any, thresholds: tuple[int, int], problems: ProblemCollector) -> list[int]:
        if isinstance(list_file, Mapping):
            if self.split not in list_file:
                problems.add(str(dict(list_file)), f"list_file has no entry for split {self.split!r}")
                problems.finish(False)
            list_file = list_file[self.split]
        if list_file is not None:
            ids = read_list_file(list_file, problems)
        elif self.split == "all":
            ids = sorted(int(p.stem) for p in (self.root / IMAGE_DIR).glob("*.jpg") if p.stem.isdigit())
        else:
            mapping_path = self.root / MAPPING_FILE
            if not mapping_path.is_file():
                problems.add(mapping_path, "mapping file not found (needed for the train/val/test split); "
                                           "pass list_file=... or split='all'")
                problems.finish(False)
            ids = split_ids(read_mapping(mapping_path, problems), thresholds)[self.split]
        return ids

    def _remove_stale(self, cached: set[str]) -> None:
        """Delete cache files of this split's images whose part files changed (their hash differs)."""
        current = set(self._cache_names)
        keys = set(self.ids)
        for name in cached:
            stem = name.split("_", 1)[0]
            if name.endswith(".png") and stem in keys and name not in current:
                try:
                    os.remove(self.cache_dir / name)
                except FileNotFoundError:  # another worker/rank removed it first
                    pass

    def cache_path(self, index: int) -> Path:
        """Where item ``index``'s merged mask is cached."""
        return self.cache_dir / self._cache_names[index]

    def merged_mask(self, index: int) -> np.ndarray:
        """Order-A uint8 ``[h, w]`` mask of item ``index`` at mask resolution, from the cache or merged now."""
        path = self.cache_path(index)
        if self.cache:
            try:
                with Image.open(path) as im:
                    return np.asarray(im, dtype=np.uint8).copy()
            except FileNotFoundError:
                pass
        mask = merge_parts(self._parts[index])
        if self.cache:
            _atomic_write_png(mask, path)
        return mask

    def load(self, index: int) -> dict[str, Any]:
        mask = self.merged_mask(index)
        image = load_rgb(self.root / IMAGE_DIR / f"{self.ids[index]}.jpg")
        if image.size != mask.shape[::-1]:
            image = image.resize(mask.shape[::-1], Image.Resampling.LANCZOS)  # 1024 -> 512, the mask size
        return {"image": np.asarray(image), "mask": mask}

    def __getitem__(self, index: int) -> dict[str, Any]:
        out = super().__getitem__(index)
        if self.label_order == "B":  # after augmentation: the flip's l/r swap is defined in order A
            out["mask"] = to_order_b(out["mask"])
        return out


def _atomic_write_png(mask: np.ndarray, path: Path) -> None:
    """Write ``mask`` as an 8-bit PNG via a temp file in the same folder + ``os.replace`` (atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(mask, mode="L").save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ------------------------------------------------------------------------------------------ datamodule
class CelebAMaskHQDataModule(FaceDataModule):
    """Lightning DataModule over :class:`CelebAMaskHQ`.

    Args:
        root: the unpacked CelebAMask-HQ release.
        image_size: output side ``S`` (default 512, the mask resolution).
        label_order: ``"A"`` or ``"B"`` masks.
        list_file: optional ids file (str) or ``{split: file}`` overriding the CelebA partition.
        cache_dir: merged-mask cache (default ``$SEGEXPR_CACHE/celebamask_hq/<root hash>``).
        skip_invalid: skip problem images (logged) instead of raising.
        verify: ``"header"`` / ``"full"`` / ``"none"`` image checks.
        predict_split: which split ``predict`` uses (default ``"test"``).
        aus: optional AU annotations (``.pkl``, OpenFace CSV dir, or mapping) attached by image id.
        augment: train-time augmentation: ``true`` flip (with l/r swaps) + small affine + colour jitter,
            ``"flip"`` flips only (StarGAN's and GANimation's), ``false`` none.
        batch_size, num_workers, pin_memory, seed, references: see :class:`~segexpr.data.base.FaceDataModule`.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 512,
        label_order: Literal["A", "B"] = "A",
        list_file: str | dict[str, str] | None = None,
        cache_dir: str | None = None,
        skip_invalid: bool = False,
        verify: VerifyLevel = "header",
        predict_split: str = "test",
        aus: str | None = None,
        augment: bool | Literal["flip"] = True,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        references: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, seed=seed,
                         image_size=image_size, references=references)
        self.save_hyperparameters()
        self.root = root
        self.label_order = label_order
        self.list_file = list_file
        self.cache_dir = cache_dir
        self.skip_invalid = skip_invalid
        self.verify = verify
        self.predict_split = predict_split
        self.aus = aus
        self.augment = check_augment(augment)

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        split = self.predict_split if split == "predict" else split
        ds = CelebAMaskHQ(
            self.root, split=split, transform=split_transforms(self.image_size, split, self.augment),
            label_order=self.label_order, list_file=self.list_file, cache_dir=self.cache_dir,
            skip_invalid=self.skip_invalid, verify=self.verify, seed=self.seed)
        return self.attach_aus(ds, self.aus, self.skip_invalid)
