"""``AUDiscriminatorModule``: the multi-class AU discriminator trained alone as an expression / AU recogniser.

Two uses:

1. Pre-training the GAN's discriminator heads (``JointModule(discriminator=AUDiscriminatorModule(...))``).
2. An **independent judge** of edits: a separately trained instance (never the GAN's own discriminator)
   scores the expression accuracy / AU error of edited images, and :meth:`AUDiscriminatorModule.features`
   supplies the features for FID/KID when Inception weights are unavailable.

Training: expression cross-entropy + AU regression from the global critic's heads on real images, plus
each local critic's AU regression on its region crop (boxes from the batch's parsing ``mask`` moments or
``landmarks``; skipped when the batch has neither, or ``local=False``). The real/fake heads are not trained
here (there are no fakes).
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import MeanAbsoluteError
from torchmetrics.classification import MulticlassAccuracy

from segexpr.losses.gan import au_regression_loss, expression_classification_loss
from segexpr.models.discriminators import AUDiscriminator
from segexpr.ops.regions import boxes_from_landmarks, boxes_from_masks, canonical_boxes
from segexpr.ops.regions import hard_regions
from segexpr.modules.hparams import constructor_arguments

__all__ = ["AUDiscriminatorModule", "real_region_boxes"]


def real_region_boxes(discriminator: AUDiscriminator, batch: dict[str, Any]) -> torch.Tensor | None:
    """Region boxes ``[B, R, 4]`` of real images from their labels: mask moments, else landmarks, else ``None``.

    Masks win over landmarks because they are what the segmentation-conditioned generator crops with.
    """
    regions = discriminator.regions
    if not regions:
        return None
    images = batch["image"]
    if batch.get("mask") is not None:
        masks = hard_regions(batch["mask"]).to(images.dtype)
        return boxes_from_masks(masks, default_boxes=canonical_boxes(regions).to(images.device))
    if batch.get("landmarks") is not None:
        return boxes_from_landmarks(batch["landmarks"], tuple(images.shape[-2:]), regions)
    return None


class AUDiscriminatorModule(pl.LightningModule):
    """Expression / AU recogniser built from :class:`~segexpr.models.discriminators.AUDiscriminator`.

    Args:
        image_size: training image size (recorded; also the size ``JointModule`` trains at).
        discriminator_kwargs: further arguments of ``AUDiscriminator`` (``base_channels``, ``n_layers``,
            ``regions``, ``au_free_channels``, ``crop_size``, ``spectral_norm``, ...).
        lr: Adam learning rate.
        betas: Adam betas.
        lambda_cls: weight of the expression cross-entropy.
        lambda_au: weight of the global AU regression.
        lambda_local: weight of the local critics' AU regression (0 or ``local=False`` disables).
        au_loss: ``"mse"`` or ``"l1"`` (see :func:`segexpr.losses.au_regression_loss`).
        local: train the local AU heads when the batch carries masks or landmarks.

    Batches: ``image`` float ``[B, 3, H, W]`` in ``[-1, 1]`` with ``expression`` int64 ``[B]`` and/or ``aus``
    float ``[B, 17]``; optional ``mask`` / ``landmarks`` for the local heads.

    Logged: ``train/loss``, ``train/expression_ce``, ``train/au_loss``, ``train/local_au_loss``;
    ``val/expression_acc`` (torchmetrics ``MulticlassAccuracy``, micro), ``val/au_mae`` (``MeanAbsoluteError``).
    ``predict_step`` returns ``{"expression_probs": [B, 8], "aus": [B, 17]}``.
    """

    def __init__(
        self,
        image_size: int = 128,
        discriminator_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        lambda_cls: float = 1.0,
        lambda_au: float = 1.0,
        lambda_local: float = 1.0,
        au_loss: str = "mse",
        local: bool = True,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if au_loss not in ("mse", "l1"):
            raise ValueError(f"unknown au_loss {au_loss!r}; expected 'mse' or 'l1'")
        for name, value in (("lambda_cls", lambda_cls), ("lambda_au", lambda_au), ("lambda_local", lambda_local)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.save_hyperparameters(constructor_arguments(AUDiscriminatorModule, locals()))
        self.image_size = int(image_size)
        self.discriminator = AUDiscriminator(image_size=image_size, **dict(discriminator_kwargs or {}))
        num_expressions = self.discriminator.global_d.expression_head.out_features
        self.val_accuracy = MulticlassAccuracy(num_classes=num_expressions, average="micro")
        self.val_au_mae = MeanAbsoluteError()

    # ------------------------------------------------------------------ inference
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Global heads on ``images`` ``[B, 3, H, W]``: ``adv``, ``expression`` logits ``[B, 8]``, ``aus`` ``[B, 17]``."""
        return self.discriminator.global_d(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features: the global critic's trunk output average-pooled, float ``[B, F]``.

        These are what the expression and AU heads read, so they are expression-sensitive features for
        FID/KID (``segexpr.metrics``) when Inception weights are not available.
        """
        trunk = self.discriminator.global_d.trunk
        return trunk(images, "AUDiscriminatorModule.features").mean(dim=(2, 3))

    @property
    def num_features(self) -> int:
        """Length ``F`` of :meth:`features`."""
        return self.discriminator.global_d.trunk.out_channels

    # ------------------------------------------------------------------ losses
    def _losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        images = batch["image"]
        expression, aus = batch.get("expression"), batch.get("aus")
        if expression is None and aus is None:
            raise KeyError("AUDiscriminatorModule needs batches with 'expression' and/or 'aus' labels")
        hp = self.hparams
        boxes = real_region_boxes(self.discriminator, batch) if hp.local and hp.lambda_local > 0 else None
        out = self.discriminator(images, boxes)
        zero = images.new_zeros(())
        ce = expression_classification_loss(out["global"]["expression"], expression) if expression is not None else zero
        au = au_regression_loss(out["global"]["aus"], aus.float(), hp.au_loss) if aus is not None else zero
        local = zero
        if out["local"] and aus is not None:
            targets = self.discriminator.region_targets(aus.float())
            local = torch.stack([au_regression_loss(out["local"][r]["aus"], targets[r], hp.au_loss)
                                 for r in out["local"]]).mean()
        loss = hp.lambda_cls * ce + hp.lambda_au * au + hp.lambda_local * local
        return loss, {"loss": loss, "expression_ce": ce, "au_loss": au, "local_au_loss": local}, out["global"]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logs, _ = self._losses(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"AUDiscriminatorModule: non-finite loss {float(loss)} at global step "
                                     f"{self.global_step} ({ {k: float(v) for k, v in logs.items()} })")
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, _, out = self._losses(batch)
        batch_size = batch["image"].shape[0]
        self.log("val/loss", loss, sync_dist=True, batch_size=batch_size)
        if batch.get("expression") is not None:
            self.val_accuracy(out["expression"], batch["expression"])
            self.log("val/expression_acc", self.val_accuracy, prog_bar=True, batch_size=batch_size)
        if batch.get("aus") is not None:
            self.val_au_mae(out["aus"], batch["aus"].float())
            self.log("val/au_mae", self.val_au_mae, batch_size=batch_size)

    def predict_step(self, batch: dict[str, Any] | torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """``{"expression_probs": float [B, 8] (softmax), "aus": float [B, 17] in [0, 1]}``."""
        images = batch["image"] if isinstance(batch, dict) else batch
        out = self(images)
        return {"expression_probs": out["expression"].softmax(dim=1), "aus": out["aus"]}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The feature classifier and the real/fake heads get no gradient here; Adam skips parameters without one.
        return torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas))

