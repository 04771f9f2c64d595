"""Action-unit annotations for real images: OpenFace 2 CSVs and GANimation's ``aus_openface.pkl``.

segexpr's AU vector is float32 ``[17]`` in ``[0, 1]``: the 17 OpenFace intensity columns of
:data:`~segexpr.labels.OPENFACE_AU_COLUMNS` (``AU01_r`` ... ``AU26_r``, ``AU45_r``) divided by 5.
AU28 exists only as a presence column (``AU28_c``) and is not used.

* :func:`read_openface_csv` reads one OpenFace CSV (``FeatureExtraction`` for videos, ``FaceLandmarkImg`` for
  images). Column names are stripped (OpenFace writes ``" AU01_r"``); rows with ``success != 1`` are dropped
  where a ``success`` column exists.
* :func:`read_openface_dir` reads a directory of per-image CSVs (``<image stem>.csv``) into ``{id: aus}``.
* :func:`read_ganimation_pkl` reads GANimation's Python-2 pickle ``{id: float64[17]}`` (intensities 0-5).
* :func:`load_aus` picks the reader from the path.
* :class:`AUAnnotated` attaches ``aus`` to any segexpr dataset by image id.
"""
from __future__ import annotations

import csv
import os
import pickle
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from segexpr.labels import NUM_AUS, OPENFACE_AU_COLUMNS
from .validation import DatasetValidationError, Problem, ProblemCollector

#: OpenFace intensities are 0-5; segexpr stores intensity / AU_SCALE.
AU_SCALE = 5.0


def _to_unit(values: np.ndarray) -> np.ndarray:
    """Intensities 0-5 -> float32 in [0, 1]. OpenFace's regressors can overshoot by a hair: clip."""
    return np.clip(np.asarray(values, np.float64) / AU_SCALE, 0.0, 1.0).astype(np.float32)


