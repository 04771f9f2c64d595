"""JointModule's validation/test diagnostics as torchmetrics (summed over DDP ranks before ``compute``)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy

from segexpr.labels import NUM_CLASSES, NUM_EXPRESSIONS
from segexpr.metrics.parsing import ParsingMetrics

__all__ = ["EvaluationDiagnostics"]


class EvaluationDiagnostics(nn.Module):
    """Self-reconstruction L1, the GAN critic's accuracy on label edits, paired L1s where the data knows the
    answer (SynthFACS) and parsing scores. ``d_acc_edit`` is judged by the GAN's *own* discriminator: a training
    diagnostic, not an evaluation (``segexpr.evaluation`` uses an independent recogniser)."""

    def __init__(self, ignore_index: int = 255) -> None:
        super().__init__()
        self.d_acc_edit = MulticlassAccuracy(num_classes=NUM_EXPRESSIONS, average="micro")
        self.recon_l1, self.transfer_l1_gt, self.edit_l1_gt = MeanMetric(), MeanMetric(), MeanMetric()
        self.parsing = ParsingMetrics(NUM_CLASSES, ignore_index=ignore_index)

    @torch.no_grad()
    def update(self, generator: nn.Module, coder: nn.Module, discriminator: nn.Module, batch: Mapping[str, Any],
               region_kwargs: Mapping[str, Any], batch_idx: int, manipulate: bool, transfer: bool,
               parsing_logits: torch.Tensor | None, parsing_mask: torch.Tensor | None) -> dict[str, Metric]:
        """Update with one batch; returns ``{name: metric}`` to log (parsing is logged at epoch end)."""
        images = batch["image"]
        logged: dict[str, Metric] = {}

        def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a - b).abs().mean(dim=(1, 2, 3))

        self.recon_l1.update(l1(generator(images, coder.from_image(images), **region_kwargs).image, images))
        logged["recon_l1"] = self.recon_l1
        targets = (torch.arange(images.shape[0], device=images.device) + batch_idx) % NUM_EXPRESSIONS
        edited = generator(images, coder.from_label(targets), **region_kwargs).image
        self.d_acc_edit.update(discriminator.global_d(edited)["expression"], targets)
        logged["d_acc_edit"] = self.d_acc_edit
        if manipulate and batch.get("edit_expression") is not None and batch.get("edit_target") is not None:
            labelled = generator(images, coder.from_label(batch["edit_expression"].long()), **region_kwargs).image
            self.edit_l1_gt.update(l1(labelled, batch["edit_target"]))
            logged["edit_l1_gt"] = self.edit_l1_gt
        if transfer and batch.get("reference_image") is not None and batch.get("transfer_target") is not None:
            swapped = generator(images, coder.from_image(batch["reference_image"]), **region_kwargs).image
            self.transfer_l1_gt.update(l1(swapped, batch["transfer_target"]))
            logged["transfer_l1_gt"] = self.transfer_l1_gt
        if parsing_logits is not None and parsing_mask is not None:
            self.parsing.update(parsing_logits, parsing_mask.long())
        return logged
