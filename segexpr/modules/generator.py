"""``GeneratorModule``: the hierarchical generator + expression coder, trained alone as an autoencoder.

Self-reconstruction pre-training (no discriminator): ``code = coder.from_image(x)``,
``y = generator(x, code, region_masks | landmarks)`` and ``y ≈ x`` (L1). Because the GANimation output is
``attention * x + (1 - attention) * colour``, a bare L1 is solved by ``attention = 1`` (copy the input) and
teaches nothing; so the global generator's colour head is also trained to reproduce the face (``lambda_color``)
and GANimation's attention regulariser (mean + TV) keeps the attention from saturating. When the batch has ``aus`` / ``expression`` labels, the code is also
supervised to be readable as those labels (``coder.to_aus`` / ``coder.to_expression_logits``), so the
reference encoder learns an *expression* code rather than an arbitrary one.

The trained networks are ``module.generator`` (:class:`~segexpr.models.generators.HierarchicalGenerator`) and
``module.coder`` (:class:`~segexpr.models.generators.ExpressionCoder`); :class:`~segexpr.modules.joint.JointModule`
accepts a ``GeneratorModule`` (or its constructor arguments) and takes both.
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import MeanAbsoluteError
from torchmetrics.image import PeakSignalNoiseRatio

from segexpr.losses.gan import (
    attention_regularization,
    au_regression_loss,
    expression_classification_loss,
    self_reconstruction_loss,
)
from segexpr.gan.objectives import image_code_loss
from segexpr.models.generators import ExpressionCoder, GeneratorOutput, HierarchicalGenerator, create_generator
from segexpr.ops.regions import hard_regions
from segexpr.modules.hparams import constructor_arguments

__all__ = ["GeneratorModule", "generator_region_inputs"]


def generator_region_inputs(
    generator: HierarchicalGenerator, batch: dict[str, Any]
) -> dict[str, torch.Tensor | None]:
    """``region_masks`` / ``landmarks`` keyword arguments for ``generator`` from a batch's labels.

    ``region_source="segmenter"`` uses the labelled parsing ``mask`` (``hard_regions``), ``"landmarks"`` the
    batch ``landmarks``, ``"none"`` nothing. Raises ``KeyError`` naming the missing key.
    """
    source = generator.region_source
    if source == "segmenter":
        if batch.get("mask") is None:
            raise KeyError("region_source='segmenter' without a segmenter needs batches with a parsing 'mask' "
                           "(int64 [B, H, W], order A); use region_source='landmarks' or 'none' otherwise")
        return {"region_masks": hard_regions(batch["mask"]).to(batch["image"].dtype), "landmarks": None}
    if source == "landmarks":
        if batch.get("landmarks") is None:
            raise KeyError("region_source='landmarks' needs batches with 'landmarks' (float [B, 68, 2])")
        return {"region_masks": None, "landmarks": batch["landmarks"]}
    return {"region_masks": None, "landmarks": None}


class GeneratorModule(pl.LightningModule):
    """Hierarchical generator + expression coder as a LightningModule (self-reconstruction training).

    Args:
        generator_kwargs: arguments of :func:`segexpr.models.generators.create_generator`, e.g.
            ``{"region_source": "segmenter", "base_channels": 64, "n_down": 2, "n_res": 6, "crop_size": 32}``
            (``name`` selects ``"hierarchical"`` (default) or ``"global"``; ``code_dim`` defaults to the coder's).
        coder_kwargs: arguments of :class:`~segexpr.models.generators.ExpressionCoder` (``code_dim`` 64, ...).
        lr: Adam learning rate (1e-4).
        betas: Adam betas ((0.5, 0.999), the GAN setting, so the weights transfer to ``JointModule`` smoothly).
        lambda_rec: weight of the self-reconstruction L1.
        lambda_attn_mean, lambda_attn_tv: GANimation attention regulariser weights (0.1, 1e-5).
        lambda_code: weight of :func:`image_code_loss` (readout + alignment of the image code with its AU code)
            on batches with labels; 0 disables.
        lambda_color: weight of the colour-path reconstruction ``L1(colour, x)`` of the global generator. Without
            it the autoencoder is solved by ``attention -> 1`` (copy the input) and the decoder learns nothing.

    Batches: ``image`` float ``[B, 3, H, W]`` in ``[-1, 1]``; ``mask`` (region_source="segmenter") or
    ``landmarks`` (region_source="landmarks"); optional ``aus`` / ``expression``.

    Logged: ``train/loss``, ``train/recon_l1``, ``train/color_l1``, ``train/attention_mean``, ``train/code_loss``; ``val/recon_l1``,
    ``val/psnr``, ``val/code_au_mae`` (when ``aus`` are present). ``predict_step`` returns reconstructions
    ``[B, 3, H, W]`` in ``[-1, 1]``.
    """

    def __init__(
        self,
        generator_kwargs: dict[str, Any] | None = None,
        coder_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        lambda_rec: float = 10.0,
        lambda_attn_mean: float = 0.1,
        lambda_attn_tv: float = 1e-5,
        lambda_code: float = 1.0,
        lambda_color: float = 10.0,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        for name, value in (("lambda_rec", lambda_rec), ("lambda_attn_mean", lambda_attn_mean),
                            ("lambda_attn_tv", lambda_attn_tv), ("lambda_code", lambda_code),
                            ("lambda_color", lambda_color)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.save_hyperparameters(constructor_arguments(GeneratorModule, locals()))
        coder_kwargs = dict(coder_kwargs or {})
        generator_kwargs = dict(generator_kwargs or {})
        self.coder = ExpressionCoder(**coder_kwargs)
        generator_kwargs.setdefault("code_dim", self.coder.code_dim)
        if generator_kwargs["code_dim"] != self.coder.code_dim:
            raise ValueError(f"generator code_dim {generator_kwargs['code_dim']} differs from the coder's "
                             f"code_dim {self.coder.code_dim}")
        self.generator: HierarchicalGenerator = create_generator(generator_kwargs.pop("name", "hierarchical"),
                                                                 **generator_kwargs)
        self.val_psnr = PeakSignalNoiseRatio(data_range=2.0)  # images span [-1, 1]
        self.val_code_au_mae = MeanAbsoluteError()

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, batch: dict[str, Any] | None = None) -> GeneratorOutput:
        """Reconstruct ``images`` ``[B, 3, H, W]`` from their own code; region inputs come from ``batch``."""
        batch = {"image": images, **(batch or {})}
        code = self.coder.from_image(images)
        return self.generator(images, code, **generator_region_inputs(self.generator, batch))

    def _losses(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], GeneratorOutput, torch.Tensor]:
        images = batch["image"]
        code = self.coder.from_image(images)
        out = self.generator(images, code, **generator_region_inputs(self.generator, batch))
        hp = self.hparams
        recon = self_reconstruction_loss(out.image, images)
        color = images.new_zeros(())
        if hp.lambda_color > 0:  # decode the encoder's AU-free map again to read the colour head
            color_map, _ = self.generator.global_generator.decode(out.au_free, code, tuple(images.shape[-2:]))
            color = self_reconstruction_loss(color_map, images)
        attention = attention_regularization(out.attention, hp.lambda_attn_mean, hp.lambda_attn_tv)
        if out.local_crop_attention.shape[1]:
            attention = attention + attention_regularization(out.local_crop_attention.flatten(0, 1),
                                                             hp.lambda_attn_mean, hp.lambda_attn_tv)
        code_loss = image_code_loss(self.coder, code, batch)
        loss = hp.lambda_rec * recon + hp.lambda_color * color + attention + hp.lambda_code * code_loss
        logs = {"loss": loss, "recon_l1": recon, "color_l1": color, "attention_mean": out.attention.mean(),
                "code_loss": code_loss}
        return loss, logs, out, code

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logs, _, _ = self._losses(batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"GeneratorModule: non-finite loss {float(loss)} at global step {self.global_step} "
                                     f"(recon_l1={float(logs['recon_l1'])}, code_loss={float(logs['code_loss'])})")
        recon = logs.pop("recon_l1")
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=batch["image"].shape[0])
        self.log("train/recon_l1", recon, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, logs, out, code = self._losses(batch)
        images = batch["image"]
        self.val_psnr(out.image.clamp(-1, 1), images)
        self.log("val/recon_l1", logs["recon_l1"], prog_bar=True, sync_dist=True, batch_size=images.shape[0])
        self.log("val/psnr", self.val_psnr, batch_size=images.shape[0])
        if batch.get("aus") is not None:
            self.val_code_au_mae(self.coder.to_aus(code), batch["aus"].float())
            self.log("val/code_au_mae", self.val_code_au_mae, batch_size=images.shape[0])

    def predict_step(self, batch: dict[str, Any] | torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        """Reconstructions float ``[B, 3, H, W]`` in ``[-1, 1]``."""
        batch = batch if isinstance(batch, dict) else {"image": batch}
        return self(batch["image"], batch).image

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = list(self.generator.parameters()) + list(self.coder.parameters())
        return torch.optim.Adam(params, lr=self.hparams.lr, betas=tuple(self.hparams.betas))
