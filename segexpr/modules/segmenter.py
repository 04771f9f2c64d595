"""``SegmenterModule``: trains and evaluates a face-parsing network on batches with ``image`` + ``mask``.

Example (Python)::

    import pytorch_lightning as pl
    from segexpr.modules.segmenter import SegmenterModule
    module = SegmenterModule(arch="unet", segmenter_kwargs={"base_channels": 16})
    pl.Trainer(max_steps=1000).fit(module, datamodule=...)
    masks = module.segmenter(images).argmax(1)        # the network itself is ``module.segmenter``

Example (CLI)::

    segexpr fit --config examples/configs/segmenter_synthetic.yaml

Logged metrics: ``train/loss`` (+ ``train/loss_main``, ``train/loss_aux``), ``val/loss``, ``val/miou``,
``val/mean_f1``, ``val/pixel_accuracy``, ``val/iou_<class>``, ``val/f1_<class>`` (classes present in the
validation data or predictions), and the same under ``test/``. Validation overlays (image | target |
prediction) go to the active logger: W&B (``log_image``), TensorBoard (``add_image``), otherwise PNG files
under ``<log_dir>/overlays/``; only global rank zero writes them.

Multi-GPU: nothing here is device- or world-size-specific; run any number of GPUs/nodes with
``Trainer(strategy="ddp", devices=N, num_nodes=M)``. The metrics are torchmetrics objects (module
attributes), so their confusion matrices are summed across processes before ``compute``. For synchronised
BatchNorm pass ``Trainer(sync_batchnorm=True)`` (``trainer.sync_batchnorm: true`` in a config): Lightning
converts every ``BatchNorm2d`` of the segmenter to ``SyncBatchNorm``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from pytorch_lightning.utilities import rank_zero_warn

from segexpr.labels import CELEBAMASK_HQ_CLASSES
from segexpr.losses.segmentation import dice_loss, ohem_cross_entropy
from segexpr.metrics.parsing import ParsingMetrics
from segexpr.models.segmenters import Segmenter, create_segmenter, list_segmenters
from segexpr.visualize import overlay
from segexpr.modules.hparams import constructor_arguments, strip_weight_sources

__all__ = ["SegmenterModule", "LOSSES", "OPTIMIZERS"]

#: Accepted values of ``loss``.
LOSSES: tuple[str, ...] = ("ce", "ohem_ce", "ohem_ce+dice")
#: Accepted values of ``optimizer``.
OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")


class SegmenterModule(pl.LightningModule):
    """Face parsing as a LightningModule.

    Args:
        arch: ``"bisenet"`` or ``"unet"`` (see :func:`segexpr.models.segmenters.list_segmenters`).
        num_classes: number of classes (19 = CelebAMask-HQ order A).
        loss: ``"ce"``, ``"ohem_ce"`` (face-parsing's OHEM, default) or ``"ohem_ce+dice"``.
        aux_weight: weight of each auxiliary head's loss (BiSeNet; face-parsing uses 1). 0 disables them.
        dice_weight: weight of the Dice term for ``loss="ohem_ce+dice"``.
        ohem_thresh: OHEM probability threshold (face-parsing: 0.7).
        ohem_min_kept: OHEM minimum kept pixels per batch (default 1/16 of the labelled pixels).
        ignore_index: mask value excluded from losses and metrics.
        lr: peak learning rate (AdamW ~1e-3, SGD ~1e-2).
        weight_decay: applied to convolution/linear weights only (not to norms and biases).
        optimizer: ``"adamw"`` or ``"sgd"`` (momentum ``momentum``, as in face-parsing).
        momentum: SGD momentum.
        scheduler: ``"poly"`` (``lr * (1 - step / total) ** poly_power`` over the Trainer's total number of
            optimiser steps, i.e. ``max_steps`` or ``max_epochs`` x batches, after a linear warm-up of
            ``warmup_steps``) or ``"none"``.
        poly_power: exponent of the poly schedule (0.9).
        warmup_steps: linear warm-up steps.
        segmenter_kwargs: architecture options passed to :func:`create_segmenter` (e.g.
            ``{"backbone_width": 32}`` or ``{"base_channels": 16, "depth": 4}``).
        class_names: names for metric keys; default CelebAMask-HQ order A for 19 classes.
        num_overlays: validation images drawn as overlays once per validation run (0 disables).
        pretrained: a ``SegmenterModule`` checkpoint to initialise the network from (e.g. a parser trained on
            CelebAMask-HQ), or a plain state_dict of the network; read once, with ``weights_only=True``. Saved
            checkpoints record it under ``segexpr_initialized_from``, not in their hyperparameters, so they
            load without the file.

    Batches: dicts with ``image`` float ``[B, 3, H, W]`` in ``[-1, 1]`` and ``mask`` int64 ``[B, H, W]``
    (``mask`` is not needed for ``predict``). ``forward(images)`` returns logits ``[B, C, H, W]``;
    ``predict_step`` returns class maps int64 ``[B, H, W]``.
    """

    def __init__(
        self,
        arch: str = "bisenet",
        num_classes: int = 19,
        loss: str = "ohem_ce",
        aux_weight: float = 1.0,
        dice_weight: float = 1.0,
        ohem_thresh: float = 0.7,
        ohem_min_kept: int | None = None,
        ignore_index: int = 255,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        scheduler: str = "poly",
        poly_power: float = 0.9,
        warmup_steps: int = 0,
        segmenter_kwargs: dict[str, Any] | None = None,
        class_names: Sequence[str] | None = None,
        num_overlays: int = 4,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if str(arch).lower() not in list_segmenters():
            raise ValueError(f"unknown arch {arch!r}; available: {list_segmenters()}")
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
        if scheduler not in ("poly", "none"):
            raise ValueError(f"unknown scheduler {scheduler!r}; expected 'poly' or 'none'")
        for name, value in (("lr", lr),):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        for name, value in (("aux_weight", aux_weight), ("dice_weight", dice_weight),
                            ("weight_decay", weight_decay), ("warmup_steps", warmup_steps),
                            ("num_overlays", num_overlays), ("poly_power", poly_power)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.save_hyperparameters(constructor_arguments(SegmenterModule, locals()))
        self.segmenter: Segmenter = create_segmenter(arch, num_classes=num_classes, **(segmenter_kwargs or {}))
        if pretrained is not None:
            self.load_segmenter_weights(pretrained)
        if class_names is None:
            class_names = (CELEBAMASK_HQ_CLASSES if num_classes == len(CELEBAMASK_HQ_CLASSES)
                           else [f"class_{i}" for i in range(num_classes)])
        self.class_names = tuple(class_names)
        self.val_metrics = ParsingMetrics(num_classes, self.class_names, ignore_index=ignore_index)
        self.test_metrics = ParsingMetrics(num_classes, self.class_names, ignore_index=ignore_index)
        self._overlay_batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ forward / losses
    def load_segmenter_weights(self, path: str) -> None:
        """Initialise the network from a ``SegmenterModule`` checkpoint or a plain state_dict of the network
        (read with ``weights_only=True``; mismatched keys or shapes are reported by name). See
        :func:`segexpr.io.checkpoints.load_segmenter_weights`."""
        from segexpr.io.checkpoints import load_segmenter_weights

        load_segmenter_weights(self.segmenter, path)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The weights are in the checkpoint: loading it must not need the pretrained files again.
        strip_weight_sources(checkpoint, ("pretrained",), ("segmenter_kwargs", "pretrained_backbone"))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits float ``[B, C, H, W]`` for images float ``[B, 3, H, W]`` in ``[-1, 1]``."""
        return self.segmenter(images)

    def criterion(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The configured loss (``loss``) of logits ``[B, C, H, W]`` against a mask ``[B, H, W]``."""
        hp = self.hparams
        if hp.loss == "ce":
            return F.cross_entropy(logits.float(), mask, ignore_index=hp.ignore_index)
        value = ohem_cross_entropy(logits, mask, hp.ohem_thresh, hp.ohem_min_kept, hp.ignore_index)
        if hp.loss == "ohem_ce+dice":
            value = value + hp.dice_weight * dice_loss(logits, mask, hp.ignore_index)
        return value

    @staticmethod
    def _unpack(batch: Any, need_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(batch, torch.Tensor):
            images, mask = batch, None
        elif isinstance(batch, dict):
            if "image" not in batch:
                raise KeyError(f"SegmenterModule expects batches with an 'image' key, got keys {sorted(batch)}")
            images, mask = batch["image"], batch.get("mask")
        elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
            images, mask = batch[0], batch[1] if len(batch) > 1 else None
        else:
            raise TypeError(f"unsupported batch type {type(batch).__name__}; expected a dict with 'image' and 'mask'")
        if need_mask:
            if mask is None:
                raise KeyError("SegmenterModule needs a 'mask' (int64 [B, H, W], order A) in training/evaluation "
                               "batches; use a DataModule that provides parsing masks")
            if mask.dim() != 3 or mask.shape[0] != images.shape[0] or mask.shape[1:] != images.shape[2:]:
                raise ValueError(f"mask {tuple(mask.shape)} does not match image {tuple(images.shape)}; "
                                 f"expected [B, H, W]")
            mask = mask.long()
        return images, mask

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, mask = self._unpack(batch, need_mask=True)
        use_aux = self.hparams.aux_weight > 0
        out = self.segmenter(images, return_aux=use_aux) if use_aux else self.segmenter(images)
        logits, aux = (out.logits, out.aux) if use_aux else (out, ())
        main = self.criterion(logits, mask)
        loss = main
        log = {"train/loss_main": main}
        if aux:
            aux_loss = sum(self.criterion(a, mask) for a in aux)
            loss = loss + self.hparams.aux_weight * aux_loss
            log["train/loss_aux"] = aux_loss
        self.log_dict(log, prog_bar=False, batch_size=images.shape[0])
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _eval_step(self, batch: Any, batch_idx: int, stage: str) -> torch.Tensor:
        images, mask = self._unpack(batch, need_mask=True)
        logits = self.segmenter(images)
        loss = self.criterion(logits, mask)
        preds = logits.argmax(1)
        metrics = self.val_metrics if stage == "val" else self.test_metrics
        metrics.update(preds, mask)
        self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=images.shape[0])
        if (stage == "val" and batch_idx == 0 and self.hparams.num_overlays > 0 and self._overlay_batch is None
                and not self.trainer.sanity_checking and self.trainer.is_global_zero):
            n = self.hparams.num_overlays
            self._overlay_batch = (images[:n].detach().float().cpu(), mask[:n].cpu(), preds[:n].cpu())
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._eval_step(batch, batch_idx, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Class maps int64 ``[B, H, W]`` for a batch (dict with ``image``, a tensor, or a tuple)."""
        images, _ = self._unpack(batch, need_mask=False)
        return self.segmenter(images).argmax(1)

    def _log_scores(self, metrics: ParsingMetrics, stage: str) -> None:
        if int(metrics.confmat.sum()) == 0 and not self.trainer.world_size > 1:
            metrics.reset()
            return
        scores = metrics.compute()  # confusion matrices are summed across processes here
        self.log(f"{stage}/miou", scores.pop("miou"), prog_bar=True)
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()})
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_scores(self.val_metrics, "val")
        if self._overlay_batch is not None:
            self._log_overlays(*self._overlay_batch)
            self._overlay_batch = None

    def on_test_epoch_end(self) -> None:
        self._log_scores(self.test_metrics, "test")

    # ------------------------------------------------------------------ overlays
    def overlay_grid(self, images: torch.Tensor, mask: torch.Tensor, preds: torch.Tensor) -> torch.Tensor:
        """Grid float ``[3, H', W']`` in ``[0, 1]``; one row per image: image | target overlay | prediction overlay."""
        valid_mask = torch.where((mask >= 0) & (mask < self.hparams.num_classes), mask, torch.zeros_like(mask))
        if self.hparams.num_classes > len(CELEBAMASK_HQ_CLASSES):
            valid_mask, preds = valid_mask % len(CELEBAMASK_HQ_CLASSES), preds % len(CELEBAMASK_HQ_CLASSES)
        rows = torch.stack([images.clamp(-1, 1), overlay(images.clamp(-1, 1), valid_mask),
                            overlay(images.clamp(-1, 1), preds)], dim=1).flatten(0, 1)
        return torchvision.utils.make_grid((rows + 1) / 2, nrow=3, padding=2, pad_value=1.0).clamp(0, 1)

    def _log_overlays(self, images: torch.Tensor, mask: torch.Tensor, preds: torch.Tensor) -> None:
        if not self.trainer.is_global_zero:
            return
        from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

        grid = self.overlay_grid(images, mask, preds)
        step = self.global_step
        saved_png = False
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="val/overlays", images=[grid], step=step,
                                 caption=["image | target | prediction"])
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/overlays", grid, global_step=step)
            elif not saved_png:
                self._save_png(grid, getattr(logger, "log_dir", None) or self.trainer.default_root_dir, step)
                saved_png = True
        if not self.loggers:
            self._save_png(grid, self.trainer.default_root_dir, step)

    @staticmethod
    def _save_png(grid: torch.Tensor, log_dir: str | Path, step: int) -> None:
        path = Path(log_dir) / "overlays" / f"val_step{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        torchvision.utils.save_image(grid, path)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay = [p for p in self.segmenter.parameters() if p.requires_grad and p.dim() > 1]
        no_decay = [p for p in self.segmenter.parameters() if p.requires_grad and p.dim() <= 1]
        groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if hp.optimizer == "sgd":
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum)
        else:
            opt = torch.optim.AdamW(groups, lr=hp.lr)
        if hp.scheduler == "none":
            return opt
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else math.inf
        if not math.isfinite(total) or total <= 0:
            rank_zero_warn("SegmenterModule: the poly schedule needs a finite max_steps or max_epochs; "
                           "keeping the learning rate constant")
            total = math.inf
        warmup, power = int(hp.warmup_steps), float(hp.poly_power)

        def poly(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if math.isinf(total):
                return 1.0
            return max(1.0 - step / float(total), 0.0) ** power

        sched = torch.optim.lr_scheduler.LambdaLR(opt, poly)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}
