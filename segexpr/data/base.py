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
* under DDP (``use_distributed_sampler=True``, Lightning's default) the train loader wraps its sampler — the
  default :class:`EpochSampler` or the custom one :meth:`train_sampler` returns — in a
  ``DistributedSamplerWrapper`` with ``shuffle=False``: rank ``r`` of ``W`` takes positions ``r, r + W, ...``
  of the one sequence, so the ``W`` per-rank batches ``k`` together hold exactly the samples of batch ``k`` of a
  single process with batch ``W * batch_size`` (global batch semantics). Lightning's automatic wrapper would
  use ``shuffle=True``, which re-permutes positions across ranks; it leaves an existing ``DistributedSampler``
  alone. The wrapper forwards ``set_epoch`` to the wrapped sampler. Val/test/predict loaders (sequential) get
  Lightning's plain ``DistributedSampler``;
* the train loader is a :class:`ResumableDataLoader`: checkpoints record the position in the epoch and a
  resumed run (also after a killed process) continues with the next unseen batch, so a resumed run sees
  exactly the batches of an uninterrupted one.
"""
from __future__ import annotations

import os
import zlib
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.distributed import DistributedSamplerWrapper
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, Sampler

from segexpr.data.transforms import derive_seed, to_batch_tensors

__all__ = ["EpochSampler", "FaceDataModule", "IndexedFaceDataset", "ResumableDataLoader", "SPLITS"]

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


class _SkipFirstBatches(Sampler[list[int]]):
    """Index sampler of :class:`ResumableDataLoader`: its first iteration after a resume skips consumed batches.

    The skip count is read from the loader when iteration starts (lazily, after Lightning has set the epoch) and
    cleared, so later epochs, including persistent workers' re-iterations, pass through unchanged. Skipping
    happens on *indices*, so skipped items are never loaded. ``len`` stays the full epoch: Lightning restores
    its own batch counter and stops when the loader is exhausted.
    """

    def __init__(self, inner: Any, loader: "ResumableDataLoader") -> None:
        self.inner = inner
        self.loader = loader

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[Any]:
        skip, self.loader._pending_skip = self.loader._pending_skip, 0
        iterator = iter(self.inner)
        for _ in range(skip):
            if next(iterator, None) is None:
                return
        yield from iterator


def _set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """``set_epoch`` on the loader's sampler and batch sampler's sampler (each once), like Lightning does."""
    targets = {}
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if obj is not None and callable(getattr(obj, "set_epoch", None)):
            targets[id(obj)] = obj
    for obj in targets.values():
        obj.set_epoch(epoch)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that Lightning can resume mid-epoch (it implements ``state_dict``/``load_state_dict``).

    Lightning 2.x restores its loop counters from a checkpoint but does not fast-forward a plain DataLoader:
    after a mid-epoch resume the epoch would start again from its first batch (Lightning warns "your dataloader
    is not resumable"). Lightning *does* save and restore the state of loaders that implement the ``Stateful``
    protocol, and this class does so:

    * ``state_dict()`` records the position from ``position()`` (the DataModule passes a callable reading the
      trainer's progress: epoch, batches *processed* in the epoch, batches per epoch, batch size and world
      size). Lightning prefetches batches and workers prefetch more, so counting batches the iterator handed out
      would overshoot; the trainer's processed-batch counter is the exact number;
    * ``load_state_dict()`` (called by Lightning before the first ``iter`` of the resumed run, on the
      re-instantiated per-rank loader under DDP) sets the sampler's epoch at once (so worker prefetch already
      uses the resumed epoch's order) and arms a one-shot skip of the consumed batches; a checkpoint taken at the
      end of an epoch selects the next epoch and skips nothing.

    The data order after the skip is the uninterrupted run's, because the sampler order is ``f(seed, epoch)`` and
    items are ``f(seed, split, epoch, index)``. Resuming needs the same batch size and world size (a different
    one raises a ``ValueError`` naming both).

    Args:
        *args, **kwargs: ``DataLoader`` arguments.
        position: callable returning the position dict described above (``None``: ``state_dict`` is empty and
            nothing is resumed).
    """

    def __init__(self, *args: Any, position: Callable[[], dict[str, int]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._position = position
        self._pending_skip = 0

    @property
    def _index_sampler(self) -> Any:
        return _SkipFirstBatches(super()._index_sampler, self)

    def state_dict(self) -> dict[str, int]:
        return dict(self._position()) if self._position is not None else {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state:
            return
        here = dict(self._position()) if self._position is not None else {}
        for key in ("batch_size", "world_size"):
            if key in state and key in here and int(state[key]) != int(here[key]):
                raise ValueError(f"cannot resume the train loader mid-epoch: the checkpoint was written with "
                                 f"{key}={state[key]} but this run has {key}={here[key]} (the data position is "
                                 f"counted in per-rank batches)")
        epoch, consumed, per_epoch = int(state["epoch"]), int(state["consumed"]), state.get("batches_per_epoch")
        if per_epoch is not None and consumed >= float(per_epoch):
            _set_loader_epoch(self, epoch + 1)  # saved at the end of an epoch: the next one starts afresh
            self._pending_skip = 0
        else:
            _set_loader_epoch(self, epoch)
            self._pending_skip = consumed


class FaceDataModule(pl.LightningDataModule):
    """Common loader logic for the segexpr datasets.

    Args:
        batch_size: samples per batch (per device under DDP).
        num_workers: DataLoader worker processes; ``persistent_workers`` is on whenever this is > 0.
        pin_memory: passed to the DataLoaders.
        seed: base seed of the train shuffling (and, in subclasses, of dataset randomness/augmentation).
        image_size: side ``S`` of the square images the loaders yield.
        references: give every item an unpaired reference (``reference_image`` and its labels): another item of
            the same split, of another identity where the dataset knows identities
            (:class:`~segexpr.data.references.WithReferences`). This is what the transfer task trains on.

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
        references: bool = False,
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
        self.references = bool(references)
        self.datasets: dict[str, Dataset] = {}
        self._au_tables: dict[str, dict] = {}
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

    def attach_aus(self, dataset: Dataset, aus: Any, skip_invalid: bool) -> Dataset:
        """Wrap ``dataset`` in :class:`~segexpr.data.aus.AUAnnotated` when ``aus`` (an OpenFace CSV folder, a
        GANimation pickle or an ``{id: vector}`` mapping) is given. A file source is read once per DataModule,
        not once per split: an OpenFace folder for AffectNet holds one CSV per image."""
        if aus is None:
            return dataset
        from segexpr.data.aus import AUAnnotated, load_aus

        if isinstance(aus, (str, os.PathLike)):
            key = os.fspath(aus)
            if key not in self._au_tables:
                self._au_tables[key] = load_aus(aus)
            table = self._au_tables[key]
        else:
            table = load_aus(aus)
        return AUAnnotated(dataset, table, skip_invalid=skip_invalid)

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split``, built on first use and cached."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self.datasets:
            dataset = self.build_dataset(split)
            if self.references:
                from segexpr.data.references import WithReferences

                identity_ids = getattr(dataset, "identity_ids", None)
                dataset = WithReferences(dataset, identity_ids() if callable(identity_ids) else None)
            self.datasets[split] = dataset
        return self.datasets[split]

    # ----------------------------------------------------------------------------------------- loaders
    def _loader(self, split: str, loader_cls: type[DataLoader] = DataLoader, **kwargs: Any) -> DataLoader:
        dataset = self.dataset(split)
        trainer = getattr(self, "trainer", None)
        rank = trainer.global_rank if trainer is not None else 0
        return loader_cls(
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
        trainer = getattr(self, "trainer", None)
        if (trainer is not None and trainer.world_size > 1
                and getattr(trainer._accelerator_connector, "use_distributed_sampler", True)):
            # Shard without re-shuffling (see the module docstring): rank r gets positions r, r + W, ...
            sampler = DistributedSamplerWrapper(sampler, num_replicas=trainer.world_size, rank=trainer.global_rank,
                                                shuffle=False, drop_last=True)
        # The generator only seeds the workers' base seed (the order comes from the sampler).
        generator = torch.Generator().manual_seed(self.seed)
        return self._loader("train", sampler=sampler, drop_last=True, generator=generator,
                            loader_cls=ResumableDataLoader, position=self._train_position)

    def _train_position(self) -> dict[str, int]:
        """Where training stands in the train loader (saved by :class:`ResumableDataLoader` in checkpoints)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return {}
        loop = trainer.fit_loop
        per_epoch = trainer.num_training_batches
        return {"epoch": int(trainer.current_epoch),
                "consumed": int(loop.epoch_loop.batch_progress.current.processed),
                "batches_per_epoch": int(per_epoch) if per_epoch != float("inf") else 2 ** 62,
                "batch_size": int(self.batch_size), "world_size": int(trainer.world_size)}

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
        seed = self.item_seed(index)
        item = to_batch_tensors(sample) if self.transform is None else self.transform(sample, seed=seed)
        # Per-item key of JointModule's training randomness (independent of rank and batch position).
        item["sample_seed"] = torch.tensor(seed, dtype=torch.int64)
        return item
