"""Lightning callbacks that turn training into something a person can look at, and a fixed batch budget."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from segexpr.visualize import label_columns

__all__ = ["BatchBudget", "ResultImage", "StopAllRanksOnError"]


def batches_done(trainer: pl.Trainer) -> int:
    """Training batches started so far in this fit (restored on resume): every batch, warm-up ones included."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.ready)


class BatchBudget(pl.Callback):
    """Stop training after ``batches`` training batches, whatever the number of optimiser steps per batch.

    ``trainer.max_steps`` counts optimiser steps, and a manually optimised GAN module (``JointModule``) makes
    several per batch (1 discriminator step + 1 generator step every ``n_critic``, segmenter steps...), so it
    cannot express "N batches". This callback counts every training batch (segmenter warm-up batches included,
    resumed runs continue the count) and sets ``trainer.should_stop`` after the ``batches``-th; Lightning then
    runs its final validation and ``on_train_end`` as after early stopping. The progress bar's total (TQDM or
    Rich) is set to the budget, so it reads ``k/N`` batches.

    Args:
        batches: the training-batch budget (>= 1).
    """

    def __init__(self, batches: int) -> None:
        super().__init__()
        if int(batches) < 1:
            raise ValueError(f"batches must be >= 1, got {batches}")
        self.batches = int(batches)
        self._epoch_start = 0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = batches_done(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._show_budget(trainer)

    def _show_budget(self, trainer: pl.Trainer) -> None:
        """Set the progress bar's total to the budget left at this epoch's start (TQDM and Rich bars)."""
        from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar

        bar = trainer.progress_bar_callback
        if bar is None or not bar.is_enabled:
            return
        total = min(self.batches - self._epoch_start, bar.total_train_batches)
        description = f"Epoch {trainer.current_epoch} (budget {self.batches} batches)"
        if isinstance(bar, TQDMProgressBar) and getattr(bar, "_train_progress_bar", None) is not None:
            progress = bar.train_progress_bar
            if progress.total != total:
                progress.total = total
                progress.set_description(description)
        elif isinstance(bar, RichProgressBar) and getattr(bar, "train_progress_bar_id", None) is not None \
                and bar.progress is not None:
            task = bar.progress.tasks[bar.train_progress_bar_id]
            if task.total != total:
                bar.progress.update(bar.train_progress_bar_id, total=total, description=description)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batches_done(trainer) >= self.batches and not trainer.should_stop:
            trainer.should_stop = True
            rank_zero_info(f"segexpr: batch budget reached ({self.batches} training batches); stopping")


def _gan_half(batch: Any) -> Any:
    """The GAN batch of a validation loader's first item: a ``CombinedLoader`` yields ``(batch, idx, dl_idx)``
    whose batch is ``{"gan": ..., "parsing": ...}`` (CombinedDataModule); a plain loader yields the batch."""
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], dict):
        batch = batch[0]
    if isinstance(batch, dict) and "gan" in batch and "image" not in batch:
        batch = batch["gan"]
    if not isinstance(batch, dict) or "image" not in batch:
        raise ValueError(f"ResultImage needs validation batches with an 'image' entry, got {type(batch).__name__}")
    return batch


def _image_loggers(pl_module: pl.LightningModule) -> bool:
    """Whether a logger takes images (W&B, TensorBoard); CSV alone gets only the PNG at ``path``."""
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    return any(isinstance(logger, (WandbLogger, TensorBoardLogger)) for logger in pl_module.loggers)


