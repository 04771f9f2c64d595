"""AffectNet, read in either of its release layouts (auto-detected).

**Original CSV release** (11 codes)::

    root/
      Manually_Annotated_file_lists/training.csv     (the CSVs may also sit directly in root, or deeper:
      Manually_Annotated_file_lists/validation.csv    they are located by name, not by a fixed path)
      Manually_Annotated_Images/<subDirectory_filePath>

Columns ``subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,
arousal`` (header row optional; with a header, columns are matched by name). ``facial_landmarks`` is 136
``;``-separated floats ``x0;y0;x1;y1;...`` in full-image pixels. Codes 0-7 are the expressions of
:data:`~segexpr.labels.EXPRESSIONS`; codes 8 (None), 9 (Uncertain), 10 (Non-Face) are dropped (their
count is logged), and 7 (Contempt) too with ``classes=7``.

**8-class ``.npy`` release**::

    root/{train_set,val_set}/images/<id>.jpg
    root/{train_set,val_set}/annotations/<id>_{exp,val,aro,lnd}.npy   (exp is a numpy string: int(np.load(p)))

Images there are already face crops, so ``crop`` is not applied.

**Splits.** train = ``training.csv`` / ``train_set``; val = ``validation.csv`` / ``val_set``. AffectNet has no
public test set, so **test is the validation set too** (as in the literature); predict uses it as well.

**Samples.** ``image`` float32 ``[3, S, S]`` in ``[-1, 1]``; ``landmarks`` float32 ``[68, 2]`` in output-image
pixel coordinates; ``expression`` int64; ``valence``, ``arousal`` float32 in ``[-1, 1]``, **NaN when missing**
(AffectNet writes -2; mask with ``torch.isnan`` before using them in a loss).

**Face crop** (``crop="box"``): the annotated box is made square around its centre (side = the longer box
side), grown by ``margin`` x side on every side, and clipped to the image (so crops touching the border can
be non-square; the shared transform then resizes to ``S x S``). Landmarks are shifted into crop coordinates.
``crop="none"`` keeps the whole image.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from PIL import Image

from .base import EpochSampler, FaceDataModule, IndexedFaceDataset
from segexpr.labels import AFFECTNET_CODES, NUM_EXPRESSIONS
from .transforms import build_transforms, check_augment, split_transforms
from .validation import (
    DatasetValidationError,
    Problem,
    ProblemCollector,
    VerifyLevel,
    check_images,
    load_rgb,
    safe_join,
)

logger = logging.getLogger("segexpr.data")

COLUMNS: tuple[str, ...] = ("subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                            "facial_landmarks", "expression", "valence", "arousal")
CSV_FILES: dict[str, str] = {"train": "training.csv", "val": "validation.csv", "test": "validation.csv"}
NPY_DIRS: dict[str, str] = {"train": "train_set", "val": "val_set", "test": "val_set"}
IMAGE_DIR_NAME = "Manually_Annotated_Images"
#: AffectNet's marker for a missing valence/arousal value.
MISSING_VA = -2.0


@dataclass
class AffectNetRecord:
    """One annotated face. ``box`` is (x, y, w, h) in image pixels or None (npy release)."""

    path: Path
    image_id: str
    expression: int
    valence: float
    arousal: float
    landmarks: np.ndarray  # float32 [68, 2], full-image pixels
    box: tuple[float, float, float, float] | None
    source: str  # "file:line" for messages
    line: int | None = None


# ------------------------------------------------------------------------------------------ locating
def _find(root: Path, name: str, want_dir: bool, max_depth: int = 4) -> list[Path]:
    """Paths named ``name`` under ``root``, shallowest first. Image folders (``Manually_Annotated_Images``,
    ``images``) and hidden folders are never descended into, so this stays fast on the real release."""
    hits = []
    base_depth = len(root.parts)
    for dirpath, dirnames, filenames in os.walk(root):
        if name in (dirnames if want_dir else filenames):
            hits.append(Path(dirpath) / name)
        if len(Path(dirpath).parts) - base_depth >= max_depth:
            dirnames[:] = []
        dirnames[:] = [d for d in dirnames if d not in (IMAGE_DIR_NAME, "images", "annotations")
                       and not d.startswith(".")]
    return sorted(hits, key=lambda p: (len(p.parts), str(p)))


def locate_csv(root: str | os.PathLike, filename: str) -> Path:
    """Find ``training.csv`` / ``validation.csv``: ``root/Manually_Annotated_file_lists/``, ``root/``, else the
    shallowest match under ``root`` (an error if two equally shallow matches make it ambiguous)."""
    root = Path(root)
    for candidate in (root / "Manually_Annotated_file_lists" / filename, root / filename):
        if candidate.is_file():
            return candidate
    hits = _find(root, filename, want_dir=False)
    if not hits:
        raise DatasetValidationError("AffectNet", [Problem(str(root), f"{filename} not found under the root")],
                                     hint="Point root at the unpacked AffectNet release (the folder holding "
                                          "Manually_Annotated_file_lists/ or the CSVs).")
    if len(hits) > 1 and len(hits[0].parts) == len(hits[1].parts):
        raise DatasetValidationError("AffectNet", [Problem(str(h), f"candidate {filename}") for h in hits],
                                     hint=f"Several {filename} files: point root at the one to use.")
    return hits[0]


def locate_image_dir(root: str | os.PathLike, csv_path: Path | None = None) -> Path:
    """The folder ``subDirectory_filePath`` is relative to: a ``Manually_Annotated_Images`` folder at or under
    ``root`` (or next to the CSV folder), else ``root`` itself."""
    root = Path(root)
    candidates = [root / IMAGE_DIR_NAME]
    if csv_path is not None:
        candidates += [csv_path.parent.parent / IMAGE_DIR_NAME, csv_path.parent / IMAGE_DIR_NAME]
    for c in candidates:
        if c.is_dir():
            return c
    hits = _find(root, IMAGE_DIR_NAME, want_dir=True)
    return hits[0] if hits else root


def detect_release(root: str | os.PathLike) -> Literal["csv", "npy"]:
    """``"csv"`` if a ``training.csv``/``validation.csv`` is found under ``root``, ``"npy"`` if a
    ``train_set``/``val_set`` folder with ``annotations/`` is, else a :class:`DatasetValidationError`."""
    root = Path(root)
    for name in CSV_FILES.values():
        try:
            locate_csv(root, name)
            return "csv"
        except DatasetValidationError:
            pass
    for name in NPY_DIRS.values():
        if any((d / "annotations").is_dir() for d in [root / name, *_find(root, name, want_dir=True)]):
            return "npy"
    raise DatasetValidationError("AffectNet", [Problem(str(root), "neither training.csv/validation.csv nor "
                                                                  "train_set/val_set (npy release) found")])


# ------------------------------------------------------------------------------------------ CSV parsing
def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"not finite: {text!r}")
    return value


def read_affectnet_csv(
    path: str | os.PathLike,
    image_dir: str | os.PathLike,
    problems: ProblemCollector,
    classes: int = 8,
) -> tuple[list[AffectNetRecord], Counter]:
    """Parse an AffectNet CSV (header optional) into records of the kept classes.

    Every malformed row is reported to ``problems`` with its 1-based line number (``item`` = line number):
    truncated rows, non-numeric fields, unknown codes, zero-size boxes, bad landmark counts, valence/arousal
    outside [-1, 1] (other than -2), paths escaping ``image_dir``. Returns ``(records, dropped)`` where
    ``dropped`` counts rows with codes left out by ``classes`` (8-10, and 7 when ``classes=7``).
    """
    path = Path(path)
    records: list[AffectNetRecord] = []
    dropped: Counter = Counter()
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: tolerate a BOM
        reader = csv.reader(f)
        cols = {name: i for i, name in enumerate(COLUMNS)}
        n_fields = len(COLUMNS)
        for line_no, row in enumerate(reader, start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if line_no == 1 and row[0].strip() == COLUMNS[0]:  # header present: match columns by name
                header = [c.strip() for c in row]
                missing = [c for c in COLUMNS if c not in header]
                if missing:
                    problems.add(path, f"header lacks columns {missing}", line_no)
                    return records, dropped
                cols = {name: header.index(name) for name in COLUMNS}
                n_fields = len(header)
                continue
            if len(row) < n_fields:
                problems.add(path, f"truncated row: {len(row)} fields, expected {n_fields}", line_no, item=line_no)
                continue
            rel = row[cols["subDirectory_filePath"]].strip()
            try:
                code = int(row[cols["expression"]])
            except ValueError:
                problems.add(path, f"non-numeric expression {row[cols['expression']]!r}", line_no, item=line_no)
                continue
            if code not in AFFECTNET_CODES:
                problems.add(path, f"unknown expression code {code} (expected 0-10)", line_no, item=line_no)
                continue
            if code >= classes:  # 8-10 are not expressions; 7 too with classes=7
                dropped[AFFECTNET_CODES[code]] += 1
                continue
            bad = []
            try:
                box = tuple(_float(row[cols[c]]) for c in ("face_x", "face_y", "face_width", "face_height"))
            except ValueError as exc:
                bad.append(f"non-numeric face box ({exc})")
                box = None
            if box is not None and (box[2] <= 0 or box[3] <= 0):
                bad.append(f"face box of zero size (w={box[2]:g}, h={box[3]:g})")
            va = []
            for name in ("valence", "arousal"):
                try:
                    v = _float(row[cols[name]])
                except ValueError:
                    bad.append(f"non-numeric {name} {row[cols[name]]!r}")
                    continue
                if v == MISSING_VA:
                    v = float("nan")
                elif not -1.0 <= v <= 1.0:
                    bad.append(f"{name} {v:g} outside [-1, 1] (and not the missing marker -2)")
                va.append(v)
            lm_text = row[cols["facial_landmarks"]].strip()
            try:
                lm = np.array([_float(t) for t in lm_text.split(";") if t.strip()], np.float32)
                if lm.shape != (136,):
                    bad.append(f"facial_landmarks has {lm.size} values, expected 136")
            except ValueError as exc:
                bad.append(f"non-numeric facial_landmarks ({exc})")
                lm = None
            full = safe_join(image_dir, rel)
            if full is None:
                bad.append(f"path {rel!r} escapes the image folder (absolute or '..')")
            if bad:
                for msg in bad:
                    problems.add(path, msg, line_no, item=line_no)
                continue
            records.append(AffectNetRecord(
                path=full, image_id=Path(rel).stem, expression=code, valence=va[0], arousal=va[1],
                landmarks=lm.reshape(68, 2), box=box, source=f"{path}:{line_no}", line=line_no))
    return records, dropped


def read_npy_release(split_dir: str | os.PathLike, problems: ProblemCollector,
                     classes: int = 8) -> tuple[list[AffectNetRecord], Counter]:
    """Index ``train_set``/``val_set`` of the 8-class release: ``images/<id>.jpg`` + ``annotations/<id>_*.npy``.

    Loads the four small ``.npy`` files per image (about 1 min for the 290k training images). Missing or
    unreadable annotations, and annotations whose image is missing, are reported per id.
    """
    split_dir = Path(split_dir)
    img_dir, ann_dir = split_dir / "images", split_dir / "annotations"
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            problems.add(d, "folder not found (8-class release layout: images/ and annotations/)")
    if problems.fatal():
        return [], Counter()
    images = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    ann_ids = {p.name.rsplit("_", 1)[0] for p in ann_dir.glob("*_exp.npy")}
    records: list[AffectNetRecord] = []
    dropped: Counter = Counter()
    for image_id in sorted(set(images) | ann_ids, key=lambda s: (len(s), s)):
        if image_id not in images:
            problems.add(img_dir / f"{image_id}.jpg", "missing image (annotations exist)", item=image_id)
            continue
        values = {}
        bad = []
        for kind in ("exp", "val", "aro", "lnd"):
            p = ann_dir / f"{image_id}_{kind}.npy"
            try:
                values[kind] = np.load(p, allow_pickle=False)
            except FileNotFoundError:
                bad.append((p, "missing annotation file"))
            except Exception as exc:
                bad.append((p, f"unreadable annotation ({type(exc).__name__}: {exc})"))
        if not bad:
            try:
                code = int(values["exp"])  # stored as a numpy string
            except (TypeError, ValueError):
                bad.append((ann_dir / f"{image_id}_exp.npy", f"non-numeric expression {values['exp']!r}"))
            else:
                if code not in AFFECTNET_CODES:
                    bad.append((ann_dir / f"{image_id}_exp.npy", f"unknown expression code {code}"))
                elif code >= classes:
                    dropped[AFFECTNET_CODES[code]] += 1
                    continue
            va = []
            for kind in ("val", "aro"):
                try:
                    v = float(values[kind])
                except (TypeError, ValueError):
                    bad.append((ann_dir / f"{image_id}_{kind}.npy", f"non-numeric value {values[kind]!r}"))
                    continue
                va.append(float("nan") if v == MISSING_VA else v)
            try:
                lm = np.asarray(values["lnd"], np.float32).reshape(68, 2)
            except (TypeError, ValueError):
                bad.append((ann_dir / f"{image_id}_lnd.npy", f"expected 136 landmark values, got {np.shape(values['lnd'])}"))
        if bad:
            for p, msg in bad:
                problems.add(p, msg, item=image_id)
            continue
        records.append(AffectNetRecord(path=images[image_id], image_id=image_id, expression=code, valence=va[0],
                                       arousal=va[1], landmarks=lm, box=None, source=str(images[image_id])))
    return records, dropped


#: Default crop margin of the AffectNet loaders, a fraction of the squared face box's side.
DEFAULT_MARGIN = 0.1


def crop_box(box: tuple[float, float, float, float], image_size: tuple[int, int], margin: float,
             square: bool = True) -> tuple[int, int, int, int]:
    """Integer crop ``(x0, y0, x1, y1)`` around face box ``(x, y, w, h)``: squared (longer side), grown by
    ``margin`` x side on every side, clipped to the ``(width, height)`` image."""
    x, y, w, h = box
    cx, cy = x + w / 2.0, y + h / 2.0
    sw, sh = (max(w, h),) * 2 if square else (w, h)
    sw, sh = sw * (1 + 2 * margin), sh * (1 + 2 * margin)
    width, height = image_size
    x0, y0 = max(0, round(cx - sw / 2)), max(0, round(cy - sh / 2))
    x1, y1 = min(width, round(cx + sw / 2)), min(height, round(cy + sh / 2))
    return x0, y0, x1, y1


# ------------------------------------------------------------------------------------------ dataset
class AffectNet(IndexedFaceDataset):
    """AffectNet faces with expression, valence/arousal and landmarks (see module docstring).

    Args:
        root: the unpacked release (CSV or npy layout; ``release="auto"`` detects it).
        split: ``"train"``, ``"val"`` or ``"test"`` (= val).
        transform: ``(numpy sample, seed) -> tensors``; default eval resize to ``image_size``.
        image_size: output side of the default transform.
        classes: 8 (codes 0-7) or 7 (drops contempt).
        crop: ``"box"`` (face box + margin) or ``"none"``.
        margin: crop margin, a fraction of the (squared) box side.
        release: ``"auto"``, ``"csv"`` or ``"npy"``.
        image_dir: override the folder image paths are relative to (CSV release).
        skip_invalid: skip problem rows (count logged) instead of raising one error listing all of them.
        verify: image check level (``"header"`` reads every image header: ~0.1 ms/file).
        seed: base seed of per-item augmentation.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: Literal["train", "val", "test"] = "train",
        transform: Callable | None = None,
        image_size: int = 128,
        classes: Literal[7, 8] = 8,
        crop: Literal["box", "none"] = "box",
        margin: float = DEFAULT_MARGIN,
        release: Literal["auto", "csv", "npy"] = "auto",
        image_dir: str | os.PathLike | None = None,
        skip_invalid: bool = False,
        verify: VerifyLevel = "header",
        seed: int = 0,
    ) -> None:
        super().__init__(transform if transform is not None else build_transforms(image_size, train=False), seed)
        if split not in CSV_FILES:
            raise ValueError(f"split must be one of {tuple(CSV_FILES)}, got {split!r}")
        if classes not in (7, 8):
            raise ValueError(f"classes must be 7 or 8, got {classes!r}")
        if crop not in ("box", "none"):
            raise ValueError(f"crop must be 'box' or 'none', got {crop!r}")
        if not margin >= 0:
            raise ValueError(f"margin must be >= 0, got {margin!r}")
        self.root, self.split, self.classes, self.crop, self.margin = Path(root), split, classes, crop, margin
        self.name = f"AffectNet({split})"
        self.release = detect_release(self.root) if release == "auto" else release
        problems = ProblemCollector(self.name)
        if self.release == "csv":
            csv_path = locate_csv(self.root, CSV_FILES[split])
            self.image_dir = Path(image_dir) if image_dir is not None else locate_image_dir(self.root, csv_path)
            records, dropped = read_affectnet_csv(csv_path, self.image_dir, problems, classes)
        elif self.release == "npy":
            split_dir = self.root / NPY_DIRS[split]
            if not split_dir.is_dir():
                hits = _find(self.root, NPY_DIRS[split], want_dir=True)
                split_dir = hits[0] if hits else split_dir
            self.image_dir = split_dir / "images"
            records, dropped = read_npy_release(split_dir, problems, classes)
        else:
            raise ValueError(f"release must be 'auto', 'csv' or 'npy', got {release!r}")
        if problems.fatal():
            problems.finish(False)
        if dropped:
            logger.info("%s: left out %d rows with codes outside 0-%d: %s", self.name, sum(dropped.values()),
                        classes - 1, dict(dropped))
        # one pass over the images of the rows that survived parsing; sizes are needed for the box check
        results = check_images([r.path for r in records], verify)
        sizes: list[tuple[int, int] | None] = []
        for r, (msg, size) in zip(records, results):
            item = r.line if r.line is not None else r.image_id
            file, line = (r.source.rsplit(":", 1)[0], r.line) if r.line is not None else (r.path, None)
            if msg:
                problems.add(file, f"{msg}: {r.path}", line, item=item)
            elif size is not None and r.box is not None:
                x, y, w, h = r.box
                if x >= size[0] or y >= size[1] or x + w <= 0 or y + h <= 0:
                    problems.add(file, f"face box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) lies outside the "
                                       f"{size[0]}x{size[1]} image {r.path}", line, item=item)
            sizes.append(size)
        keys = {r.line if r.line is not None else r.image_id for r in records}
        bad = problems.finish(skip_invalid, len(keys | problems.bad_items), "rows")
        keep = [i for i, r in enumerate(records) if (r.line if r.line is not None else r.image_id) not in bad]
        self.records = [records[i] for i in keep]
        self.ids = [r.image_id for r in self.records]
        problems.require_nonempty(len(self.records), f"split={split!r}, classes={classes}, root={self.root}")

    @property
    def targets(self) -> list[int]:
        """Expression code of every item (for class-balanced sampling)."""
        return [r.expression for r in self.records]

    def load(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        image = load_rgb(r.path)
        landmarks = r.landmarks.copy()
        if self.crop == "box" and r.box is not None:
            x0, y0, x1, y1 = crop_box(r.box, image.size, self.margin)
            image = image.crop((x0, y0, x1, y1))
            landmarks -= np.array([x0, y0], np.float32)  # integer offset: exact in any pixel convention
        return {"image": np.asarray(image), "landmarks": landmarks, "expression": np.int64(r.expression),
                "valence": np.float32(r.valence), "arousal": np.float32(r.arousal)}


def class_balanced_weights(targets: list[int], num_classes: int) -> torch.Tensor:
    """Per-item weight 1 / (count of its class): every class is drawn equally often in expectation."""
    counts = np.bincount(np.asarray(targets, np.int64), minlength=num_classes).astype(np.float64)
    return torch.as_tensor(1.0 / counts[np.asarray(targets, np.int64)], dtype=torch.double)


# ------------------------------------------------------------------------------------------ datamodule
class AffectNetDataModule(FaceDataModule):
    """Lightning DataModule over :class:`AffectNet`.

    Args:
        root: the unpacked AffectNet release (either layout).
        image_size: output side ``S``.
        classes: 8 or 7 (drop contempt).
        crop, margin: face crop (see :class:`AffectNet`).
        balanced: class-balanced training draws (``WeightedRandomSampler``-style, with replacement, seeded per
            epoch; works under DDP because Lightning wraps custom samplers in ``DistributedSamplerWrapper``).
        release: ``"auto"``, ``"csv"``, ``"npy"``.
        skip_invalid, verify: bad-input handling (see :mod:`segexpr.data.validation`).
        aus: optional AU annotations (``.pkl``, OpenFace CSV dir, or mapping) attached by image id (file stem).
        augment: train-time augmentation: ``true`` flip (with l/r swaps) + small affine + colour jitter,
            ``"flip"`` flips only (StarGAN's and GANimation's), ``false`` none.
        batch_size, num_workers, pin_memory, seed, references: see :class:`~segexpr.data.base.FaceDataModule`.

    Test (and predict) use the validation set: AffectNet has no public test split.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 128,
        classes: int = 8,
        crop: Literal["box", "none"] = "box",
        margin: float = DEFAULT_MARGIN,
        balanced: bool = False,
        release: Literal["auto", "csv", "npy"] = "auto",
        skip_invalid: bool = False,
        verify: VerifyLevel = "header",
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
        if classes not in (7, 8):
            raise ValueError(f"classes must be 7 or 8, got {classes!r}")
        self.root, self.classes, self.crop, self.margin = root, classes, crop, margin
        self.balanced, self.release, self.skip_invalid, self.verify = balanced, release, skip_invalid, verify
        self.aus, self.augment = aus, check_augment(augment)

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        split = "test" if split == "predict" else split
        ds = AffectNet(self.root, split=split,
                       transform=split_transforms(self.image_size, split, self.augment),
                       classes=self.classes, crop=self.crop, margin=self.margin, release=self.release,
                       skip_invalid=self.skip_invalid, verify=self.verify, seed=self.seed)
        return self.attach_aus(ds, self.aus, self.skip_invalid)

    def train_sampler(self) -> EpochSampler | None:
        """Class-balanced draws with ``balanced=True`` (AffectNet is very imbalanced); else the default shuffle."""
        if not self.balanced:
            return None
        ds = self.dataset("train")
        return EpochSampler(ds, seed=self.seed, weights=class_balanced_weights(ds.targets, NUM_EXPRESSIONS))
