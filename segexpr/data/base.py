"""The LightningDataModule base class shared by every segexpr DataModule.

Subclasses implement :meth:`FaceDataModule.build_dataset` (one split -> a map-style ``torch`` Dataset whose
items follow the batch contract) and may override :meth:`FaceDataModule.train_sampler`.

Determinism and distribution:

* the train loader shuffles with :class:`EpochSampler`: a permutation drawn from a ``torch.Generator``
  seeded with ``(seed, epoch)``, so every epoch has a new order that is the same in every run and on every
  rank; it drops the last incomplete batch. Lightning calls the sampler's ``set_epoch`` at each epoch start; the
  sampler forwards it to the dataset (``dataset.set_epoch``, when the dataset has one) so per-item
  augmentation can depend on ``(seed, epoch, index)`` even inside persistent workers;
* workers are seeded with Lightning's ``pl_worker_init_function`` (numpy/random/torch seeded per worker and
  rank); segexpr datasets additionally derive every item's randomness from ``(seed, split, index[, epoch])``,
  so their items do not depend on worker count or order at all;
* under DDP (``use_distributed_sampler=True``, Lightning's default) Lightning wraps the train sampler — the
  default :class:`EpochSampler` or the custom one :meth:`train_sampler` returns — in a
  ``DistributedSamplerWrapper``: every rank draws a disjoint share of the same sequence, and the wrapper
  forwards ``set_epoch`` to the wrapped sampler. Val/test/predict loaders (sequential) get a plain
  ``DistributedSampler``.
"""
from __future__ import annotations

import zlib
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, Sampler

from segexpr.data.transforms import derive_seed, to_batch_tensors

__all__ = ["EpochSampler", "FaceDataModule", "IndexedFaceDataset", "SPLITS"]

#: The split names ``build_dataset`` receives.
SPLITS: tuple[str, ...] = ("train", "val", "test", "predict")
_STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",),
    None: ("train", "val", "test"),
}


class EpochSampler(Sampler[int]):
    """Train sampler whose order is a pure function of ``(seed, epoch)``.

    Without ``weights`` it yields a permutation of ``range(len(dataset))``; with ``weights`` it draws
    ``num_samples`` indices with replacement in proportion to them (class-balanced sampling). The generator is
    seeded with ``(seed, epoch)``, so every epoch has a new order that is the same in every run, on every rank
    and after a resume. ``set_epoch(epoch)`` (called by Lightning at every epoch start, also through
    ``DistributedSamplerWrapper``) selects the epoch and is forwarded to ``dataset.set_epoch`` when the
    dataset defines it, so per-item augmentation can depend on the epoch too.

    Args:
        dataset: the train dataset (anything with ``__len__``; ``set_epoch`` optional).
        seed: base seed.
        weights: optional per-item sampling weights (``len(dataset)`` non-negative numbers, not all zero).
        num_samples: draws per epoch with ``weights`` (default ``len(dataset)``).
    """

    def __init__(self, dataset: Dataset, seed: int = 0, weights: Sequence[float] | None = None,
                 num_samples: int | None = None) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        if self.weights is not None and (len(self.weights) != len(dataset) or bool((self.weights < 0).any())
                                         or float(self.weights.sum()) <= 0):
            raise ValueError(f"weights must be {len(dataset)} non-negative numbers (not all zero), "
                             f"got {len(self.weights)}")
        if num_samples is not None and int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = int(num_samples) if num_samples is not None else len(dataset)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        forward = getattr(self.dataset, "set_epoch", None)
        if callable(forward):
            forward(self.epoch)

    def __len__(self) -> int:
        return self.num_samples if self.weights is not None else len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        seed = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(seed)
        if self.weights is None:
            order = torch.randperm(len(self.dataset), generator=generator)
        else:
            order = torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)
        return iter(order.tolist())