class ResultImage(pl.Callback):
    """Write a labelled result grid PNG of a ``JointModule`` on validation images, and send it to the loggers.

    Rows are validation faces; columns are source | one edit per target expression | reference | transfer |
    region masks (see :func:`segexpr.modules.samples.sample_grid`). The image is rewritten at the end of every
    validation run (so a long run shows progress) and at the end of training, and each time the grid also goes to
    the trainer's image loggers (W&B ``log_image``, TensorBoard ``add_image``; see
    :func:`segexpr.modules.samples.log_image_grid`) under ``tag``, on global rank zero.

    Args:
        path: PNG to write (parent folders are created). ``None``: ``<trainer.log_dir>/result.png``, i.e. the
            run's versioned folder when a CSV logger is used.
        num_samples: rows of the grid.
        tag: the loggers' image key; ``None`` sends nothing to the loggers.
    """

    def __init__(self, path: str | None = None, num_samples: int = 4, tag: str | None = "val/result") -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.path = Path(path) if path is not None else None
        self.num_samples = num_samples
        self.tag = tag

    def _batch(self, trainer: pl.Trainer):
        datamodule = trainer.datamodule
        if datamodule is None:
            raise ValueError("ResultImage needs the Trainer to run with a datamodule (for validation images)")
        datamodule.setup("validate")
        return _gan_half(next(iter(datamodule.val_dataloader())))

    def output_path(self, trainer: pl.Trainer) -> Path:
        """Where the PNG goes: :attr:`path`, else ``<trainer.log_dir>/result.png``."""
        if self.path is not None:
            return self.path
        return Path(trainer.log_dir or trainer.default_root_dir) / "result.png"

    @rank_zero_only
    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        """Render the grid now, write it to :meth:`output_path` and send it to the loggers."""
        from segexpr.modules.samples import log_image_grid, sample_grid, sample_grid_columns

        batch = self._batch(trainer)
        grid = sample_grid(pl_module, batch, num_samples=self.num_samples)
        columns = sample_grid_columns(pl_module, batch)
        image = label_columns(grid, columns, tile_width=batch["image"].shape[-1])
        path = self.output_path(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        if self.tag is not None and _image_loggers(pl_module):
            log_image_grid(pl_module, grid, self.tag, caption=" | ".join(columns))
        return path

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self.write(trainer, pl_module)
        rank_zero_info(f"segexpr: result image written to {path}")


class BatchCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that saves every ``every_n_train_batches`` *training batches*.

    ``ModelCheckpoint(every_n_train_steps=N)`` tests ``trainer.global_step % N`` after each batch, and a manually
    optimised GAN (``JointModule``) advances ``global_step`` by its number of optimiser steps per batch (2-3), so
    most multiples of ``N`` are skipped. This subclass counts batches (:func:`batches_done`, warm-up batches
    included, continued on resume). Every other ``ModelCheckpoint`` argument works as usual (``dirpath``,
    ``filename``, ``save_last``, ``save_top_k``, ``monitor``...).
    """

    def __init__(self, every_n_train_batches: int, **kwargs: Any) -> None:
        other = {k: kwargs.pop(k) for k in ("every_n_train_steps", "every_n_epochs", "train_time_interval")
                 if k in kwargs}
        if any(v not in (None, 0) for v in other.values()):
            raise ValueError(f"BatchCheckpoint counts training batches: use every_n_train_batches only, not {other}")
        if int(every_n_train_batches) < 1:
            raise ValueError(f"every_n_train_batches must be >= 1, got {every_n_train_batches}")
        super().__init__(every_n_epochs=0, **kwargs)  # no epoch-end saves: the batch cadence is the only one
        self.every_n_train_batches = int(every_n_train_batches)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._should_skip_saving_checkpoint(trainer) or batches_done(trainer) % self.every_n_train_batches:
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run that stops between two cadence points (a batch budget, an interruption) still leaves last.ckpt.
        if self.save_last and not trainer.sanity_checking and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class StopAllRanksOnError(pl.Callback):
    """Under multi-process DDP, an exception on one rank stops every rank within seconds, its error shown once.

    Without it the ranks that did not fail wait in their next collective: with NCCL until the process group times
    out (30 min), with gloo they fail there with a second, misleading traceback ("Connection closed by peer").
    Lightning's subprocess launcher kills every rank when a rank it started *exits* with an error (its
    child-process observer looks every 5 s), but not when the launching rank (local rank 0) raises, and not while
    the failing rank hangs in its teardown. On an exception (``on_exception``: the rank that raised, before
    Lightning's own teardown), with more than one process:

    * the exception is marked ``segexpr_rank`` (this global rank): the console then reports it once and ends the
      process at once (``os._exit``) rather than through a Python shutdown that can hang (the process group's
      destructor, a library's non-daemon thread). With ``exit_after_s`` (the console) the process also exits with
      code 1 that many seconds after the error if its teardown hangs before that.
    * on the rank that started the others (Lightning's subprocess launcher): it waits up to ``grace_s`` for them
      to exit on their own (they may be failing too and reporting their own error: a non-finite loss stops every
      rank), then kills the rest (``Popen.kill``, as Lightning's observer does) and reaps them. Their list is
      emptied first, so Lightning's observer, which watches that same list, does not kill this process before it
      has reported its error. If one of them had exited with an error, the exception is also marked
      ``segexpr_after_rank = (rank, exit code)``: most likely a consequence (a collective whose peer died), which
      the console reports in one line after that rank's own error.

    ``segexpr fit|validate|test|predict`` adds it to every trainer (a no-op in a single process); a Python script
    may add it to its own ``Trainer(callbacks=[...])``.
    """

    def __init__(self, grace_s: float = 2.0, exit_after_s: float | None = None) -> None:
        super().__init__()
        self.grace_s = float(grace_s)
        self.exit_after_s = exit_after_s

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.world_size <= 1:
            return
        rank = trainer.global_rank
        with contextlib.suppress(AttributeError, TypeError):  # an exception type that takes no attributes
            exception.segexpr_rank = rank  # type: ignore[attr-defined]
        if self.exit_after_s is not None:
            _exit_later(self.exit_after_s, rank, exception)
        launched = getattr(getattr(trainer.strategy, "launcher", None), "procs", None)
        if not launched:
            return
        children = list(launched)
        launched.clear()  # Lightning's _ChildProcessObserver watches this list: from now on it kills nobody
        deadline = time.monotonic() + self.grace_s
        while any(child.poll() is None for child in children) and time.monotonic() < deadline:
            time.sleep(0.05)
        # the launcher's i-th process is local rank i + 1; this process is local rank 0
        failed = [(rank + i + 1, child.returncode) for i, child in enumerate(children) if child.returncode]
        for child in children:
            if child.poll() is None:
                child.kill()
        for child in children:
            with contextlib.suppress(Exception):
                child.wait(timeout=10)
        if failed:
            with contextlib.suppress(AttributeError, TypeError):
                exception.segexpr_after_rank = failed[0]  # type: ignore[attr-defined]


def _exit_later(seconds: float, rank: int, exception: BaseException) -> None:
    """End this process with code 1 in ``seconds``, naming ``exception`` (a daemon timer: it does not keep the
    process alive)."""
    error = f"{type(exception).__name__}: {(str(exception).strip().splitlines() or [''])[0]}"

    def stop() -> None:
        print(f"segexpr: rank {rank} was still tearing down {seconds:g} s after its error ({error}); exiting",
              file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(1)

    timer = threading.Timer(seconds, stop)
    timer.daemon = True
    timer.start()
