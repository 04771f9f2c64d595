"""Two DataModules at once: expression data for the GAN, parsing data for the segmenter's supervision.

The joint AffectNet + CelebAMask-HQ recipe trains the GAN on AffectNet (expressions, no masks) while the
segmenter keeps its mask supervision from CelebAMask-HQ, so joint GAN training cannot erode parsing. Each
train batch is ``{"gan": <batch>, "parsing": <batch>}``, built by Lightning's own ``CombinedLoader``;
``JointModule`` recognises that shape.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import pytorch_lightning as pl
from pytorch_lightning.utilities import CombinedLoader

from segexpr.data.base import _set_loader_epoch

_MODES = ("max_size_cycle", "min_size")
#: Sampler/dataset epoch of cycle ``c`` > 0 within trainer epoch ``e``: ``e + c * CYCLE_STRIDE`` (distinct from
#: every real epoch below the stride, so each cycle has its own order and augmentation).
CYCLE_STRIDE = 1_000_003


class CycledLoader:
    """A train loader that ``CombinedLoader("max_size_cycle")`` may re-iterate within one epoch.

    ``CombinedLoader`` calls ``iter()`` again on the shorter loader when it runs out; a plain loader would then
    repeat the identical order and augmentation every cycle (its sampler keeps the epoch Lightning set). Here
    cycle ``c`` of trainer epoch ``e`` uses sampler/dataset epoch ``e`` for ``c = 0`` and
    ``e + c * CYCLE_STRIDE`` after, so every cycle draws anew (and deterministically). ``state_dict`` /
    ``load_state_dict`` (Lightning's ``Stateful`` protocol) resume mid-epoch at the right cycle and position: the
    combined epoch's processed-batch count ``k`` means cycle ``k // len`` and ``k % len`` batches into it.

    Args:
        loader: a :class:`~segexpr.data.base.ResumableDataLoader` (its ``_position`` gives the trainer's progress).
        epoch: callable returning the trainer's current epoch.
    """

    def __init__(self, loader: Any, epoch: Callable[[], int]) -> None:
        self.loader = loader
        self._epoch_fn = epoch
        self._epoch: int | None = None
        self._cycle = -1
        self._resume: tuple[int, int, int] | None = None  # (epoch, cycle, batches to skip) from load_state_dict

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        if self._resume is not None:
            self._epoch, self._cycle, skip = self._resume
            self._resume = None
        else:
            epoch = int(self._epoch_fn())
            self._cycle = self._cycle + 1 if epoch == self._epoch else 0
            self._epoch, skip = epoch, 0
        _set_loader_epoch(self.loader, self._epoch + self._cycle * CYCLE_STRIDE)
        self.loader._pending_skip = skip
        return iter(self.loader)

    def state_dict(self) -> dict[str, int]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not state:
            return
        epoch, consumed, per_epoch = int(state["epoch"]), int(state["consumed"]), state.get("batches_per_epoch")
        if per_epoch is not None and consumed >= float(per_epoch):
            self._resume = (epoch + 1, 0, 0)  # saved at the end of an epoch: the next one starts afresh
        else:
            self._resume = (epoch, consumed // len(self.loader), consumed % len(self.loader))


class CombinedDataModule(pl.LightningDataModule):
    """Pair an expression DataModule with a parsing DataModule.

    Args:
        expression: DataModule whose batches train the GAN (e.g. ``AffectNetDataModule``, ``RaFDDataModule``).
        parsing: DataModule whose batches carry ``mask`` (e.g. ``CelebAMaskHQDataModule``).
        mode: ``"max_size_cycle"`` (default: an epoch is the longer loader, the shorter one cycles) or
            ``"min_size"`` (stop at the shorter one).

    In training the shorter loader cycles with a new order and augmentation every cycle, and a mid-epoch
    resume continues both loaders where they were (:class:`CycledLoader`).

    Validation and test use the expression DataModule's loaders (edits are judged on expression data) and
    the parsing DataModule's, as ``{"gan": ..., "parsing": ...}`` batches in ``"min_size"`` mode.
    """

    def __init__(self, expression: pl.LightningDataModule, parsing: pl.LightningDataModule,
                 mode: str = "max_size_cycle") -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        for name, dm in (("expression", expression), ("parsing", parsing)):
            if not isinstance(dm, pl.LightningDataModule):
                raise TypeError(f"{name} must be a LightningDataModule, got {type(dm).__name__}")
        self.expression = expression
        self.parsing = parsing
        self.mode = mode

    def prepare_data(self) -> None:
        self.expression.prepare_data()
        self.parsing.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for dm in (self.expression, self.parsing):
            dm.trainer = self.trainer
            dm.setup(stage)

    def _combine(self, loader_name: str, mode: str) -> CombinedLoader:
        return CombinedLoader({"gan": getattr(self.expression, loader_name)(),
                               "parsing": getattr(self.parsing, loader_name)()}, mode)

    def train_dataloader(self) -> CombinedLoader:
        epoch = lambda: self.trainer.current_epoch if self.trainer is not None else 0  # noqa: E731
        loaders = {"gan": self.expression.train_dataloader(), "parsing": self.parsing.train_dataloader()}
        return CombinedLoader({name: CycledLoader(loader, epoch) if hasattr(loader, "_pending_skip") else loader
                               for name, loader in loaders.items()}, self.mode)

    def val_dataloader(self) -> CombinedLoader:
        return self._combine("val_dataloader", "min_size")

    def test_dataloader(self) -> CombinedLoader:
        return self._combine("test_dataloader", "min_size")
