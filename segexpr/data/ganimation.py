"""GANimation's AU dataset layout (the EmotioNet-style folder every GANimation user has).

Layout (``root``)::

    imgs/<id>.jpg            aligned face crops (GANimation used 128 px crops from EmotioNet)
    train_ids.csv            one image file name per line (``<id>.jpg``; GANimation strips the last 4 characters)
    test_ids.csv             the same for the test split
    aus_openface.pkl         {id: float64[17]} OpenFace intensities 0-5 (Python-2 pickle)

Items: ``image`` and ``aus`` (float ``[17]`` in ``[0, 1]``: intensity / 5); no expression labels, no masks.
Splits: ``train`` and ``test`` from the two files; ``val`` is a seeded ``val_fraction`` of the train ids (at
least one when the fraction is > 0; the layout has none), disjoint from train. Missing images, ids without AUs and unreadable files are errors naming
them (``skip_invalid=True`` skips and logs them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .aus import read_ganimation_pkl
from .base import FaceDataModule, IndexedFaceDataset
from .transforms import check_augment, split_transforms
from .validation import ProblemCollector, VerifyLevel, check_images, keep_indices, load_rgb, safe_join

__all__ = ["GANimationFaces", "GANimationDataModule", "read_ids"]

_ID_FILES = {"train": "train_ids.csv", "test": "test_ids.csv"}


def read_ids(path: Path, problems: ProblemCollector) -> list[str]:
    """Image ids of one ``*_ids.csv`` (file names, one per line; the extension is dropped as GANimation does)."""
    if not path.is_file():
        problems.add(path, "missing id list")
        return []
    ids = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        name = line.strip().strip('"').split("\t")[0].split(",")[0].strip()
        if not name:
            continue
        ids.append(Path(name).stem if Path(name).suffix.lower() in (".jpg", ".jpeg", ".png") else name)
    return ids


class GANimationFaces(IndexedFaceDataset):
    """One split of a GANimation-layout folder (see the module docstring)."""

    name = "GANimation"

    def __init__(self, root: str, split: str = "train", transform=None, val_fraction: float = 0.05,
                 skip_invalid: bool = False, verify: VerifyLevel = "header", seed: int = 0) -> None:
        super().__init__(transform, seed)
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root, self.split = Path(root), split
        problems = ProblemCollector(f"GANimation({split}) at {root}")
        ids = read_ids(self.root / _ID_FILES["test" if split == "test" else "train"], problems)
        if split != "test":  # a seeded val share of the train ids
            order = np.random.default_rng(seed).permutation(len(ids))
            n_val = max(1, int(round(val_fraction * len(ids)))) if val_fraction > 0 and len(ids) > 1 else 0
            chosen = set(order[:n_val].tolist()) if split == "val" else set(order[n_val:].tolist())
            ids = [ids[i] for i in sorted(chosen)]
        aus_path = self.root / "aus_openface.pkl"
        table = read_ganimation_pkl(aus_path) if aus_path.is_file() else {}
        if not aus_path.is_file():
            problems.add(aus_path, "missing AU file (GANimation's aus_openface.pkl)")
        paths = [safe_join(self.root / "imgs", f"{i}.jpg") for i in ids]
        for image_id, path, (problem, _) in zip(ids, paths, check_images([p or "" for p in paths], verify)):
            if path is None or problem:
                problems.add(path or image_id, problem or "id escapes imgs/", item=image_id)
            elif image_id not in table:
                problems.add(aus_path, f"no AU vector for id {image_id!r}", item=image_id)
        bad = problems.finish(skip_invalid, len(ids), "images")
        keep = keep_indices(ids, bad)
        self.ids = [ids[i] for i in keep]
        self.paths = [paths[i] for i in keep]
        self.aus = np.stack([table[i] for i in self.ids]).astype(np.float32) if self.ids else np.zeros((0, 17))
        problems.require_nonempty(len(self.ids), f"split {split}")

    def load(self, index: int) -> dict[str, Any]:
        return {"image": np.asarray(load_rgb(self.paths[index])), "aus": self.aus[index]}


class GANimationDataModule(FaceDataModule):
    """Lightning DataModule over a GANimation-layout folder (AU labels only: train ``task`` with AU targets).

    Args:
        root: the folder holding ``imgs/``, ``train_ids.csv``, ``test_ids.csv`` and ``aus_openface.pkl``.
        image_size: side of the square images the loaders yield (GANimation: 128).
        val_fraction: share of the train ids held out for validation (seeded by ``seed``).
        skip_invalid, verify: see :class:`~segexpr.data.affectnet.AffectNetDataModule`.
        augment: train-time augmentation: ``true`` flip (with l/r swaps) + small affine + colour jitter,
            ``"flip"`` flips only (StarGAN's and GANimation's), ``false`` none.
        batch_size, num_workers, pin_memory, seed, references: see :class:`~segexpr.data.base.FaceDataModule`.
    """

    def __init__(self, root: str, image_size: int = 128, val_fraction: float = 0.05, skip_invalid: bool = False,
                 verify: VerifyLevel = "header", augment: bool | Literal["flip"] = True, batch_size: int = 16,
                 num_workers: int = 0, pin_memory: bool = False, seed: int = 0, references: bool = False) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, seed=seed,
                         image_size=image_size, references=references)
        self.save_hyperparameters()
        self.root, self.val_fraction, self.skip_invalid = root, val_fraction, skip_invalid
        self.verify, self.augment = verify, check_augment(augment)

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        split = "test" if split == "predict" else split
        return GANimationFaces(self.root, split, split_transforms(self.image_size, split, self.augment),
                               self.val_fraction, self.skip_invalid, self.verify, self.seed)
