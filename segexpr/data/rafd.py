"""RaFD (Radboud Faces Database), read in its release layout or StarGAN's folder layout.

**Release layout**: all images in one folder (any nesting), named
``Rafd{angle}_{id}_{group}_{gender}_{expression}_{gaze}.jpg``, e.g. ``Rafd090_01_Caucasian_female_angry_frontal.jpg``:
angle ``000 045 090 135 180`` (``090`` frontal), subject id (2 digits, with gaps), group ``Caucasian Moroccan
Kid``, gender ``male female``, expression ``angry contemptuous disgusted fearful happy neutral sad surprised``,
gaze ``frontal left right``. :func:`parse_rafd_name` returns every field.

**StarGAN layout**: ``root/train/<expression>/*.jpg`` (and ``root/test/<expression>/``, optionally
``root/val/<expression>/``); folder names are RaFD words or segexpr names (``anger`` ...).

**Splits.** RaFD has no official split. segexpr splits **by subject, never by image**: the sorted subject ids
are shuffled with ``seed`` and ``round(test_fraction * n)`` subjects (at least 1 when the fraction is > 0)
go to test, ``round(val_fraction * n)`` to val, the rest to train. In the StarGAN layout the same subject
split is used over all images when every file name is a RaFD name (the train/test folders are then ignored);
otherwise the subjects are unknown and the split is **per folder**: ``train/`` -> train, ``test/`` -> test,
``val/`` -> val (``test/`` doubles as val when there is no ``val/``). Subject-disjointness is then up to
whoever made the folders.

**Samples.** ``image`` float32 ``[3, S, S]`` in ``[-1, 1]``; ``expression`` int64 in
:data:`~segexpr.labels.EXPRESSIONS` order (angry->anger, contemptuous->contempt, disgusted->disgust,
fearful->fear, happy, neutral, sad, surprised->surprise); ``identity`` int64 (the subject id; -1 when unknown).

**Crop.** RaFD photos are 681x1024 portraits; ``crop="center"`` (default) takes the centred square of side
``min(w, h)``, ``crop=(left, top, width, height)`` a fixed box, ``crop="none"`` the whole photo (the shared
transform then stretches it to ``S x S``).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import torch

from .base import FaceDataModule, IndexedFaceDataset
from segexpr.labels import EXPRESSIONS
from .transforms import build_transforms, check_augment, split_transforms
from .validation import (
    DatasetValidationError,
    Problem,
    ProblemCollector,
    VerifyLevel,
    check_images,
    load_rgb,
)

#: RaFD expression word -> segexpr expression name (EXPRESSIONS order).
RAFD_EXPRESSIONS: dict[str, str] = {
    "angry": "anger", "contemptuous": "contempt", "disgusted": "disgust", "fearful": "fear",
    "happy": "happy", "neutral": "neutral", "sad": "sad", "surprised": "surprise",
}
RAFD_ANGLES: tuple[str, ...] = ("000", "045", "090", "135", "180")
RAFD_GROUPS: tuple[str, ...] = ("Caucasian", "Moroccan", "Kid")
RAFD_GENDERS: tuple[str, ...] = ("male", "female")
RAFD_GAZES: tuple[str, ...] = ("frontal", "left", "right")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_NAME_RE = re.compile(
    r"^Rafd(?P<angle>\d{3})_(?P<subject>\d+)_(?P<group>[A-Za-z]+)_(?P<gender>[A-Za-z]+)_"
    r"(?P<expression>[A-Za-z]+)_(?P<gaze>[A-Za-z]+)\.(?:jpe?g|png)$", re.IGNORECASE)


@dataclass(frozen=True)
class RafdName:
    """The fields of a RaFD file name (normalised: group capitalised, the rest lower case)."""

    angle: str
    subject: int
    group: str
    gender: str
    expression: str  # the RaFD word, e.g. "angry"
    gaze: str

    @property
    def label(self) -> int:
        """Expression index in :data:`~segexpr.labels.EXPRESSIONS` order."""
        return EXPRESSIONS.index(RAFD_EXPRESSIONS[self.expression])


def parse_rafd_name(name: str) -> RafdName:
    """Parse ``Rafd090_01_Caucasian_female_angry_frontal.jpg`` (a path is fine too).

    Raises ``ValueError`` saying what is wrong: not a RaFD name, or an unknown angle/group/gender/expression/gaze.
    """
    base = os.path.basename(name)
    m = _NAME_RE.match(base)
    if not m:
        raise ValueError(f"not a RaFD file name (Rafd<angle>_<id>_<group>_<gender>_<expression>_<gaze>.jpg): {base!r}")
    f = m.groupdict()
    group = f["group"].capitalize()
    gender, expression, gaze = f["gender"].lower(), f["expression"].lower(), f["gaze"].lower()
    errors = []
    if f["angle"] not in RAFD_ANGLES:
        errors.append(f"unknown angle {f['angle']!r} (expected one of {RAFD_ANGLES})")
    if group not in RAFD_GROUPS:
        errors.append(f"unknown group {f['group']!r} (expected one of {RAFD_GROUPS})")
    if gender not in RAFD_GENDERS:
        errors.append(f"unknown gender {f['gender']!r} (expected one of {RAFD_GENDERS})")
    if expression not in RAFD_EXPRESSIONS:
        errors.append(f"unknown expression word {f['expression']!r} (expected one of {tuple(RAFD_EXPRESSIONS)})")
    if gaze not in RAFD_GAZES:
        errors.append(f"unknown gaze {f['gaze']!r} (expected one of {RAFD_GAZES})")
    if errors:
        raise ValueError(f"{base}: " + "; ".join(errors))
    return RafdName(f["angle"], int(f["subject"]), group, gender, expression, gaze)


def expression_from_word(word: str) -> int:
    """EXPRESSIONS index of a RaFD word (``angry``) or a segexpr name (``anger``); ``ValueError`` otherwise."""
    w = word.lower()
    name = RAFD_EXPRESSIONS.get(w, w)
    if name not in EXPRESSIONS:
        raise ValueError(f"unknown expression {word!r} (expected a RaFD word {tuple(RAFD_EXPRESSIONS)} or one of {EXPRESSIONS})")
    return EXPRESSIONS.index(name)


def subject_split(subjects: Sequence[int], val_fraction: float = 0.1, test_fraction: float = 0.1,
                  seed: int = 0) -> dict[str, set[int]]:
    """Seeded subject-disjoint split: ``{"train", "val", "test"}: set of subject ids``.

    ``round(fraction * n)`` subjects (at least 1 for a fraction > 0) go to test, then val; the rest train.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= val_fraction, test_fraction and their sum < 1, got {val_fraction}, {test_fraction}")
    subs = sorted(set(int(s) for s in subjects))
    order = [subs[i] for i in np.random.default_rng(seed).permutation(len(subs))]
    n_test = max(1, round(test_fraction * len(subs))) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * len(subs))) if val_fraction > 0 else 0
    if len(subs) and n_test + n_val >= len(subs):
        raise ValueError(f"{len(subs)} subjects are too few for val_fraction={val_fraction}, "
                         f"test_fraction={test_fraction} (train would be empty)")
    return {"test": set(order[:n_test]), "val": set(order[n_test:n_test + n_val]),
            "train": set(order[n_test + n_val:])}


