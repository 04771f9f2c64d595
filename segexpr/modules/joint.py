"""``JointModule``: segmenter + hierarchical generator + multi-class AU discriminators under one GAN schedule.

The module is the *schedule* (Lightning's GAN pattern: manual optimisation, ``toggle_optimizer``,
``manual_backward``); the networks come from :mod:`segexpr.models` (built from plain config dicts by
:func:`segexpr.models.factory.build_network`), the objectives from :mod:`segexpr.gan.objectives`, the target
sampling from :mod:`segexpr.gan.targets`, DDP gradient averaging from :mod:`segexpr.gan.stepping` and inference
from :class:`segexpr.inference.editor.ExpressionEditor`::

    JointModule(
        segmenter={"name": "unet", "base_channels": 16},
        generator={"base_channels": 32, "crop_size": 24},
        coder={"code_dim": 32},
        discriminator={"n_layers": 4},
        image_size=64, task="both", region_source="segmenter", joint=True,
    )

Every training batch makes one discriminator step (and one feature-classifier step for transfer); every
``n_critic``-th batch first makes one generator step, which updates the generator, the coder and -- with
``joint=True`` and ``region_source="segmenter"`` -- the segmenter, and whose fakes the critic then judges
(detached) instead of generating them again. See ``docs/training.md``.
"""
from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from segexpr.labels import ALL_REGION_GROUPS
from segexpr.inference.editor import ExpressionEditor
from segexpr.gan.objectives import GANObjectives, LossWeights, image_code_loss
from segexpr.gan.passes import Pass, generator_passes
from segexpr.gan.stepping import (broadcast_buffers, check_finite, disable_reducer, distributed_world_size, gan_optimizers,
                                  optimizer_step)
from segexpr.gan.targets import (AU_DONORS, batch_keys, expression_prototypes, keyed_uniform,
                                 sample_manipulation_targets, target_codes)
from segexpr.losses.gan import ADVERSARIAL_LOSSES
from segexpr.losses.segmentation import ohem_cross_entropy
from segexpr.models.factory import network_config
from segexpr.models.generators import REGION_SOURCES
from segexpr.modules.ema import ExponentialMovingAverage
from segexpr.modules.joint_diagnostics import EvaluationDiagnostics
from segexpr.modules.hparams import constructor_arguments, strip_weight_sources
from segexpr.modules.joint_setup import (NETWORKS, build_joint_networks, check_batch, check_options,
                                        check_parsing_anchor, split_combined, tasks_for)
from segexpr.modules.samples import log_image_grid, sample_grid, sample_grid_columns
from segexpr.ops.regions import region_inputs

__all__ = ["JointModule", "TASKS", "AU_DONORS", "load_joint_module"]

#: Accepted values of ``JointModule(task=...)``.
TASKS: tuple[str, ...] = ("both", "manipulate", "transfer")