def read_openface_csv(path: str | os.PathLike, return_rows: bool = False):
    """Read the 17 AU intensities from an OpenFace 2 CSV.

    Args:
        path: the CSV. Columns are matched by stripped name, so any column order and OpenFace's leading
            spaces work.
        return_rows: also return the 1-based CSV line number of each kept row.

    Returns:
        float32 ``[N, 17]`` in ``[0, 1]`` for the N rows with ``success == 1`` (all rows if the file has no
        ``success`` column); with ``return_rows``, ``(aus, lines)``.

    Raises:
        DatasetValidationError: missing AU columns, non-numeric or NaN values (every bad row listed).
    """
    path = Path(path)
    problems = ProblemCollector(f"OpenFace CSV {path.name}")
    with open(path, newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DatasetValidationError("OpenFace CSV", [Problem(str(path), "empty file")]) from None
        missing = [c for c in OPENFACE_AU_COLUMNS if c not in header]
        if missing:
            raise DatasetValidationError("OpenFace CSV", [Problem(str(path), f"missing AU columns {missing}", 1)],
                                         hint="Is this an OpenFace 2 output CSV (run with -aus)?")
        cols = [header.index(c) for c in OPENFACE_AU_COLUMNS]
        success_col = header.index("success") if "success" in header else None
        rows, lines = [], []
        for line_no, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < len(header):
                problems.add(path, f"truncated row: {len(row)} fields, expected {len(header)}", line_no, line_no)
                continue
            try:
                if success_col is not None and float(row[success_col]) != 1:
                    continue
                values = [float(row[c]) for c in cols]
            except ValueError as exc:
                problems.add(path, f"non-numeric value ({exc})", line_no, line_no)
                continue
            if not np.all(np.isfinite(values)):
                problems.add(path, "NaN/inf AU intensity", line_no, line_no)
                continue
            rows.append(values)
            lines.append(line_no)
    problems.finish(skip_invalid=False)
    aus = _to_unit(np.asarray(rows, np.float64).reshape(-1, NUM_AUS))
    return (aus, lines) if return_rows else aus


def read_openface_dir(directory: str | os.PathLike, pattern: str = "*.csv") -> dict[str, np.ndarray]:
    """Read one OpenFace CSV per image (``<image stem>.csv``) into ``{stem: float32[17] in [0, 1]}``.

    A file with several successful rows (several faces) contributes the row with the highest ``confidence``
    when that column exists, else its first row. Files with no successful row are reported; every bad file
    is listed in one :class:`DatasetValidationError`.
    """
    directory = Path(directory)
    problems = ProblemCollector(f"OpenFace directory {directory}")
    out: dict[str, np.ndarray] = {}
    files = sorted(directory.rglob(pattern))
    if not files:
        raise DatasetValidationError("OpenFace directory", [Problem(str(directory), f"no {pattern} files")])
    for p in files:
        try:
            aus, lines = read_openface_csv(p, return_rows=True)
        except DatasetValidationError as exc:
            problems.problems.extend(exc.problems)
            continue
        if len(aus) == 0:
            problems.add(p, "no row with success == 1 (no face detected)")
            continue
        out[p.stem] = aus[_best_row(p, lines)] if len(aus) > 1 else aus[0]
    problems.finish(skip_invalid=False)
    return out


def _best_row(path: Path, lines: list[int]) -> int:
    """Index (into the kept rows) of the most confident face; 0 without a ``confidence`` column."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]]
    if "confidence" not in header:
        return 0
    c = header.index("confidence")
    return int(np.argmax([float(rows[line - 1][c]) for line in lines]))


def read_ganimation_pkl(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read GANimation's ``aus_openface.pkl`` (``{id: float64[17]}``, intensities 0-5, Python-2 pickle).

    Returns ``{id: float32[17] in [0, 1]}``. Byte-string keys are decoded as latin-1.
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = pickle.load(f, encoding="latin1")  # written by Python 2: latin1 maps bytes 1:1
    if not isinstance(data, Mapping):
        raise DatasetValidationError("GANimation AUs", [Problem(str(path), f"expected a dict, got {type(data).__name__}")])
    problems = ProblemCollector(f"GANimation AUs {path.name}")
    out: dict[str, np.ndarray] = {}
    for key, value in data.items():
        key = key.decode("latin1") if isinstance(key, bytes) else str(key)
        arr = np.asarray(value, np.float64).reshape(-1)
        if arr.shape != (NUM_AUS,) or not np.all(np.isfinite(arr)):
            problems.add(path, f"id {key!r}: expected {NUM_AUS} finite intensities, got shape {arr.shape}", item=key)
            continue
        out[key] = _to_unit(arr)
    problems.finish(skip_invalid=False)
    return out


def load_aus(source: str | os.PathLike | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """AUs from a mapping, a ``.pkl`` (GANimation), a directory of OpenFace CSVs, or one OpenFace CSV.

    A single CSV must have a ``name``/``filename``/``image`` column (or ``face`` rows are not enough to tell
    images apart) — most users pass a directory. Returns ``{id: float32[17] in [0, 1]}``.
    """
    if isinstance(source, Mapping):
        return {str(k): np.asarray(v, np.float32).reshape(NUM_AUS) for k, v in source.items()}
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"AU source not found: {p} (expected an OpenFace CSV folder, a .csv or GANimation's "
                                f"aus_openface.pkl)")
    if p.is_dir():
        return read_openface_dir(p)
    if p.suffix == ".pkl":
        return read_ganimation_pkl(p)
    if p.suffix == ".csv":
        return _read_named_csv(p)
    raise ValueError(f"cannot tell the AU format of {p}: expected a .pkl, a .csv or a directory of OpenFace CSVs")


def _read_named_csv(path: Path) -> dict[str, np.ndarray]:
    """One CSV with an id column (``name``, ``filename``, ``image`` or ``id``) plus OpenFace AU columns."""
    with open(path, newline="") as f:
        header = [h.strip() for h in next(csv.reader(f))]
    id_col = next((c for c in ("name", "filename", "image", "id", "input") if c in header), None)
    if id_col is None:
        raise DatasetValidationError("AU CSV", [Problem(str(path), "no id column (name/filename/image/id)", 1)])
    aus, lines = read_openface_csv(path, return_rows=True)
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    c = header.index(id_col)
    return {Path(rows[line - 1][c].strip()).stem: a for a, line in zip(aus, lines)}


def default_id(dataset: Dataset, index: int) -> str:
    """The image id of ``dataset[index]``: ``dataset.image_id(index)`` (every segexpr dataset has it)."""
    return dataset.image_id(index)


class AUAnnotated(Dataset):
    """Attach ``aus`` (float32 tensor ``[17]`` in ``[0, 1]``) to each sample of ``dataset`` by image id.

    Args:
        dataset: any map-style dataset returning dict samples; ids come from ``id_fn(dataset, index)``
            (default: ``dataset.image_id(index)``, the image file stem for segexpr's datasets).
        aus: ``{id: float[17] in [0, 1]}`` (see :func:`load_aus`).
        id_fn: how to get an item's id.
        skip_invalid: drop items without AUs (and log how many) instead of raising.

    Raises:
        DatasetValidationError: listing every id that has no AU vector (unless ``skip_invalid``).
    """

    def __init__(self, dataset: Dataset, aus: Mapping[str, np.ndarray],
                 id_fn: Callable[[Dataset, int], str] = default_id, skip_invalid: bool = False):
        self.dataset = dataset
        self.aus = {str(k): np.asarray(v, np.float32).reshape(NUM_AUS) for k, v in aus.items()}
        name = getattr(dataset, "name", type(dataset).__name__)
        problems = ProblemCollector(f"{name} + AUs")
        ids = [id_fn(dataset, i) for i in range(len(dataset))]
        for i, image_id in enumerate(ids):
            if image_id not in self.aus:
                problems.add(image_id, "no AU vector for this image id", item=i)
        bad = problems.finish(skip_invalid, len(ids), "images")
        self.indices = [i for i in range(len(ids)) if i not in bad]
        self.ids = [ids[i] for i in self.indices]
        problems.require_nonempty(len(self.indices), "no image has AUs")

    def __len__(self) -> int:
        return len(self.indices)

    def image_id(self, index: int) -> str:
        return self.ids[index]

    def set_epoch(self, epoch: int) -> None:
        """Forward the augmentation epoch to the wrapped dataset."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    @property
    def targets(self) -> list[int] | None:
        """Expression labels of the kept items when the wrapped dataset has them (for balanced sampling)."""
        t = getattr(self.dataset, "targets", None)
        return None if t is None else [t[i] for i in self.indices]

    def __getitem__(self, index: int) -> dict:
        sample = self.dataset[self.indices[index]]
        sample["aus"] = torch.from_numpy(self.aus[self.ids[index]].copy())
        return sample
