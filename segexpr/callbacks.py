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


def process_start_time() -> tuple[float, str]:
    """When this process started (``time.time()`` seconds) and how that was found: ``"psutil"`` (when installed),
    ``"/proc/self/stat"`` (Linux: the kernel's start time of the process, 10-ms resolution), else
    ``"segexpr.callbacks import"`` (the time this module was imported: later than the process start, so the
    start-up it gives is too short by the interpreter's own start and the imports before this module)."""
    with contextlib.suppress(Exception):
        import psutil

        return float(psutil.Process().create_time()), "psutil"
    with contextlib.suppress(Exception):
        stat = Path("/proc/self/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": fields 3, 4, ... of proc(5)
        started_after_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in clock ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - started_after_boot), "/proc/self/stat"
    return _IMPORTED_AT, "segexpr.callbacks import"


_IMPORTED_AT = time.time()


class PhaseTimes(pl.Callback):
    """Where a fit's wall time goes, by phase: written to ``<run folder>/phase_times.json`` at the end of the fit.

    On global rank zero (other ranks record nothing), one clock runs from ``setup("fit")`` to ``on_fit_end`` and
    every instant of it is charged to exactly one phase, so the phases add up to the total:

    * ``startup``: process start (:func:`process_start_time`; its source is in the JSON) to ``setup("fit")``:
      interpreter, imports, config parsing, building the model and data;
    * ``setup``: ``setup`` to the first training epoch (model to device, summary, ...), sanity check excluded;
    * ``sanity_check``: the validation batches Lightning runs before training (``num_sanity_val_steps``);
    * ``warmup_batches``: ``on_train_batch_start`` to ``on_train_batch_end`` of batches before the module's
      ``max(segmenter_warmup_steps, critic_warmup_steps)`` (read from its attributes or ``hparams``; absent: 0),
      counted in training batches (:func:`batches_done`, continued on resume);
    * ``gan_batches``: the same for the other batches;
    * ``data_wait``: ``on_train_batch_end`` (or an epoch's start) to the next ``on_train_batch_start``: fetching
      the next batch (plus Lightning's logging between two batches);
    * ``validation``: the validation loops during training, without the two phases below;
    * ``result_image``: :meth:`ResultImage.write` (timed by wrapping each ResultImage's ``write`` for this fit):
      the grids written at each validation's end and at the end of training;
    * ``checkpoint``: ``trainer.save_checkpoint`` (wrapped for this fit): every checkpoint ModelCheckpoint writes;
    * ``other``: epoch ends, the end of training and teardown up to ``on_fit_end``.

    Per batch it costs one ``perf_counter`` call per hook and a few additions; it draws no random numbers and
    changes no tensor, so a fit with it trains the same weights as one without. The JSON is written atomically.

    The JSON's ``windows`` splits the training batches into windows of ``window`` batches (each window's ms per
    batch, and the data wait's), which shows whether batches get slower as the fit goes on.

    Args:
        path: the JSON file; ``None``: ``<trainer.log_dir>/phase_times.json`` (the run folder, as ResultImage's).
        window: training batches per entry of ``windows``.
    """

    PHASES = ("startup", "setup", "sanity_check", "warmup_batches", "gan_batches", "data_wait", "validation",
              "result_image", "checkpoint", "other")

    def __init__(self, path: str | None = None, window: int = 100) -> None:
        super().__init__()
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"PhaseTimes: window must be a positive number of training batches, got {window!r}")
        self.path = Path(path) if path is not None else None
        self.window = window
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self._active = False
        self._wrapped: list[tuple[Any, str]] = []

    # ------------------------------------------------------------------ the clock
    def _switch(self, phase: str) -> str:
        """Charge the time since the last switch to the current phase, make ``phase`` current; return the old one."""
        now = time.perf_counter()
        self.seconds[self._phase] += now - self._mark
        self._mark, previous, self._phase = now, self._phase, phase
        return previous

    def _timed(self, phase: str, function: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self._active:
                return function(*args, **kwargs)
            previous = self._switch(phase)
            self.counts[phase] += 1
            try:
                return function(*args, **kwargs)
            finally:
                self._switch(previous)
        return timed

    def _wrap(self, owner: Any, name: str, phase: str) -> None:
        """Time ``owner.name`` (a bound method) as ``phase`` for this fit: an instance attribute, removed after."""
        setattr(owner, name, self._timed(phase, getattr(owner, name)))
        self._wrapped.append((owner, name))

    def _unwrap(self) -> None:
        for owner, name in self._wrapped:
            vars(owner).pop(name, None)
        self._wrapped = []

    def output_path(self, trainer: pl.Trainer) -> Path:
        """Where the JSON goes: :attr:`path`, else ``<trainer.log_dir>/phase_times.json``."""
        if self.path is not None:
            return self.path
        return Path(trainer.log_dir or trainer.default_root_dir) / "phase_times.json"

    @staticmethod
    def warmup_batches(pl_module: pl.LightningModule) -> int:
        """``max(segmenter_warmup_steps, critic_warmup_steps)`` of the module (attributes, else hparams; else 0)."""
        hparams = getattr(pl_module, "hparams", {}) or {}
        values = [getattr(pl_module, key, None) if hasattr(pl_module, key) else hparams.get(key)
                  for key in ("segmenter_warmup_steps", "critic_warmup_steps")]
        return max([int(v) for v in values if isinstance(v, (int, float))] or [0])

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or trainer.global_rank != 0:
            return
        self._mark = time.perf_counter()
        self._fit_started = time.time()
        self._process_started, self._start_source = process_start_time()
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.seconds["startup"] = max(self._fit_started - self._process_started, 0.0)
        self.counts = {"warmup_batches": 0, "gan_batches": 0, "validation": 0, "sanity_check": 0,
                       "result_image": 0, "checkpoint": 0}
        self._phase = "setup"
        self._windows: list[tuple[int, float, float]] = []
        self._warmup = self.warmup_batches(pl_module)
        self._unwrap()
        self._wrap(trainer, "save_checkpoint", "checkpoint")
        for callback in trainer.callbacks:
            if isinstance(callback, ResultImage):
                self._wrap(callback, "write", "result_image")
        self._active = True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active:
            phase = "sanity_check" if trainer.sanity_checking else "validation"
            self._before_validation = self._switch(phase)
            self.counts[phase] += 1

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active:
            self._switch(self._before_validation)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active:
            self._switch("data_wait")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._active:
            # Lightning counts the batch as ready before this hook: the index of this batch is that count - 1
            phase = "warmup_batches" if batches_done(trainer) - 1 < self._warmup else "gan_batches"
            self._switch(phase)
            self.counts[phase] += 1

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._active:
            self._switch("data_wait")
            done = self.counts["warmup_batches"] + self.counts["gan_batches"]
            if done % self.window == 0:  # cumulative clocks now; the report gives each window's share
                self._windows.append((done, self.seconds["warmup_batches"] + self.seconds["gan_batches"],
                                      self.seconds["data_wait"]))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active:
            self._switch("other")

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active:
            return
        self._switch("other")
        self._fit_ended = time.time()
        self._active = False
        self._unwrap()
        path = self.write(trainer)
        rank_zero_info(f"segexpr: phase times written to {path}")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._active = False
        self._unwrap()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._active = False
            self._unwrap()

    # ------------------------------------------------------------------ the report
    def _window_report(self) -> list[dict[str, Any]]:
        """Per window of :attr:`window` training batches: the batches' own ms per batch and the data wait's."""
        rows, previous = [], (0, 0.0, 0.0)
        for done, batch_s, wait_s in self._windows:
            count = done - previous[0]
            rows.append({"batches": [previous[0], done],
                         "batch_ms": round(1e3 * (batch_s - previous[1]) / count, 3),
                         "data_wait_ms": round(1e3 * (wait_s - previous[2]) / count, 3)})
            previous = (done, batch_s, wait_s)
        return rows

    def report(self) -> dict[str, Any]:
        """The JSON's content: seconds by phase, their sum, the total (process start to ``on_fit_end`` by the
        wall clock, measured apart from the phases' ``perf_counter`` clock), counts, per-batch milliseconds."""
        total = self._fit_ended - self._process_started
        batches = self.counts["warmup_batches"] + self.counts["gan_batches"]

        def per(phase: str, count: int) -> float | None:
            return round(1e3 * self.seconds[phase] / count, 3) if count else None

        return {
            "phases_s": {k: round(v, 4) for k, v in self.seconds.items()},
            "phases_sum_s": round(sum(self.seconds.values()), 4),
            "total_s": round(total, 4),
            "total": "process start to on_fit_end (time.time()); the phases, timed apart, add up to it",
            "startup_source": self._start_source,
            "process_started_at": self._process_started,
            "fit_started_at": self._fit_started,
            "warmup_batch_limit": self._warmup,
            "counts": dict(self.counts),
            "windows": self._window_report(),
            "ms_per_batch": {"warmup_batches": per("warmup_batches", self.counts["warmup_batches"]),
                             "gan_batches": per("gan_batches", self.counts["gan_batches"]),
                             "data_wait": per("data_wait", batches)},
        }

    def write(self, trainer: pl.Trainer) -> Path:
        """Write :meth:`report` to :meth:`output_path` atomically (replacing an earlier one of this path)."""
        import json

        from segexpr.files import write_text

        return write_text(self.output_path(trainer), json.dumps(self.report(), indent=2) + "\n", overwrite=True)


__all__.append("PhaseTimes")
