"""The SynthFACS edit benchmark as a Lightning callback.

* :class:`EditMetricsCallback` -- runs the benchmark at the end of validation/test epochs and logs it with
  ``pl_module.log_dict`` (``val/synthfacs/edit_psnr``, ...).
"""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from segexpr.evaluation.benchmark import BenchmarkResult, SynthFACSEditBenchmark
from segexpr.evaluation.recognizer import load_recognizer


class EditMetricsCallback(pl.Callback):
    """Log the SynthFACS edit benchmark at the end of validation and test epochs.

    ``metrics also logged in validate/test`` without touching the module: the callback calls
    ``pl_module.log_dict({"val/synthfacs/edit_psnr": ..., ...})`` from ``on_validation_epoch_end`` (and
    ``test/...`` from ``on_test_epoch_end``), so the values reach every logger, ``trainer.callback_metrics``
    and the dicts returned by ``trainer.validate``/``trainer.test``; checkpoint callbacks can monitor them.
    Validation judges faces of the SynthFACS ``val`` identities and test those of ``test``, so a checkpoint
    selected on ``val/...`` was never selected on the test set.

    Args:
        recognizer: the independent judge (an :class:`AUDiscriminatorModule`), or
        recognizer_ckpt: a path to its checkpoint (loaded once, safely). With neither, only the
            recogniser-free metrics are logged (PSNR/SSIM/L1, unwanted change, transfer PSNR, leakage, mIoU),
            and a warning says so once.
        size: benchmark image size (default: the module's ``image_size``).
        count: source faces of the benchmark (edits: ``count x 8``).
        every_n_epochs: during ``fit``, run on every n-th validation epoch (``validate``/``test`` always run).
        fid_features: ``"recognizer"`` (default: cheap), ``"auto"``, ``"inception"`` or ``"none"``.
        prefix: key infix (``<stage>/<prefix>/<metric>``).
    """

    def __init__(self, recognizer: nn.Module | None = None, recognizer_ckpt: str | Path | None = None,
                 size: int | None = None, count: int = 16, seed: int = 0, every_n_epochs: int = 1,
                 fid_features: str = "recognizer", batch_size: int = 32, prefix: str = "synthfacs") -> None:
        super().__init__()
        if recognizer is not None and recognizer_ckpt is not None:
            raise ValueError("give recognizer= or recognizer_ckpt=, not both")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.recognizer = recognizer
        self.recognizer_ckpt = Path(recognizer_ckpt) if recognizer_ckpt is not None else None
        self.size, self.count, self.seed, self.every_n_epochs = size, count, seed, every_n_epochs
        self.fid_features, self.batch_size, self.prefix = fid_features, batch_size, prefix
        self._benchmark: SynthFACSEditBenchmark | None = None  # the last one used (val or test split)
        self._benchmarks: dict[tuple[str, int], SynthFACSEditBenchmark] = {}
        self._warned = False
        self.last_result: BenchmarkResult | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.recognizer is None and self.recognizer_ckpt is not None:
            self.recognizer = load_recognizer(self.recognizer_ckpt)
        if self.recognizer is None and not self._warned:
            rank_zero_warn("EditMetricsCallback: no recogniser given; logging only the recogniser-free metrics "
                           "(PSNR/SSIM/L1, unwanted change, transfer PSNR, identity leakage, parsing mIoU). Expression "
                           "accuracy, AU error, FID/KID and identity preservation need an independently trained "
                           "recogniser (segexpr.evaluation.train_recognizer)")
            self._warned = True

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        size = int(self.size or getattr(pl_module, "image_size", 64))
        split = "val" if stage == "val" else "test"
        if (split, size) not in self._benchmarks:
            self._benchmarks[split, size] = SynthFACSEditBenchmark(size=size, count=self.count, seed=self.seed,
                                                                   batch_size=self.batch_size, split=split)
        self._benchmark = self._benchmarks[split, size]
        fid = self.fid_features if self.recognizer is not None or self.fid_features != "recognizer" else "none"
        result = self._benchmark.evaluate(pl_module, self.recognizer, fid_features=fid, device=pl_module.device)
        self.last_result = result
        pl_module.log_dict({f"{stage}/{self.prefix}/{k}": float(v) for k, v in result.metrics.items()},
                           batch_size=self._benchmark.count)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == "fit"
        if fitting and (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module, "test")