class JointModule(pl.LightningModule):
    """Segmentation-conditioned hierarchical GAN with multi-class AU discriminators and code swapping.

    Args:
        segmenter, generator, coder, discriminator: each a config dict of its network (``name`` + the factory's
            keyword arguments, :mod:`segexpr.models.factory`) or a ready network (recorded when ``build_network``
            made it; otherwise pass it again to ``load_from_checkpoint``). A key the network does not take is an
            error. The generator's ``region_source``/``code_dim`` and the discriminator's ``image_size``,
            ``regions``, ``au_free_channels`` and ``crop_size`` default to what fits the rest of the model.
        image_size: the square size the model trains and edits at; every batch is checked against it.
        segmenter_weights: initialise the segmenter from this file at construction (a SegmenterModule/JointModule
            checkpoint or a state_dict of the network, e.g. face-parsing.PyTorch's ``79999_iter.pth`` with
            ``segmenter={"name": "bisenet", "variant": "face_parsing"}``). Saved checkpoints record it under
            ``segexpr_initialized_from``, not in their hyperparameters, so they load without the file (likewise a
            BiSeNet ``pretrained_backbone``).
        joint: let generator losses update the segmenter (the paper's model); ``False`` freezes it (eval mode).
        task: ``"manipulate"`` (label / AU targets), ``"transfer"`` (reference images) or ``"both"`` (summed).
        region_source: ``"segmenter"``, ``"landmarks"`` (boxes from ``batch["landmarks"]``) or ``"none"``.
        adv_loss: ``"wgan-gp"``, ``"hinge"`` or ``"nonsaturating"``; n_critic: D steps per G step (>= 1).
        lr, betas, segmenter_lr, feature_classifier_lr: Adam settings (the last two default to ``lr``).
        ema_decay: generator/coder EMA decay (``None``: off); inference uses the EMA once it holds an average.
        lambda_*: loss weights (``docs/training.md``); ``lambda_paired`` weighs L1s against ground truth where the
            data has it (SynthFACS only; 0, the papers' unpaired setting, by default).
        seg_ohem_thresh, seg_ohem_min_kept, ignore_index: the segmentation loss (OHEM cross-entropy).
        au_loss: ``"mse"`` or ``"l1"``; label_target_probability, au_donor: see :mod:`segexpr.gan.targets`.
        compile: ``torch.compile`` the networks in ``configure_model`` (``False``, ``True`` or a backend name).
        compile_mode: ``torch.compile``'s ``mode`` (``None``/``"default"``, ``"reduce-overhead"``: CUDA graphs,
            ``"max-autotune"``, ``"max-autotune-no-cudagraphs"``); only with ``compile``.
        segmenter_warmup_steps: the first this many batches train only the segmenter (needs masks).
        critic_warmup_steps: the first this many batches train the global critic's expression / AU heads on real
            images (needs labels), before any fake is made; with ``segmenter_warmup_steps`` both warm-ups share
            those batches, and the GAN starts after the longer one. Without it the unpaired generator's
            classification loss stays near chance for hundreds of batches (``docs/training.md``).
        sample_every_n_steps, num_samples: sample grids every N training batches (0: off) and at validation.
    """

    def __init__(
        self,
        segmenter: dict[str, Any] | nn.Module | None = None,
        generator: dict[str, Any] | nn.Module | None = None,
        coder: dict[str, Any] | nn.Module | None = None,
        discriminator: dict[str, Any] | nn.Module | None = None,
        image_size: int = 128,
        segmenter_weights: str | None = None,
        joint: bool = True,
        task: str = "both",
        region_source: str = "segmenter",
        adv_loss: str = "wgan-gp",
        n_critic: int = 5,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        segmenter_lr: float | None = None,
        feature_classifier_lr: float | None = None,
        ema_decay: float | None = 0.999,
        lambda_gp: float = 10.0,
        lambda_cls: float = 1.0,
        lambda_au: float = 1.0,
        lambda_cyc: float = 10.0,
        lambda_rec: float = 10.0,
        lambda_swap: float = 1.0,
        lambda_attn_mean: float = 0.1,
        lambda_attn_tv: float = 1e-5,
        lambda_seg: float = 1.0,
        lambda_mcadv: float = 1.0,
        lambda_local: float = 1.0,
        lambda_code: float = 1.0,
        lambda_paired: float = 0.0,
        seg_ohem_thresh: float = 0.7,
        seg_ohem_min_kept: int | None = None,
        ignore_index: int = 255,
        au_loss: str = "mse",
        label_target_probability: float = 0.5,
        sample_every_n_steps: int = 500,
        num_samples: int = 4,
        au_donor: str = "auto",
        compile: bool | str = False,
        compile_mode: str | None = None,
        segmenter_warmup_steps: int = 0,
        critic_warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        arguments = constructor_arguments(JointModule, locals())
        check_options(arguments, TASKS, REGION_SOURCES, ADVERSARIAL_LOSSES, AU_DONORS)
        nets = build_joint_networks(arguments)
        self.save_hyperparameters({**arguments, **{k: network_config(nets[k]) for k in NETWORKS}})
        for name in NETWORKS:
            if arguments[name] is not None and isinstance(arguments[name], nn.Module) and network_config(nets[name]) is None:
                rank_zero_warn(f"JointModule: this {name} has no config and is not saved in hparams; pass {name}= "
                               f"again to JointModule.load_from_checkpoint")
        self.segmenter: nn.Module | None = nets["segmenter"]
        self.generator, self.coder, self.discriminator = nets["generator"], nets["coder"], nets["discriminator"]
        self._segmenter_initialized = False  # a parser's weights were loaded (see check_parsing_anchor)
        self._anchor_checked = False
        if segmenter_weights is not None:
            self.initialize_segmenter(segmenter_weights)
        self.image_size = int(image_size)
        self.region_groups = {r: ALL_REGION_GROUPS[r] for r in self.generator.regions if r in ALL_REGION_GROUPS}
        self.segmenter_trainable = bool(joint and region_source == "segmenter" and self.segmenter is not None)
        if self.segmenter is not None and not self.segmenter_trainable:
            self.segmenter.requires_grad_(False)
            self.segmenter.eval()
        self.ema = (ExponentialMovingAverage({"generator": self.generator, "coder": self.coder}, ema_decay)
                    if ema_decay is not None else None)
        self.register_buffer("expression_prototypes", expression_prototypes(), persistent=False)
        self.objectives = GANObjectives(self.generator, self.coder, self.discriminator, self.region_names,
                                        LossWeights.from_hparams(arguments), adv_loss, au_loss)
        self.automatic_optimization = False
        self._train_batches = 0  # training batches seen (drives n_critic, warm-up and sample logging; checkpointed)
        self._optimizer_names: list[str] = []
        self._key_generator: torch.Generator | None = None  # fallback keys for batches without sample_seed
        self._step_keys: torch.Tensor | None = None  # keys of the current training batch (GP weights)
        self._compiled = False
        self.diagnostics = EvaluationDiagnostics(ignore_index)
        self._val_grid_batch: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ properties / helpers
    @property
    def region_names(self) -> tuple[str, ...]:
        """Names of the ``R`` regions of :meth:`regions` (empty for ``region_source="none"``)."""
        return tuple(self.generator.regions) if self.hparams.region_source != "none" else ()

    @property
    def uses_transfer(self) -> bool:
        return self.hparams.task in ("transfer", "both")

    @property
    def uses_manipulate(self) -> bool:
        return self.hparams.task in ("manipulate", "both")

    def train(self, mode: bool = True) -> "JointModule":
        super().train(mode)
        if self.segmenter is not None and not self.segmenter_trainable:
            self.segmenter.eval()  # a frozen segmenter's BatchNorm statistics stay as they are
        return self

    def eval_networks(self) -> tuple[nn.Module, nn.Module]:
        """(generator, coder) for inference: the EMA copies once they hold an average, else the live ones."""
        if self.ema is not None and self.ema.initialized:
            return self.ema["generator"], self.ema["coder"]
        return self.generator, self.coder

    @property
    def editor(self) -> ExpressionEditor:
        """The inference API over this module's networks (EMA weights when present)."""
        return ExpressionEditor.from_module(self)

    def edit(self, images: torch.Tensor, expression: Any = None, aus: torch.Tensor | None = None,
             landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`ExpressionEditor.edit <segexpr.inference.editor.ExpressionEditor.edit>` with this module's networks."""
        return self.editor.edit(images, expression=expression, aus=aus, landmarks=landmarks)

    def transfer(self, images: torch.Tensor, references: torch.Tensor, landmarks: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """:meth:`ExpressionEditor.transfer <segexpr.inference.editor.ExpressionEditor.transfer>` with this module's networks."""
        return self.editor.transfer(images, references, landmarks=landmarks)

    def regions(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`ExpressionEditor.regions <segexpr.inference.editor.ExpressionEditor.regions>`: float ``[B, R, H, W]``."""
        return self.editor.regions(images, landmarks=landmarks)

    def _segment(self, images: torch.Tensor, with_grad: bool) -> torch.Tensor:
        """Parsing logits ``[B, 19, H, W]``; gradients only when the segmenter is trainable and ``with_grad``.

        A pass without gradients runs the segmenter in eval mode (mode restored after), so only the generator
        step's pass on real images updates its BatchNorm statistics (once per G step, as in the paper's
        training), not the discriminator steps' no-grad passes.
        """
        if with_grad and self.segmenter_trainable:
            return self.segmenter(images)
        was_training = self.segmenter.training
        self.segmenter.eval()
        try:
            with torch.no_grad():
                return self.segmenter(images).detach()
        finally:
            self.segmenter.train(was_training)

    def _region_inputs(self, images: torch.Tensor, landmarks: torch.Tensor | None, with_grad: bool
                       ) -> tuple[dict[str, Any], torch.Tensor | None]:
        """(generator keyword arguments ``region_masks``/``landmarks``/``layout``, parsing logits or ``None``).

        ``layout`` (the boxes and fusion weights) is built once here for every pass of the step on these images.
        """
        source = self.hparams.region_source
        logits = self._segment(images, with_grad) if source == "segmenter" else None
        kwargs = region_inputs(source, images, logits=logits, landmarks=landmarks, groups=self.region_groups)
        if source != "none":
            kwargs["layout"] = self.generator.region_layout(tuple(images.shape[-2:]), **kwargs)
        return kwargs, logits

    def _where(self) -> str:
        return f"global step {self.global_step} (training batch {self._train_batches})"

    def _batch_keys(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Per-sample keys of the random draws (:func:`segexpr.gan.targets.batch_keys`)."""
        if self._key_generator is None:
            self._key_generator = torch.Generator().manual_seed(torch.initial_seed())
        return batch_keys(batch, self._key_generator, self.trainer.global_rank if self._trainer is not None else 0)

    def _gp_alpha(self, purpose: int) -> torch.Tensor | None:
        # Per-sample interpolation weights keyed like the targets (None outside training_step: torch.rand).
        return keyed_uniform(self._step_keys, self._train_batches, purpose) if self._step_keys is not None else None

    def _sample_manipulation_targets(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return sample_manipulation_targets(batch, self._batch_keys(batch), self._train_batches,
                                           self.expression_prototypes, self.hparams.au_donor,
                                           self.hparams.label_target_probability)

    # ------------------------------------------------------------------ optimisers
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam optimisers: discriminator, feature classifier (transfer only), generator (+ segmenter group)."""
        hp = self.hparams
        optimizers = gan_optimizers(self.discriminator, self.generator, self.coder,
                                    self.segmenter if self.segmenter_trainable else None, self.uses_transfer,
                                    hp.lr, tuple(hp.betas), hp.segmenter_lr, hp.feature_classifier_lr)
        self._optimizer_names = list(optimizers)
        return list(optimizers.values())

    def _named_optimizers(self) -> dict[str, Any]:
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        if not self._optimizer_names:  # e.g. optimisers restored without configure_optimizers on this instance
            self._optimizer_names = ["discriminator"] + (["feature_classifier"] if self.uses_transfer else []) + ["generator"]
        return dict(zip(self._optimizer_names, opts))

    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else distributed_world_size()

    def _step(self, optimizer: Any, loss: torch.Tensor) -> None:
        """Backward ``loss`` and step ``optimizer`` (already toggled; DDP: gradients averaged per optimiser)."""
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer_step(optimizer, self._world_size())

    def initialize_segmenter(self, source: str | Mapping[str, torch.Tensor]) -> None:
        """Load the segmenter's weights from a file (see ``segmenter_weights``) or a state_dict (strict)."""
        if self.segmenter is None:
            raise ValueError("this JointModule has no segmenter to initialise")
        if isinstance(source, Mapping):
            self.segmenter.load_state_dict(source)
        else:
            from segexpr.io.checkpoints import load_segmenter_weights  # reads a user's file: I/O on use only

            load_segmenter_weights(self.segmenter, source)
        self._segmenter_initialized = True

    def on_fit_start(self) -> None:
        # A frozen segmenter that never learned to parse gives random regions for the whole run.
        if (self.hparams.region_source == "segmenter" and not self.segmenter_trainable
                and not self._segmenter_initialized and self.trainer.ckpt_path is None):
            raise ValueError("joint=False freezes the segmenter, but it was never initialised: its regions would be "
                             "random for the whole run. Set segmenter_weights (a SegmenterModule checkpoint or "
                             "face-parsing.PyTorch's 79999_iter.pth), call initialize_segmenter(), or train it "
                             "jointly (joint=True) with a parsing anchor")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if not self._anchor_checked:
            check_parsing_anchor(batch, self.segmenter_trainable, self._segmenter_initialized,
                                 self.hparams.lambda_seg, self.trainer.ckpt_path is not None,
                                 self.hparams.segmenter_warmup_steps)
            self._anchor_checked = True

    def configure_model(self) -> None:
        """Compile the networks when ``compile`` is set (in place, so state-dict keys stay unchanged)."""
        option = self.hparams.get("compile", False)
        if not option or self._compiled:
            return
        for network in (self.generator, self.coder, self.discriminator, self.segmenter):
            if network is not None:
                network.compile(backend="inductor" if option is True else str(option),
                                mode=self.hparams.get("compile_mode"))
        self._compiled = True

    # ------------------------------------------------------------------ the schedule
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp = self.hparams
        batch, parsing = split_combined(batch)
        check_batch(batch, hp.task, self.image_size, paired=hp.lambda_paired > 0)
        tasks = tasks_for(batch, self.uses_manipulate, self.uses_transfer, hp.task)
        images = batch["image"]
        opts = self._named_optimizers()
        if self._trainer is not None:
            # Keep Lightning's DDP wrapper but never arm its reducer (also with one device: its bookkeeping breaks
            # on several backward passes per batch); gradients are averaged per optimiser step instead
            # (segexpr.gan.stepping), so no find_unused_parameters. A no-op without DDP.
            disable_reducer(self.trainer.model)
        if self._in_warmup():
            return self._warmup_step(batch, parsing)
        self._step_keys = self._batch_keys(batch)
        targets = self._sample_manipulation_targets(batch) if "manipulate" in tasks else None
        logs: dict[str, torch.Tensor] = {}

        # ---- generator (+ coder, + segmenter when joint) step every n_critic batches, first: its fakes are
        # reused (detached) by this batch's critic step instead of being generated a second time
        reuse = None
        if (self._train_batches + 1) % hp.n_critic == 0:
            generator_logs, reuse = self._generator_step(batch, parsing, tasks, targets, opts["generator"])
            logs.update(generator_logs)

        # ---- discriminator step (every batch) on detached fakes
        self.toggle_optimizer(opts["discriminator"])
        if reuse is not None:
            fakes, boxes, au_free = reuse
        else:
            fakes, boxes, au_free = self._critic_fakes(batch, tasks, targets)
        d = self.objectives.discriminator_loss(batch, fakes, boxes, self._gp_alpha)
        check_finite(d.terms, d.total, "discriminator", self._where())
        self._step(opts["discriminator"], d.total)
        self.untoggle_optimizer(opts["discriminator"])
        logs.update({f"d_{k}": v.detach() for k, v in d.terms.items()})
        logs["d_loss"] = d.total.detach()

        # ---- AU-free feature classifier step (transfer): learn expression/AUs from the detached AU-free feature
        if "transfer" in tasks and (batch.get("expression") is not None or batch.get("aus") is not None):
            self.toggle_optimizer(opts["feature_classifier"])
            fc_loss = self.objectives.feature_classifier_loss(batch, au_free)
            check_finite({"feature_classifier": fc_loss}, fc_loss, "feature-classifier", self._where())
            self._step(opts["feature_classifier"], hp.lambda_mcadv * fc_loss)
            self.untoggle_optimizer(opts["feature_classifier"])
            logs["fc_loss"] = fc_loss.detach()
        self._train_batches += 1
        self._step_keys = None
        if self.segmenter_trainable and self._world_size() > 1:
            # DDP broadcasts buffers only while its reducer is armed; keep BatchNorm statistics identical here.
            broadcast_buffers(self.segmenter)
        headline = {k: logs.pop(k) for k in ("d_loss", "g_loss") if k in logs}
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=images.shape[0])
        self.log_dict({f"train/{k}": v for k, v in headline.items()}, prog_bar=True, batch_size=images.shape[0])
        if hp.sample_every_n_steps and self._train_batches % hp.sample_every_n_steps == 0:
            self._log_samples(batch, "train/samples")

    @torch.no_grad()
    def _critic_fakes(self, batch: Mapping[str, Any], tasks: list[str], targets: Mapping[str, torch.Tensor] | None
                      ) -> tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor | None]:
        """(fakes, crop boxes, AU-free feature) for a critic step on a batch without a generator step."""
        region_kwargs, _ = self._region_inputs(batch["image"], batch.get("landmarks"), with_grad=False)
        codes = ([target_codes(self.coder, targets)] if targets is not None else []) + (
            [self.coder.from_image(batch["reference_image"])] if "transfer" in tasks else [])
        encoded = self.generator.encode(batch["image"]) if codes else None  # once for every code
        outputs = generator_passes(self.generator, [Pass(batch["image"], code, encoded) for code in codes],
                                   region_kwargs)
        return [o.image for o in outputs], outputs[-1].boxes if outputs else None, encoded

    def _generator_step(self, batch: Mapping[str, Any], parsing: Mapping[str, Any] | None, tasks: list[str],
                        targets: Mapping[str, torch.Tensor] | None, g_opt: Any
                        ) -> tuple[dict[str, torch.Tensor], tuple[list[torch.Tensor], torch.Tensor | None, torch.Tensor]]:
        """One generator step; returns its logs and (fakes, boxes, AU-free feature), detached, for the critic."""
        hp = self.hparams
        images = batch["image"]
        self.toggle_optimizer(g_opt)
        region_kwargs, logits = self._region_inputs(images, batch.get("landmarks"), with_grad=True)
        code_source = self.coder.from_image(images)
        au_free = self.generator.encode(images)  # the source images are encoded once for every pass on them
        terms: dict[str, torch.Tensor] = {}
        total = images.new_zeros(())
        # Both tasks' generator passes run batched together (GANObjectives.generator_loss).
        parts = self.objectives.generator_loss(batch, tasks, targets, region_kwargs, code_source, au_free)
        for part in parts:
            terms.update(part.terms)
            total = total + part.total
        if batch.get("aus") is not None or batch.get("expression") is not None:
            terms["image_code"] = image_code_loss(self.coder, code_source, batch, hp.au_loss)
            total = total + hp.lambda_code * terms["image_code"]
        if self.segmenter_trainable and hp.lambda_seg > 0:
            # Mask supervision from the parsing batch of a CombinedDataModule, else from the GAN batch.
            source = parsing if parsing is not None else batch
            if source.get("mask") is not None:
                seg_logits = self.segmenter(parsing["image"]) if parsing is not None else logits
                terms["seg_loss"] = self._segmentation_loss(seg_logits, source["mask"])
                total = total + hp.lambda_seg * terms["seg_loss"]
        diagnostic = {k: terms.pop(k) for k in ("transfer_l1_gt", "edit_l1_gt") if k in terms}
        check_finite(terms, total, "generator", self._where())
        self._step(g_opt, total)
        self.untoggle_optimizer(g_opt)
        if self.ema is not None:
            self.ema.update({"generator": self.generator, "coder": self.coder})
        logs = {**{k: v.detach() for k, v in {**terms, **diagnostic}.items()}, "g_loss": total.detach()}
        boxes = parts[-1].boxes.detach() if parts and parts[-1].boxes is not None else None
        return logs, ([part.fake.detach() for part in parts], boxes, au_free.detach())

    def _segmentation_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        return ohem_cross_entropy(logits, mask.long(), hp.seg_ohem_thresh, hp.seg_ohem_min_kept, hp.ignore_index)

    def _segmenter_warming(self) -> bool:
        return self._train_batches < self.hparams.segmenter_warmup_steps and self.segmenter_trainable

    def _in_warmup(self) -> bool:
        return self._segmenter_warming() or self._train_batches < self.hparams.critic_warmup_steps

    def _warmup_step(self, batch: Mapping[str, Any], parsing: Mapping[str, Any] | None) -> None:
        """A warm-up batch: a parsing step and/or a critic-heads step on real images; no fakes are made."""
        if self._segmenter_warming():
            self._segmenter_warmup_step(batch, parsing)
        if self._train_batches < self.hparams.critic_warmup_steps:
            self._critic_warmup_step(batch)
        self._train_batches += 1

    def _critic_warmup_step(self, batch: Mapping[str, Any]) -> None:
        """One step of the discriminator optimiser on its expression / AU heads (real images, no adversarial term)."""
        d_opt = self._named_optimizers()["discriminator"]
        self.toggle_optimizer(d_opt)
        warm = self.objectives.critic_warmup_loss(batch)
        check_finite(warm.terms, warm.total, "critic warm-up", self._where())
        self._step(d_opt, warm.total)  # parameters without gradients (adversarial and local heads) are skipped
        self.untoggle_optimizer(d_opt)
        self.log_dict({f"train/warmup_d_{k}": v.detach() for k, v in warm.terms.items()},
                      prog_bar=False, batch_size=batch["image"].shape[0])

    def _segmenter_warmup_step(self, batch: Mapping[str, Any], parsing: Mapping[str, Any] | None) -> None:
        """One segmentation-only step of the generator optimiser (only the segmenter's group has gradients)."""
        source = parsing if parsing is not None else batch
        if source.get("mask") is None:
            raise KeyError("segmenter_warmup_steps > 0 needs batches with 'mask' (or a CombinedDataModule parsing "
                           f"batch); keys: {sorted(source)}")
        g_opt = self._named_optimizers()["generator"]
        self.toggle_optimizer(g_opt)
        seg_loss = self._segmentation_loss(self.segmenter(source["image"]), source["mask"])
        check_finite({"seg_loss": seg_loss}, seg_loss, "segmenter warm-up", self._where())
        self._step(g_opt, seg_loss)  # parameters without gradients are skipped by Adam
        self.untoggle_optimizer(g_opt)
        if self._world_size() > 1:
            broadcast_buffers(self.segmenter)
        self.log("train/warmup_seg_loss", seg_loss.detach(), prog_bar=True, batch_size=source["image"].shape[0])

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "test")

    def _evaluation_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        batch, parsing = split_combined(batch)
        check_batch(batch, None, self.image_size)
        region_kwargs, logits = self._region_inputs(batch["image"], batch.get("landmarks"), with_grad=False)
        if parsing is not None and self.segmenter is not None:
            parsing_logits, parsing_mask = self._segment(parsing["image"], with_grad=False), parsing["mask"]
        else:
            parsing_logits, parsing_mask = logits, batch.get("mask")
        generator, coder = self.eval_networks()
        logged = self.diagnostics.update(generator, coder, self.discriminator, batch, region_kwargs, batch_idx,
                                         self.uses_manipulate, self.uses_transfer, parsing_logits, parsing_mask)
        for name, metric in logged.items():
            self.log(f"{stage}/{name}", metric, prog_bar=name == "recon_l1", batch_size=batch["image"].shape[0])
        if stage == "val" and batch_idx == 0 and not self.trainer.sanity_checking:
            self._val_grid_batch = {k: v[: self.hparams.num_samples] for k, v in batch.items()
                                    if isinstance(v, torch.Tensor)}

    def on_validation_epoch_end(self) -> None:
        self._log_parsing("val")
        if self._val_grid_batch is not None:
            self._log_samples(self._val_grid_batch, "val/samples")
            self._val_grid_batch = None

    def on_test_epoch_end(self) -> None:
        self._log_parsing("test")

    def _log_parsing(self, stage: str) -> None:
        parsing = self.diagnostics.parsing
        if int(parsing.confmat.sum()) > 0 or self.trainer.world_size > 1:
            if self.segmenter is not None and self.hparams.region_source == "segmenter":
                self.log(f"{stage}/parsing_miou", parsing.compute()["miou"])
        parsing.reset()

    def _log_samples(self, batch: Mapping[str, Any], tag: str) -> None:
        if self._trainer is None or not self.trainer.is_global_zero:
            return
        grid = sample_grid(self, batch, num_samples=self.hparams.num_samples)
        log_image_grid(self, grid, tag, caption=" | ".join(sample_grid_columns(self, batch)))

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["segexpr_train_batches"] = self._train_batches
        if self._key_generator is not None:
            checkpoint["segexpr_key_generator"] = self._key_generator.get_state()
        # The weights are in the checkpoint: loading it must not need the pretrained files again.
        strip_weight_sources(checkpoint, ("segmenter_weights",), ("segmenter", "pretrained_backbone"))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._segmenter_initialized = True  # the checkpoint's weights
        self._train_batches = int(checkpoint.get("segexpr_train_batches", 0))
        if "segexpr_key_generator" in checkpoint:
            self._key_generator = torch.Generator()
            self._key_generator.set_state(checkpoint["segexpr_key_generator"])


def load_joint_module(path: str, map_location: str | torch.device = "cpu") -> JointModule:
    """Load a JointModule checkpoint safely (``weights_only=True``; segexpr 0.1 checkpoints are upgraded).

    The file is read and its hyperparameters checked by :func:`segexpr.inference.checkpoints.read_joint_checkpoint`,
    the one reader of JointModule checkpoints; the whole LightningModule is then rebuilt from them."""
    from segexpr.inference.checkpoints import read_joint_checkpoint
    from segexpr.io.checkpoints import load_module

    return load_module(path, expected=JointModule, map_location=map_location, checkpoint=read_joint_checkpoint(path))
