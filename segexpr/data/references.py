"""Unpaired references for any dataset: the transfer task's second image is just another item of the data.

The transfer paper is unpaired: a reference is any other image of the dataset (of another identity where
identities are known, e.g. RaFD subjects), with its labels where it has them. :class:`WithReferences` adds
``reference_image`` (+ ``reference_expression`` / ``reference_aus`` when the reference has them) to every item,
chosen from the item's ``sample_seed`` (keyed: the same item in the same epoch always gets the same reference,
whatever the worker, rank or batch position; a new epoch draws a new one).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["WithReferences"]

#: Item keys copied from the reference as ``reference_<key>``.
REFERENCE_LABELS = ("expression", "aus")


class WithReferences(Dataset):
    """Wrap a map-style dataset of dict items so each item also carries an unpaired reference.

    Args:
        dataset: returns dicts with ``image`` and ``sample_seed`` (every segexpr dataset does).
        identities: per-index identity ids (``-1`` or ``None`` = unknown). When known, the reference is another
            identity's image (a same-identity reference would let the generator copy instead of transfer);
            otherwise any other item. A one-item split (a tiny validation set) can only reference itself.

    Raises:
        ValueError: an empty dataset, or identities of another length than the dataset.
    """

    def __init__(self, dataset: Dataset, identities: Sequence[int | None] | None = None) -> None:
        self.dataset = dataset
        n = len(dataset)
        if n < 1:
            raise ValueError("unpaired references need a non-empty dataset")
        if identities is not None and len(identities) != n:
            raise ValueError(f"identities has {len(identities)} entries for {n} items")
        known = identities is not None and all(i is not None and int(i) >= 0 for i in identities)
        self.identities = np.asarray([int(i) for i in identities], np.int64) if known else None
        if self.identities is not None and len(set(self.identities.tolist())) < 2:
            self.identities = None  # one identity: any other item

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # image_id, targets, name, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def reference_index(self, index: int, key: int) -> int:
        """The reference of item ``index`` under ``key`` (its ``sample_seed``): never itself, another identity
        when identities are known."""
        if len(self) == 1:
            return index
        rng = np.random.default_rng(np.uint64(int(key) & 0xFFFFFFFFFFFFFFFF))
        if self.identities is not None:
            others = np.flatnonzero(self.identities != self.identities[index])
            return int(others[rng.integers(len(others))])
        other = int(rng.integers(len(self) - 1))
        return other + 1 if other >= index else other

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        key = item.get("sample_seed")
        key = int(key) if key is not None else index
        reference = self.dataset[self.reference_index(index, key)]
        item["reference_image"] = reference["image"]
        for name in REFERENCE_LABELS:
            if name in reference and isinstance(reference[name], (torch.Tensor, np.ndarray, int, float)):
                item[f"reference_{name}"] = reference[name]
        return item