class FaceDataModule(pl.LightningDataModule):
    """Common loader logic for the segexpr datasets.

    Args:
        batch_size: samples per batch (per device under DDP).
        num_workers: DataLoader worker processes; ``persistent_workers`` is on whenever this is > 0.
        pin_memory: passed to the DataLoaders.
        seed: base seed of the train shuffling (and, in subclasses, of dataset randomness/augmentation).
        image_size: side ``S`` of the square images the loaders yield.

    Subclasses call ``super().__init__(...)`` and ``self.save_hyperparameters()`` themselves (so their own
    arguments are recorded too); this base records its arguments when it is used directly.
    """

    def __init__(
        self,
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        image_size: int = 128,
    ) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.image_size = image_size
        self.datasets: dict[str, Dataset] = {}
        if type(self) is FaceDataModule:
            self.save_hyperparameters()

    # ----------------------------------------------------------------------------------------- hooks
    def build_dataset(self, split: str) -> Dataset:
        """Build the dataset of ``split`` (one of :data:`SPLITS`). Subclasses must implement this."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_dataset(split)")

    def train_sampler(self) -> Sampler | None:
        """Sampler of the train loader, or ``None`` for :class:`EpochSampler` (the default).

        Override for e.g. class-balanced sampling; called after ``setup`` so ``self.datasets["train"]`` exists.
        Under DDP Lightning wraps a custom sampler in ``DistributedSamplerWrapper``.
        """
        return None

    # ----------------------------------------------------------------------------------------- setup
    def setup(self, stage: str | None = None) -> None:
        """Build the splits ``stage`` needs ("fit" -> train+val, "validate", "test", "predict"; None -> train,
        val, test), each once."""
        if stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {[s for s in _STAGE_SPLITS if s]} or None")
        for split in _STAGE_SPLITS[stage]:
            self.dataset(split)

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split``, built on first use and cached."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self.datasets:
            self.datasets[split] = self.build_dataset(split)
        return self.datasets[split]

    # ----------------------------------------------------------------------------------------- loaders
    def _loader(self, split: str, **kwargs: Any) -> DataLoader:
        dataset = self.dataset(split)
        trainer = getattr(self, "trainer", None)
        rank = trainer.global_rank if trainer is not None else 0
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=partial(pl_worker_init_function, rank=rank) if self.num_workers > 0 else None,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        """Train batches in :class:`EpochSampler` order (or the custom :meth:`train_sampler`),
        ``drop_last=True``."""
        dataset = self.dataset("train")
        if len(dataset) < self.batch_size:
            raise ValueError(f"train split has {len(dataset)} samples, fewer than batch_size={self.batch_size} "
                             "(drop_last=True would yield no batch)")
        sampler = self.train_sampler()
        if sampler is None:
            sampler = EpochSampler(dataset, self.seed)
        # The generator only seeds the workers' base seed (the order comes from the sampler).
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader("train", sampler=sampler, drop_last=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)


class IndexedFaceDataset(torch.utils.data.Dataset):
    """Shared base of the real-data datasets: an index of records -> transformed batch-contract samples.

    Subclasses fill ``self.ids`` (image ids, the image file stem) and implement :meth:`load` (index ->
    numpy sample: ``image`` uint8 ``[H, W, 3]``, optional ``mask``/``landmarks``/labels). ``__getitem__``
    applies ``transform(sample, seed)``; the per-item seed is ``derive_seed(seed, split, epoch, index)``, so
    augmentation is independent of worker count/order. The epoch lives in a shared-memory tensor, so
    :meth:`set_epoch` reaches persistent DataLoader workers too (segexpr DataModules call it at the start of
    every train epoch).
    """

    name: str = "dataset"
    split: str = "all"

    def __init__(self, transform: Callable | None, seed: int = 0) -> None:
        self.transform = transform
        self.seed = int(seed)
        self.ids: list[str] = []
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation of every item (visible to already-running workers)."""
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.ids)

    def image_id(self, index: int) -> str:
        """Id used to attach external annotations (AUs): the image file stem."""
        return self.ids[index]

    def load(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def item_seed(self, index: int) -> int:
        split_code = zlib.crc32(self.split.encode()) & 0x7FFFFFFF
        return derive_seed(self.seed, split_code, int(self._epoch.item()), int(index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self)} items")
        sample = self.load(index)
        if self.transform is None:
            return to_batch_tensors(sample)
        return self.transform(sample, seed=self.item_seed(index))