@dataclass
class RafdRecord:
    path: Path
    image_id: str
    expression: int
    subject: int  # -1 when unknown (StarGAN layout without RaFD names)
    folder_split: str | None  # train/val/test folder in StarGAN's layout


def _stargan_split_dirs(root: Path) -> dict[str, Path]:
    return {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}


# ------------------------------------------------------------------------------------------ dataset
class RaFD(IndexedFaceDataset):
    """RaFD images with expression and subject labels (see module docstring).

    Args:
        root: the RaFD folder (release layout) or StarGAN's folder (``train/<expression>/``).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        transform: ``(numpy sample, seed) -> tensors``; default eval resize to ``image_size``.
        image_size: output side of the default transform.
        angles: camera angles kept (``"090"`` frontal by default).
        gazes: gaze directions kept.
        val_fraction, test_fraction, split_seed: subject split (see :func:`subject_split`).
        crop: ``"center"``, ``"none"`` or ``(left, top, width, height)``.
        skip_invalid, verify: bad-input handling (see :mod:`segexpr.data.validation`).
        seed: base seed of per-item augmentation.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: Literal["train", "val", "test", "all"] = "train",
        transform: Callable | None = None,
        image_size: int = 128,
        angles: Sequence[str] = ("090",),
        gazes: Sequence[str] = RAFD_GAZES,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        crop: Literal["center", "none"] | Sequence[int] = "center",
        skip_invalid: bool = False,
        verify: VerifyLevel = "header",
        seed: int = 0,
    ) -> None:
        super().__init__(transform if transform is not None else build_transforms(image_size, train=False), seed)
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be train/val/test/all, got {split!r}")
        bad_angles = [a for a in angles if a not in RAFD_ANGLES]
        bad_gazes = [g for g in gazes if g not in RAFD_GAZES]
        if bad_angles or bad_gazes:
            raise ValueError(f"unknown angles {bad_angles} / gazes {bad_gazes}; expected {RAFD_ANGLES} / {RAFD_GAZES}")
        if not (crop in ("center", "none") or (not isinstance(crop, str) and len(crop) == 4)):
            raise ValueError(f"crop must be 'center', 'none' or (left, top, width, height), got {crop!r}")
        self.root, self.split, self.crop = Path(root), split, crop
        self.name = f"RaFD({split})"
        if not self.root.is_dir():
            raise DatasetValidationError(self.name, [Problem(str(self.root), "root folder not found")])
        problems = ProblemCollector(self.name)
        records = self._index(set(angles), set(gazes), problems)
        self.layout = "stargan" if _stargan_split_dirs(self.root) else "release"
        self.by_subject = all(r.subject >= 0 for r in records)
        if self.by_subject:  # split before skipping bad files, so skipping never moves a subject
            self.subjects = subject_split([r.subject for r in records], val_fraction, test_fraction, split_seed)
        if split != "all":
            if self.by_subject:
                records = [r for r in records if r.subject in self.subjects[split]]
            else:  # StarGAN folders with non-RaFD names: the folders are the split
                want = split if split != "val" or "val" in _stargan_split_dirs(self.root) else "test"
                records = [r for r in records if r.folder_split == want]
        # one pass over every kept image; all problems are reported together
        for r, (msg, _size) in zip(records, check_images([r.path for r in records], verify)):
            if msg:
                problems.add(r.path, msg, item=str(r.path))
        bad = problems.finish(skip_invalid, len({str(r.path) for r in records} | problems.bad_items), "images")
        records = [r for r in records if str(r.path) not in bad]
        self.records = sorted(records, key=lambda r: str(r.path))
        self.ids = [r.image_id for r in self.records]
        problems.require_nonempty(len(self.records), f"split={split!r}, angles={tuple(angles)}, "
                                                     f"gazes={tuple(gazes)}, root={self.root}")

    def _index(self, angles: set[str], gazes: set[str], problems: ProblemCollector) -> list[RafdRecord]:
        dirs = _stargan_split_dirs(self.root)
        files: list[tuple[Path, str | None, str | None]] = []  # (path, folder split, folder expression)
        if dirs:
            for split_name, d in dirs.items():
                for sub in sorted(p for p in d.iterdir() if p.is_dir()):
                    files += [(p, split_name, sub.name) for p in sorted(sub.iterdir())
                              if p.suffix.lower() in IMAGE_SUFFIXES]
        else:
            files = [(Path(dp) / fn, None, None) for dp, _, fns in os.walk(self.root) for fn in sorted(fns)
                     if Path(fn).suffix.lower() in IMAGE_SUFFIXES]
        named = [f for f in files if _NAME_RE.match(f[0].name)]
        use_names = not dirs or len(named) == len(files)
        records = []
        for path, split_name, folder in files:
            key = str(path)
            folder_label = None
            if folder is not None:
                try:
                    folder_label = expression_from_word(folder)
                except ValueError as exc:
                    problems.add(path.parent, str(exc), item=key)
                    continue
            if use_names:
                try:
                    info = parse_rafd_name(path.name)
                except ValueError as exc:
                    problems.add(path, str(exc), item=key)
                    continue
                if info.angle not in angles or info.gaze not in gazes:
                    continue  # documented filters, not problems
                if folder_label is not None and folder_label != info.label:
                    problems.add(path, f"file name says {info.expression!r} but it is in folder {folder!r}", item=key)
                    continue
                records.append(RafdRecord(path, path.stem, info.label, info.subject, split_name))
            else:
                records.append(RafdRecord(path, path.stem, folder_label, -1, split_name))
        return records

    @property
    def targets(self) -> list[int]:
        return [r.expression for r in self.records]

    def identity_ids(self) -> list[int]:
        """Per-index subject id (``-1`` when the layout has none): references are drawn from other subjects."""
        return [r.subject for r in self.records]

    @property
    def subjects_present(self) -> set[int]:
        """Subject ids in this split (empty set of known subjects when the layout has none)."""
        return {r.subject for r in self.records}

    def load(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        image = load_rgb(r.path)
        w, h = image.size
        if self.crop == "center":
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            image = image.crop((left, top, left + side, top + side))
        elif self.crop != "none":
            left, top, cw, ch = (int(v) for v in self.crop)
            image = image.crop((left, top, left + cw, top + ch))
        return {"image": np.asarray(image), "expression": np.int64(r.expression), "identity": np.int64(r.subject)}


# ------------------------------------------------------------------------------------------ datamodule
class RaFDDataModule(FaceDataModule):
    """Lightning DataModule over :class:`RaFD` with a seeded subject-disjoint split.

    Args:
        root: RaFD folder (release or StarGAN layout).
        image_size: output side ``S``.
        angles, gazes: filters (frontal camera, all gazes by default).
        val_fraction, test_fraction: fractions of *subjects* in val / test.
        crop: see :class:`RaFD`.
        skip_invalid, verify: bad-input handling.
        aus: optional AU annotations (``.pkl``, OpenFace CSV dir, or mapping) attached by image id (file stem).
        augment: train-time augmentation: ``true`` flip (with l/r swaps) + small affine + colour jitter,
            ``"flip"`` flips only (StarGAN's and GANimation's), ``false`` none.
        batch_size, num_workers, pin_memory, seed, references: see :class:`~segexpr.data.base.FaceDataModule`; ``seed``
            also seeds the subject split.
    """

    def __init__(
        self,
        root: str,
        image_size: int = 128,
        angles: tuple[str, ...] = ("090",),
        gazes: tuple[str, ...] = RAFD_GAZES,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        crop: str | tuple[int, int, int, int] = "center",
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
        self.root, self.angles, self.gazes = root, tuple(angles), tuple(gazes)
        self.val_fraction, self.test_fraction, self.crop = val_fraction, test_fraction, crop
        self.skip_invalid, self.verify, self.aus, self.augment = skip_invalid, verify, aus, check_augment(augment)

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        split = "test" if split == "predict" else split
        ds = RaFD(self.root, split=split,
                  transform=split_transforms(self.image_size, split, self.augment),
                  angles=self.angles, gazes=self.gazes, val_fraction=self.val_fraction,
                  test_fraction=self.test_fraction, split_seed=self.seed, crop=self.crop,
                  skip_invalid=self.skip_invalid, verify=self.verify, seed=self.seed)
        return self.attach_aus(ds, self.aus, self.skip_invalid)
