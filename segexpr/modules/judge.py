"""``JudgeModule``: trains one :class:`~segexpr.models.judges.ExpressionJudge` on labelled real images.

The judge scores edits, so it only ever sees real images (expression cross-entropy with label smoothing, so
that an ensemble's averaged probabilities stay informative, plus AU regression); augmentation is the
DataModule's business (:mod:`segexpr.evaluation.judge`). One AdamW optimiser with a one-cycle schedule over
``max_steps`` optimiser steps: a fixed budget gives the same judge for the same seed and data.
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from segexpr.losses.gan import au_regression_loss
from segexpr.models.judges import create_judge

__all__ = ["JudgeModule"]


class JudgeModule(pl.LightningModule):
    """Args:
        family: judge family (:data:`segexpr.models.judges.JUDGE_FAMILIES`).
        image_size: training image side.
        input_size: the side the judge's body reads them at (:class:`~segexpr.models.judges.ExpressionJudge`;
            ``None``: ``image_size``).
        max_steps: optimiser steps of the one-cycle schedule (pass the same number to the Trainer).
        lr, weight_decay: AdamW peak learning rate and decoupled weight decay.
        label_smoothing: of the expression cross-entropy.
        au_weight: weight of the AU regression (MSE of intensities in ``[0, 1]``).

    A batch holds ``image`` float ``[B, 3, S, S]`` in ``[-1, 1]``, ``expression`` int64 ``[B]`` and ``aus``
    float ``[B, 17]`` in ``[0, 1]``; optionally ``expression_probs`` float ``[B, 8]`` (soft labels, summing to 1),
    which the cross-entropy then uses instead of ``expression``.
    """

    def __init__(self, family: str = "resnet18_3stage", image_size: int = 64, input_size: int | None = None,
                 max_steps: int = 1500,
                 lr: float = 3e-3, weight_decay: float = 1e-4, label_smoothing: float = 0.1,
                 au_weight: float = 1.0) -> None:
        super().__init__()
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters()
        self.judge = create_judge(family, image_size=image_size, input_size=input_size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.judge(images)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, aus = self.judge(batch["image"])
        # soft labels where the data has them (cross-faded images), else the class index
        target = batch.get("expression_probs", batch["expression"])
        ce = F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)
        au = au_regression_loss(aus, batch["aus"])
        loss = ce + self.hparams.au_weight * au
        accuracy = (logits.argmax(1) == batch["expression"]).float().mean()
        self.log_dict({"train/expression_ce": ce, "train/au_mse": au, "train/accuracy": accuracy},
                      prog_bar=False, on_step=True)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.hparams.lr,
                                                       total_steps=self.hparams.max_steps, pct_start=0.15)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
