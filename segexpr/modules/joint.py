"""``JointModule``: segmenter + hierarchical generator + multi-class AU discriminators under one GAN schedule.

Composition (each part may be a ready LightningModule, a dict of its constructor arguments, or a
``{"class_path": ..., "init_args": {...}}`` dict as LightningCLI writes it)::

    JointModule(
        segmenter=SegmenterModule(arch="unet", segmenter_kwargs={"base_channels": 16}),
        generator=GeneratorModule(generator_kwargs={"base_channels": 32}, coder_kwargs={"code_dim": 32}),
        discriminator=AUDiscriminatorModule(image_size=64, discriminator_kwargs={"n_layers": 4}),
        task="both", region_source="segmenter", joint=True,
    )

The module keeps the *networks* (``self.segmenter``, ``self.generator``, ``self.coder``,
``self.discriminator``), not the wrapping LightningModules; the wrappers' constructor arguments are stored in
``hparams`` so :meth:`JointModule.load_from_checkpoint` rebuilds everything from the checkpoint alone.

GAN schedule (manual optimisation, Lightning's own pattern): every training batch makes one discriminator
step (and one feature-classifier step for the transfer task); every ``n_critic``-th batch also makes one
generator step, which updates the generator, the expression coder and — with ``joint=True`` and
``region_source="segmenter"`` — the segmenter. See ``docs/training.md`` for the losses and the tasks.
"""
from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from segexpr.data.labels import EXPRESSIONS, NUM_AUS, NUM_CLASSES, NUM_EXPRESSIONS, REGION_GROUPS, expression_prototype
from segexpr.losses.gan import (
    ADVERSARIAL_LOSSES,
    adversarial_d_loss,
    adversarial_g_loss,
    attention_regularization,
    au_regression_loss,
    cycle_loss,
    expression_classification_loss,
    gradient_penalty,
    multiclass_adversarial_classifier_loss,
    multiclass_adversarial_encoder_loss,
    self_reconstruction_loss,
    statistics_matching_loss,
)
from segexpr.losses.segmentation import ohem_cross_entropy
from segexpr.metrics.parsing import ParsingMetrics
from segexpr.models.generators import REGION_SOURCES, GeneratorOutput, box_masks, crop
from segexpr.models.regions import soft_regions
from segexpr.modules.discriminator import AUDiscriminatorModule
from segexpr.modules.distributed import (
    all_reduce_gradients,
    broadcast_buffers,
    disable_reducer,
    distributed_world_size,
    keyed_uniform,
)
from segexpr.modules.ema import ExponentialMovingAverage
from segexpr.modules.generator import GeneratorModule, image_code_loss
from segexpr.modules.segmenter import SegmenterModule
from segexpr.visualize import overlay

__all__ = ["JointModule", "TASKS", "sample_grid", "sample_grid_columns", "log_image_grid"]

#: Accepted values of ``JointModule(task=...)``.
TASKS: tuple[str, ...] = ("both", "manipulate", "transfer")
_REFERENCE_KEYS = ("reference_image",)
#: Accepted values of ``JointModule(au_donor=...)``.
AU_DONORS: tuple[str, ...] = ("auto", "reference", "batch")
# Purpose ids of the keyed random draws (see JointModule._uniform); any distinct small ints.
_DRAW_LABEL, _DRAW_USE_LABEL, _DRAW_DONOR, _DRAW_GP = 1, 2, 3, 100


# ----------------------------------------------------------------------------------------- composition helpers
def _import_class(class_path: str) -> type:
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name:
        raise ValueError(f"class_path must be 'package.module.Class', got {class_path!r}")
    return getattr(importlib.import_module(module_name), class_name)


def _build_part(value: Any, default_cls: type, base_cls: type, name: str,
                prepare: Callable[[dict], dict] | None = None) -> nn.Module | None:
    """Instantiate a component from a module, a kwargs dict or a ``class_path``/``init_args`` dict."""
    if value is None or isinstance(value, nn.Module):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a {default_cls.__name__}, a dict of its arguments or a class_path/init_args "
                        f"dict, got {type(value).__name__}")
    if "class_path" in value:
        cls = _import_class(str(value["class_path"]))
        kwargs = dict(value.get("init_args") or {})
    else:
        cls, kwargs = default_cls, dict(value)
    if not (isinstance(cls, type) and issubclass(cls, base_cls)):
        raise TypeError(f"{name} class {cls!r} is not a subclass of {base_cls.__name__}")
    return cls(**(prepare(kwargs) if prepare is not None else kwargs))


def _spec(module: nn.Module | None) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of a LightningModule built with ``save_hyperparameters``; else ``None``."""
    if module is None or not isinstance(module, pl.LightningModule):
        return None
    cls = type(module)
    # The parts record exactly their constructor arguments (segexpr.modules.hparams.constructor_arguments).
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(module.hparams)}


def _as_index_tensor(expression: int | str | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    if isinstance(expression, str):
        if expression not in EXPRESSIONS:
            raise ValueError(f"unknown expression {expression!r}; expected one of {EXPRESSIONS}")
        expression = EXPRESSIONS.index(expression)
    if isinstance(expression, torch.Tensor):
        labels = expression.to(device=device, dtype=torch.long).reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(batch)
        if labels.numel() != batch:
            raise ValueError(f"expression tensor has {labels.numel()} labels for a batch of {batch}")
    else:
        labels = torch.full((batch,), int(expression), dtype=torch.long, device=device)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= NUM_EXPRESSIONS):
        raise ValueError(f"expression labels must be in [0, {NUM_EXPRESSIONS}), got {labels.tolist()}")
    return labels


def _split_combined(batch: Mapping[str, Any]) -> tuple[Mapping[str, Any], Mapping[str, Any] | None]:
    """``(gan_batch, parsing_batch)``: a ``CombinedDataModule`` batch is ``{"gan": ..., "parsing": ...}``."""
    if "gan" in batch and "parsing" in batch:
        parsing = batch["parsing"]
        if parsing is not None and parsing.get("mask") is None:
            raise KeyError(f"the 'parsing' half of a combined batch needs 'mask', got keys {sorted(parsing)}")
        return batch["gan"], parsing
    return batch, None


# ------------------------------------------------------------------------------------------------ the module
class JointModule(pl.LightningModule):
    """Segmentation-conditioned hierarchical GAN with multi-class AU discriminators and code swapping.

    Args:
        segmenter: a :class:`~segexpr.modules.SegmenterModule`, any ``nn.Module`` mapping images to parsing
            logits ``[B, 19, H, W]`` (order A), a dict of ``SegmenterModule`` arguments, or ``None``. Required
            for ``region_source="segmenter"``. A plain ``nn.Module`` is not recorded in ``hparams``: pass it
            again to ``load_from_checkpoint``.
        generator: a :class:`~segexpr.modules.GeneratorModule` or its arguments (its ``region_source`` is set
            to this module's when built from a dict; a ready module must already agree).
        discriminator: an :class:`~segexpr.modules.AUDiscriminatorModule` or its arguments (``regions``,
            ``au_free_channels`` and ``crop_size`` default to the generator's when built from a dict).
        joint: let generator losses update the segmenter (the paper's end-to-end model). ``False`` freezes the
            segmenter (eval mode, no gradients, masks detached) and skips the segmentation loss.
        task: ``"manipulate"`` (targets from labels / AU vectors, StarGAN/GANimation-style), ``"transfer"``
            (targets from reference images; needs ``reference_image``), or ``"both"`` (the two sets of losses
            are *summed* on every step; batches without references train ``manipulate`` only).
        region_source: ``"segmenter"``, ``"landmarks"`` (boxes from ``batch["landmarks"]``) or ``"none"``.
        adv_loss: ``"wgan-gp"``, ``"hinge"`` or ``"nonsaturating"``.
        n_critic: discriminator steps per generator step (>= 1).
        lr, betas: Adam settings of every optimiser (1e-4, (0.5, 0.999)).
        segmenter_lr: learning rate of the segmenter's parameter group (default ``lr``).
        feature_classifier_lr: learning rate of the AU-free feature classifier (default ``lr``).
        ema_decay: decay of the generator/coder EMA (``None`` disables it). Public methods and validation use
            the EMA weights once at least one generator step has been averaged.
        lambda_gp, lambda_cls, lambda_au, lambda_cyc, lambda_rec, lambda_swap, lambda_attn_mean,
        lambda_attn_tv, lambda_seg, lambda_mcadv, lambda_local, lambda_code: loss weights (see
            ``docs/training.md``). ``lambda_code`` weighs the code-readout supervision of the coder.
        lambda_paired: weight of L1 losses against ground truth where the data has it (SynthFACS pairs know the
            exact answer): the transfer vs ``batch["transfer_target"]``; label edits vs ``batch["edit_target"]``
            (the batch's ``edit_expression`` is then the label target); AU edits whose donor is the reference vs
            ``transfer_target`` (same identity, reference AUs). ``0`` (default) keeps training unpaired, as in
            the papers; a positive weight is a SynthFACS-only training aid that makes short CPU runs visibly learn.
        au_loss: ``"mse"`` or ``"l1"`` AU regression.
        label_target_probability: share of manipulate targets drawn as random expression labels (their
            prototype AU vector is the AU target); the rest are real AU vectors of other samples (``au_donor``).
        au_donor: where the real AU targets come from: ``"reference"`` (the batch's ``reference_aus`` /
            ``reference_expression``: another sample, chosen per sample by the dataset), ``"batch"`` (a random
            permutation of the batch's own ``aus``), ``"auto"`` (``"reference"`` when the batch has
            ``reference_aus``, else ``"batch"``). ``"batch"`` depends on the batch composition, so under DDP
            each rank permutes its local batch (a different but equally valid draw); the other random draws are
            per-sample (see ``docs/scaling.md``).
        compile: ``torch.compile`` the generator, coder, discriminator and segmenter in ``configure_model``
            (``nn.Module.compile``, so checkpoint keys do not change): ``False`` (default), ``True`` (the
            default ``"inductor"`` backend) or a backend name (``"aot_eager"``, ``"eager"``, ...).
        segmenter_warmup_steps: the first this many training batches train only the segmenter (segmentation
            loss on the batch masks, through the generator optimiser's segmenter group): the GAN then starts from
            usable masks instead of a random parser's. Needs ``joint=True``, ``region_source="segmenter"`` and
            masks in the data; ``0`` (default) starts the GAN at once.
        sample_every_n_steps: log a sample grid every this many training batches (0 disables); a grid is
            also logged for the first validation batch.
        num_samples: rows of the sample grid.

    Batches: see the package docs; ``image`` always, ``expression`` and/or ``aus`` for manipulate,
    ``reference_image`` (+ optional ``reference_expression``/``reference_aus``/``transfer_target``) for
    transfer, ``mask`` for the segmentation loss and mIoU, ``landmarks`` for ``region_source="landmarks"``.
    """

    def __init__(
        self,
        segmenter: SegmenterModule | nn.Module | dict | None = None,
        generator: GeneratorModule | dict | None = None,
        discriminator: AUDiscriminatorModule | dict | None = None,
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
        au_loss: str = "mse",
        label_target_probability: float = 0.5,
        sample_every_n_steps: int = 500,
        num_samples: int = 4,
        au_donor: str = "auto",
        compile: bool | str = False,
        segmenter_warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        if region_source not in REGION_SOURCES:
            raise ValueError(f"unknown region_source {region_source!r}; expected one of {REGION_SOURCES}")
        if adv_loss not in ADVERSARIAL_LOSSES:
            raise ValueError(f"unknown adv_loss {adv_loss!r}; expected one of {ADVERSARIAL_LOSSES}")
        if au_loss not in ("mse", "l1"):
            raise ValueError(f"unknown au_loss {au_loss!r}; expected 'mse' or 'l1'")
        if isinstance(n_critic, bool) or not isinstance(n_critic, int) or n_critic < 1:
            raise ValueError(f"n_critic must be an integer >= 1, got {n_critic!r}")
        for name, value in (("lr", lr), ("segmenter_lr", segmenter_lr), ("feature_classifier_lr", feature_classifier_lr)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if ema_decay is not None and not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
        if au_donor not in AU_DONORS:
            raise ValueError(f"unknown au_donor {au_donor!r}; expected one of {AU_DONORS}")
        if not isinstance(compile, (bool, str)) or compile == "":
            raise ValueError(f"compile must be a bool or a torch.compile backend name, got {compile!r}")
        if not 0 <= label_target_probability <= 1:
            raise ValueError(f"label_target_probability must be in [0, 1], got {label_target_probability}")
        if isinstance(segmenter_warmup_steps, bool) or not isinstance(segmenter_warmup_steps, int) \
                or segmenter_warmup_steps < 0:
            raise ValueError(f"segmenter_warmup_steps must be an integer >= 0, got {segmenter_warmup_steps!r}")
        if sample_every_n_steps < 0 or num_samples < 1:
            raise ValueError(f"sample_every_n_steps must be >= 0 and num_samples >= 1, got "
                             f"{sample_every_n_steps}, {num_samples}")
        weights = {k: v for k, v in locals().items() if k.startswith("lambda_")}
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

        # ---- build the parts (dicts -> modules), keeping region settings consistent
        def generator_defaults(kwargs: dict) -> dict:
            gen_kwargs = dict(kwargs.get("generator_kwargs") or {})
            gen_kwargs["region_source"] = region_source
            return {**kwargs, "generator_kwargs": gen_kwargs}

        generator_module = _build_part(generator if generator is not None else {}, GeneratorModule, GeneratorModule,
                                       "generator", generator_defaults)
        if not isinstance(generator_module, GeneratorModule):
            raise TypeError(f"generator must be a GeneratorModule (or its arguments), got {type(generator_module).__name__}")
        gen = generator_module.generator
        if gen.region_source != region_source:
            raise ValueError(f"the generator was built with region_source={gen.region_source!r} but JointModule has "
                             f"region_source={region_source!r}")

        def discriminator_defaults(kwargs: dict) -> dict:
            d_kwargs = dict(kwargs.get("discriminator_kwargs") or {})
            d_kwargs.setdefault("regions", tuple(gen.regions))
            d_kwargs.setdefault("au_free_channels", gen.au_free_channels)
            d_kwargs.setdefault("crop_size", gen.crop_size)
            return {**kwargs, "discriminator_kwargs": d_kwargs}

        discriminator_module = _build_part(discriminator if discriminator is not None else {}, AUDiscriminatorModule,
                                           AUDiscriminatorModule, "discriminator", discriminator_defaults)
        if not isinstance(discriminator_module, AUDiscriminatorModule):
            raise TypeError("discriminator must be an AUDiscriminatorModule (or its arguments)")
        disc = discriminator_module.discriminator
        if disc.feature_classifier.in_channels != gen.au_free_channels:
            raise ValueError(f"the discriminator's feature classifier expects {disc.feature_classifier.in_channels} "
                             f"AU-free channels but the generator produces {gen.au_free_channels}; set the "
                             f"discriminator's discriminator_kwargs.au_free_channels to {gen.au_free_channels} "
                             f"(generator base_channels * 2**n_down) or pass the discriminator as a plain dict")
        if region_source != "none" and tuple(disc.regions) != tuple(gen.regions):
            raise ValueError(f"discriminator regions {tuple(disc.regions)} differ from generator regions {tuple(gen.regions)}")

        segmenter_module = _build_part(segmenter, SegmenterModule, nn.Module, "segmenter")
        if region_source == "segmenter":
            if segmenter_module is None:
                raise ValueError("region_source='segmenter' needs a segmenter (a SegmenterModule, its arguments or "
                                 "an nn.Module returning parsing logits)")
            unknown = [r for r in gen.regions if r not in REGION_GROUPS]
            if unknown:
                raise ValueError(f"regions {unknown} have no parsing-class group in REGION_GROUPS")

        self.save_hyperparameters(ignore=["segmenter", "generator", "discriminator"])
        # Record the parts' own constructor arguments so load_from_checkpoint can rebuild them.
        self.hparams["segmenter"] = _spec(segmenter_module)
        self.hparams["generator"] = _spec(generator_module)
        self.hparams["discriminator"] = _spec(discriminator_module)
        if segmenter_module is not None and not isinstance(segmenter_module, pl.LightningModule):
            rank_zero_warn("JointModule: a plain nn.Module segmenter is not saved in hparams; pass segmenter= again "
                           "to JointModule.load_from_checkpoint")

        self.segmenter: nn.Module | None = (segmenter_module.segmenter if isinstance(segmenter_module, SegmenterModule)
                                            else segmenter_module)
        seg_hp = dict(segmenter_module.hparams) if isinstance(segmenter_module, SegmenterModule) else {}
        self._seg_loss_args = {"thresh": seg_hp.get("ohem_thresh", 0.7), "min_kept": seg_hp.get("ohem_min_kept"),
                               "ignore_index": seg_hp.get("ignore_index", 255)}
        self.generator = gen
        self.coder = generator_module.coder
        self.discriminator = disc
        self.image_size = int(discriminator_module.image_size)
        self.region_groups = {r: REGION_GROUPS[r] for r in gen.regions if r in REGION_GROUPS}
        self.segmenter_trainable = bool(joint and region_source == "segmenter" and self.segmenter is not None)
        if self.segmenter is not None and not self.segmenter_trainable:
            self.segmenter.requires_grad_(False)
            self.segmenter.eval()

        self.ema = (ExponentialMovingAverage({"generator": self.generator, "coder": self.coder}, ema_decay)
                    if ema_decay is not None else None)
        prototypes = torch.stack([torch.from_numpy(expression_prototype(i)) for i in range(NUM_EXPRESSIONS)])
        self.register_buffer("expression_prototypes", prototypes, persistent=False)

        self.automatic_optimization = False
        self._train_batches = 0  # training batches seen (drives n_critic and sample logging; checkpointed)
        self._optimizer_names: list[str] = []
        # Fallback source of per-sample keys for batches without ``sample_seed`` (checkpointed; see _batch_keys).
        self._key_generator: torch.Generator | None = None
        self._step_keys: torch.Tensor | None = None  # keys of the current training batch (GP weights)
        self._compiled = False
        self.val_d_acc_edit = MulticlassAccuracy(num_classes=NUM_EXPRESSIONS, average="micro")
        self.val_recon_l1 = MeanMetric()
        self.val_transfer_l1_gt = MeanMetric()
        self.val_edit_l1_gt = MeanMetric()
        self.val_parsing = ParsingMetrics(NUM_CLASSES, ignore_index=self._seg_loss_args["ignore_index"])
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
        # A frozen segmenter stays in eval mode so its BatchNorm statistics are not updated either.
        if self.segmenter is not None and not self.segmenter_trainable:
            self.segmenter.eval()
        return self

    def _eval_networks(self) -> tuple[nn.Module, nn.Module]:
        """(generator, coder) used by evaluation: the EMA copies once they hold an average, else the live ones."""
        if self.ema is not None and self.ema.initialized:
            return self.ema["generator"], self.ema["coder"]
        return self.generator, self.coder

    def _segment(self, images: torch.Tensor, with_grad: bool) -> torch.Tensor:
        """Parsing logits ``[B, 19, H, W]``; gradients only when the segmenter is trainable and ``with_grad``."""
        assert self.segmenter is not None
        if with_grad and self.segmenter_trainable:
            return self.segmenter(images)
        with torch.no_grad():
            return self.segmenter(images).detach()

    def _region_inputs(self, images: torch.Tensor, landmarks: torch.Tensor | None, with_grad: bool
                       ) -> tuple[dict[str, torch.Tensor | None], torch.Tensor | None]:
        """(generator keyword arguments ``region_masks``/``landmarks``, parsing logits or ``None``)."""
        source = self.hparams.region_source
        if source == "segmenter":
            logits = self._segment(images, with_grad)
            return {"region_masks": soft_regions(logits, self.region_groups).to(images.dtype), "landmarks": None}, logits
        if source == "landmarks":
            if landmarks is None:
                raise KeyError("region_source='landmarks' needs 'landmarks' (float [B, 68, 2] pixel coordinates)")
            return {"region_masks": None, "landmarks": landmarks.to(images.dtype)}, None
        return {"region_masks": None, "landmarks": None}, None

    def _check_batch(self, batch: Mapping[str, Any]) -> None:
        if "image" not in batch:
            raise KeyError(f"JointModule batches need an 'image' key, got {sorted(batch)}")
        if self.hparams.task == "transfer" and batch.get("reference_image") is None:
            raise KeyError("task='transfer' needs paired batches with 'reference_image' (e.g. "
                           "SyntheticFacesDataModule(pairs=True))")
        if self.hparams.task == "manipulate" and batch.get("expression") is None and batch.get("aus") is None:
            raise KeyError("task='manipulate' needs 'expression' and/or 'aus' labels (the discriminator learns to "
                           "classify real images)")

    def _tasks_for(self, batch: Mapping[str, Any]) -> list[str]:
        tasks = []
        if self.uses_manipulate and (batch.get("expression") is not None or batch.get("aus") is not None):
            tasks.append("manipulate")
        if self.uses_transfer and batch.get("reference_image") is not None:
            tasks.append("transfer")
        if not tasks:
            raise KeyError(f"task={self.hparams.task!r}: this batch has neither labels ('expression'/'aus') nor "
                           f"'reference_image'; keys: {sorted(batch)}")
        return tasks

    def _check_finite(self, losses: Mapping[str, torch.Tensor], total: torch.Tensor, which: str) -> None:
        if bool(torch.isfinite(total)):
            return
        bad = [name for name, value in losses.items() if not bool(torch.isfinite(value).all())]
        raise FloatingPointError(f"JointModule: non-finite {which} loss ({', '.join(bad) or 'total'}) at global step "
                                 f"{self.global_step} (training batch {self._train_batches}): "
                                 f"{ {k: float(v.detach()) for k, v in losses.items()} }")

    # ------------------------------------------------------------------ targets
    def _batch_keys(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """int64 ``[B]`` per-sample keys of the random draws: ``batch["sample_seed"]`` when the data has it.

        segexpr datasets put a per-item ``sample_seed`` in every item, so draws do not depend on the rank or batch
        position of a sample (DDP == single process) nor on RNG state (resume == uninterrupted). Other data falls
        back to keys from a module-owned ``torch.Generator`` seeded with ``torch.initial_seed()`` (saved in
        checkpoints), mixed with the global rank so that ranks draw different numbers.
        """
        images = batch["image"]
        keys = batch.get("sample_seed")
        if isinstance(keys, torch.Tensor) and keys.numel() == images.shape[0]:
            return keys.to(device=images.device, dtype=torch.int64).reshape(-1)
        if self._key_generator is None:
            self._key_generator = torch.Generator().manual_seed(torch.initial_seed())
        keys = torch.randint(0, 2 ** 31, (images.shape[0],), generator=self._key_generator, dtype=torch.int64)
        rank = self.trainer.global_rank if self._trainer is not None else 0
        return (keys + (int(rank) << 32)).to(images.device)

    def _uniform(self, keys: torch.Tensor, purpose: int) -> torch.Tensor:
        """Per-sample uniform numbers for ``purpose`` at this training batch (pure function of key and counters)."""
        return keyed_uniform(keys, self._train_batches, purpose)

    def _sample_manipulation_targets(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Random targets per sample: an expression label (AU target = its prototype) or a donor's real AUs.

        Returns ``labels`` int64 [B], ``use_label`` bool [B], ``aus`` float [B, 17] (the AU target),
        ``donor_aus`` float [B, 17], ``expression`` int64 [B] and ``expression_valid`` bool [B] (the expression
        target: the label, or the donor's real expression when known). Draws are keyed per sample
        (:meth:`_batch_keys`); the donor follows ``au_donor``.
        """
        images = batch["image"]
        size, device = images.shape[0], images.device
        keys = self._batch_keys(batch)
        if batch.get("edit_expression") is not None:
            # The dataset chose the label (and rendered its answer as ``edit_target``).
            labels = batch["edit_expression"].to(device=device, dtype=torch.long).reshape(-1)
            if labels.numel() != size or bool(((labels < 0) | (labels >= NUM_EXPRESSIONS)).any()):
                raise ValueError(f"batch['edit_expression'] must hold {size} labels in [0, {NUM_EXPRESSIONS}), got "
                                 f"{batch['edit_expression'].tolist()}")
        else:
            labels = (self._uniform(keys, _DRAW_LABEL) * NUM_EXPRESSIONS).long().clamp_(max=NUM_EXPRESSIONS - 1)
        prototype_aus = self.expression_prototypes[labels]
        donor_expression = None
        mode = None
        if batch.get("aus") is not None:
            mode = self.hparams.au_donor
            if mode == "auto":
                mode = "reference" if batch.get("reference_aus") is not None else "batch"
            if mode == "reference":
                if batch.get("reference_aus") is None:
                    raise KeyError("au_donor='reference' needs 'reference_aus' in the batch (paired data, e.g. "
                                   "SyntheticFacesDataModule(pairs=True)); use au_donor='batch' or 'auto'")
                donor_aus = batch["reference_aus"].float()
                ref_expression = batch.get("reference_expression")
                donor_expression = ref_expression.long() if ref_expression is not None else None
            else:
                # A permutation of the local batch (argsort of keyed numbers: reproducible without RNG state).
                perm = torch.argsort(self._uniform(keys, _DRAW_DONOR))
                donor_aus = batch["aus"].float()[perm]
                if batch.get("expression") is not None:
                    donor_expression = batch["expression"].long()[perm]
            use_label = self._uniform(keys, _DRAW_USE_LABEL) < self.hparams.label_target_probability
        else:
            donor_aus = prototype_aus
            use_label = torch.ones(size, dtype=torch.bool, device=device)
        aus = torch.where(use_label[:, None], prototype_aus, donor_aus)
        if donor_expression is not None:
            expression = torch.where(use_label, labels, donor_expression)
            valid = torch.ones_like(use_label)
        else:
            expression, valid = labels, use_label
        targets = {"labels": labels, "use_label": use_label, "aus": aus, "donor_aus": donor_aus,
                   "expression": expression, "expression_valid": valid}
        # Ground truth of each edit where the data knows it: the label's render, or (reference donor) the
        # source identity rendered with the reference's AUs.
        label_truth = batch.get("edit_target") if batch.get("edit_expression") is not None else None
        donor_truth = batch.get("transfer_target") if mode == "reference" else None
        if label_truth is not None or donor_truth is not None:
            truth = torch.zeros_like(images)
            truth_valid = torch.zeros(size, dtype=torch.bool, device=device)
            for chosen, answer in ((use_label, label_truth), (~use_label, donor_truth)):
                if answer is not None:
                    truth = torch.where(chosen[:, None, None, None], answer, truth)
                    truth_valid |= chosen
            targets["truth"], targets["truth_valid"] = truth, truth_valid
        return targets

    def _target_codes(self, coder: nn.Module, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        label_codes = coder.from_label(targets["labels"])
        au_codes = coder.from_aus(targets["donor_aus"])
        return torch.where(targets["use_label"][:, None], label_codes, au_codes)

    # ------------------------------------------------------------------ discriminator helpers
    def _local_crops(self, images: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor | None:
        if boxes is None or not self.region_names:
            return None
        return crop(images, boxes, self.discriminator.crop_size)

    def _d_adv_and_gp(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor,
                      real_scores: torch.Tensor, purpose: int = _DRAW_GP) -> tuple[torch.Tensor, torch.Tensor]:
        hp = self.hparams
        fake_scores = critic(fake)["adv"]
        adv = adversarial_d_loss(hp.adv_loss, real_scores, fake_scores)
        if hp.adv_loss == "wgan-gp" and hp.lambda_gp > 0:
            # Per-sample interpolation weights keyed like the targets (None outside training_step: torch.rand).
            alpha = self._uniform(self._step_keys, purpose) if self._step_keys is not None else None
            gp = gradient_penalty(critic, real, fake, weight=1.0, alpha=alpha)
        else:
            gp = real.new_zeros(())
        return adv, gp

    def _discriminator_losses(self, batch: Mapping[str, Any], fakes: Sequence[torch.Tensor],
                              boxes: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Critic losses on real images vs each set of fakes, plus expression/AU heads on real images."""
        hp = self.hparams
        images = batch["image"]
        zero = images.new_zeros(())
        d = self.discriminator
        real_out = d.global_d(images)
        adv, gp = zero, zero
        for fake_index, fake in enumerate(fakes):
            a, g = self._d_adv_and_gp(d.global_d, images, fake, real_out["adv"], _DRAW_GP + fake_index)
            adv, gp = adv + a / len(fakes), gp + g / len(fakes)
        cls = (expression_classification_loss(real_out["expression"], batch["expression"])
               if batch.get("expression") is not None else zero)
        au = au_regression_loss(real_out["aus"], batch["aus"].float(), hp.au_loss) if batch.get("aus") is not None else zero

        local_adv, local_gp, local_au = zero, zero, zero
        real_crops = self._local_crops(images, boxes)
        if real_crops is not None:
            targets = d.region_targets(batch["aus"].float()) if batch.get("aus") is not None else None
            fake_crops = [self._local_crops(fake, boxes) for fake in fakes]
            for index, region in enumerate(self.region_names):
                critic = d.local_d[region]
                real_region = real_crops[:, index]
                out = critic(real_region)
                for fake_index, crops in enumerate(fake_crops):
                    a, g = self._d_adv_and_gp(critic, real_region, crops[:, index], out["adv"],
                                              _DRAW_GP + 10 * (index + 1) + fake_index)
                    local_adv = local_adv + a / (len(fakes) * len(self.region_names))
                    local_gp = local_gp + g / (len(fakes) * len(self.region_names))
                if targets is not None:
                    local_au = local_au + au_regression_loss(out["aus"], targets[region], hp.au_loss) / len(self.region_names)
        return {"adv": adv, "gp": gp, "cls": cls, "au": au, "local_adv": local_adv, "local_gp": local_gp,
                "local_au": local_au}

    def _d_total(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        hp = self.hparams
        return (losses["adv"] + hp.lambda_gp * losses["gp"] + hp.lambda_cls * losses["cls"] + hp.lambda_au * losses["au"]
                + hp.lambda_local * (losses["local_adv"] + hp.lambda_gp * losses["local_gp"] + hp.lambda_au * losses["local_au"]))

    # ------------------------------------------------------------------ generator helpers
    def _judge_fake(self, fake: GeneratorOutput, aus_target: torch.Tensor | None,
                    expression_target: torch.Tensor | None, expression_valid: torch.Tensor | None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Generator-side adversarial + classification losses of one set of fakes, and the global D outputs."""
        hp = self.hparams
        d = self.discriminator
        zero = fake.image.new_zeros(())
        out = d.global_d(fake.image)
        losses = {"adv": adversarial_g_loss(hp.adv_loss, out["adv"]), "cls": zero, "au": zero,
                  "local_adv": zero, "local_au": zero}
        if expression_target is not None:
            valid = expression_valid if expression_valid is not None else torch.ones_like(expression_target, dtype=torch.bool)
            if bool(valid.any()):
                losses["cls"] = expression_classification_loss(out["expression"][valid], expression_target[valid])
        if aus_target is not None:
            losses["au"] = au_regression_loss(out["aus"], aus_target, hp.au_loss)
        crops = self._local_crops(fake.image, fake.boxes)
        if crops is not None:
            targets = d.region_targets(aus_target) if aus_target is not None else None
            for index, region in enumerate(self.region_names):
                local = d.local_d[region](crops[:, index])
                losses["local_adv"] = losses["local_adv"] + adversarial_g_loss(hp.adv_loss, local["adv"]) / len(self.region_names)
                if targets is not None:
                    losses["local_au"] = losses["local_au"] + au_regression_loss(local["aus"], targets[region], hp.au_loss) / len(self.region_names)
        return losses, out

    def _attention_loss(self, *outputs: GeneratorOutput) -> torch.Tensor:
        hp = self.hparams
        total = outputs[0].image.new_zeros(())
        for out in outputs:
            total = total + attention_regularization(out.attention, hp.lambda_attn_mean, hp.lambda_attn_tv)
            if out.local_crop_attention.shape[1]:
                total = total + attention_regularization(out.local_crop_attention.flatten(0, 1),
                                                         hp.lambda_attn_mean, hp.lambda_attn_tv)
        return total / len(outputs)

    def _regions_of_fake(self, fake: torch.Tensor, landmarks: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
        # The segmenter re-parses the edit (a new mouth shape has a new mask); landmarks are reused from the source.
        return self._region_inputs(fake, landmarks, with_grad=True)[0]

    def _manipulate_g_losses(self, batch: Mapping[str, Any], targets: Mapping[str, torch.Tensor],
                             region_kwargs: Mapping[str, Any], code_source: torch.Tensor
                             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        hp = self.hparams
        images = batch["image"]
        code_target = self._target_codes(self.coder, targets)
        fake = self.generator(images, code_target, **region_kwargs)
        losses, _ = self._judge_fake(fake, targets["aus"], targets["expression"], targets["expression_valid"])
        reconstructed = self.generator(fake.image, code_source, **self._regions_of_fake(fake.image, batch.get("landmarks")))
        losses["cycle_l1"] = cycle_loss(reconstructed.image, images)
        losses["attention"] = self._attention_loss(fake, reconstructed)
        # The target codes must read back as their targets, so label/AU codes stay readable as AUs.
        losses["code"] = au_regression_loss(self.coder.to_aus(code_target), targets["aus"], hp.au_loss)
        total = (losses["adv"] + hp.lambda_cls * losses["cls"] + hp.lambda_au * losses["au"]
                 + hp.lambda_local * (losses["local_adv"] + hp.lambda_au * losses["local_au"])
                 + hp.lambda_cyc * losses["cycle_l1"] + losses["attention"] + hp.lambda_code * losses["code"])
        out = {f"manipulate/{k}": v for k, v in losses.items()}
        valid = targets.get("truth_valid")
        if valid is not None and bool(valid.any()):
            paired = F.l1_loss(fake.image[valid].float(), targets["truth"][valid].float())
            out["edit_l1_gt"] = paired.detach()
            if hp.lambda_paired > 0:
                out["manipulate/paired_l1"] = paired
                total = total + hp.lambda_paired * paired
        return out, total

    def _transfer_g_losses(self, batch: Mapping[str, Any], region_kwargs: Mapping[str, Any], code_source: torch.Tensor
                           ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        hp = self.hparams
        images, references = batch["image"], batch["reference_image"]
        code_reference = self.coder.from_image(references)
        self_rec = self.generator(images, code_source, **region_kwargs)
        swapped = self.generator(images, code_reference, **region_kwargs)
        ref_aus = batch.get("reference_aus")
        ref_expr = batch.get("reference_expression")
        losses, swapped_d = self._judge_fake(swapped, ref_aus.float() if ref_aus is not None else None, ref_expr, None)
        with torch.no_grad():
            self_d = self.discriminator.global_d(self_rec.image)
        swap_back = self.generator(swapped.image, code_source,
                                   **self._regions_of_fake(swapped.image, batch.get("landmarks")))
        losses["recon_l1"] = self_reconstruction_loss(self_rec.image, images)
        # Swap consistency (a): D's outputs on swaps match their statistics on self-reconstructions.
        losses["swap_stats"] = statistics_matching_loss(
            {"adv": swapped_d["adv"], "expression": swapped_d["expression"].softmax(1), "aus": swapped_d["aus"]},
            {"adv": self_d["adv"], "expression": self_d["expression"].softmax(1), "aus": self_d["aus"]})
        # Swap consistency (b): the swap-back cycle.
        losses["swap_cycle_l1"] = cycle_loss(swap_back.image, images)
        losses["attention"] = self._attention_loss(self_rec, swapped, swap_back)
        # Multi-class adversarial: the encoder makes the AU-free feature uninformative to the (frozen) classifier.
        losses["mcadv_encoder"] = multiclass_adversarial_encoder_loss(self.discriminator.feature_classifier(self_rec.au_free))
        total = (losses["adv"] + hp.lambda_cls * losses["cls"] + hp.lambda_au * losses["au"]
                 + hp.lambda_local * (losses["local_adv"] + hp.lambda_au * losses["local_au"])
                 + hp.lambda_rec * losses["recon_l1"] + hp.lambda_swap * losses["swap_stats"]
                 + hp.lambda_cyc * losses["swap_cycle_l1"] + losses["attention"]
                 + hp.lambda_mcadv * losses["mcadv_encoder"])
        out = {f"transfer/{k}": v for k, v in losses.items()}
        if batch.get("transfer_target") is not None:
            paired = F.l1_loss(swapped.image.float(), batch["transfer_target"].float())
            out["transfer_l1_gt"] = paired.detach()
            if hp.lambda_paired > 0:
                out["transfer/paired_l1"] = paired
                total = total + hp.lambda_paired * paired
        return out, total

    # ------------------------------------------------------------------ Lightning hooks
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Adam optimisers, in order: ``discriminator`` (global + local critics), ``feature_classifier``
        (transfer tasks only), ``generator`` (generator + coder, plus the segmenter as a second parameter group
        with ``segmenter_lr`` when it is trainable).

        Why the segmenter is a parameter group of the generator optimiser rather than a fourth optimiser:
        ``toggle_optimizer`` enables exactly one optimiser's parameters, so a separate segmenter optimiser
        would be frozen during the generator step, cutting the GAN -> segmenter gradient path.
        """
        hp = self.hparams
        betas = tuple(hp.betas)
        d_params = list(self.discriminator.global_d.parameters()) + list(self.discriminator.local_d.parameters())
        optimizers = {"discriminator": torch.optim.Adam(d_params, lr=hp.lr, betas=betas)}
        if self.uses_transfer:
            optimizers["feature_classifier"] = torch.optim.Adam(self.discriminator.feature_classifier.parameters(),
                                                                lr=hp.feature_classifier_lr or hp.lr, betas=betas)
        groups = [{"params": list(self.generator.parameters()) + list(self.coder.parameters())}]
        if self.segmenter_trainable:
            groups.append({"params": list(self.segmenter.parameters()), "lr": hp.segmenter_lr or hp.lr})
        optimizers["generator"] = torch.optim.Adam(groups, lr=hp.lr, betas=betas)
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

    def _optimizer_step(self, optimizer: Any) -> None:
        """Average this optimiser's gradients over DDP ranks (one collective), then step it.

        DDP's reducer is off for this module (start of :meth:`training_step`), because the GAN schedule's several
        backward passes per batch with toggled optimisers break its bookkeeping; see
        :mod:`segexpr.modules.distributed`. Under a 16-mixed ``GradScaler`` the gradients are still scaled
        here, which averaging does not mind; Lightning's ``optimizer.step()`` unscales and skips non-finite
        steps on every rank alike (the averaged gradients are the same everywhere).
        """
        if self._world_size() > 1:
            all_reduce_gradients(optimizer)
        optimizer.step()

    def configure_model(self) -> None:
        """Compile the networks when ``compile`` is set (in place, so state-dict keys stay unchanged)."""
        option = self.hparams.get("compile", False)
        if not option or self._compiled:
            return
        backend = "inductor" if option is True else str(option)
        for network in (self.generator, self.coder, self.discriminator, self.segmenter):
            if network is not None:
                network.compile(backend=backend)
        self._compiled = True

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        hp = self.hparams
        batch, parsing = _split_combined(batch)
        self._check_batch(batch)
        tasks = self._tasks_for(batch)
        images = batch["image"]
        batch_size = images.shape[0]
        opts = self._named_optimizers()
        if self._world_size() > 1:
            # Keep Lightning's DDP wrapper (initial broadcast, samplers) but never arm its reducer: Lightning
            # re-enables require_backward_grad_sync after every training_step (_DDPForwardRedirection) and
            # prepares the reducer in each manual_backward, which needs every parameter in every backward.
            # Gradients are averaged per optimiser step in _optimizer_step instead (no find_unused_parameters).
            disable_reducer(self.trainer.model)
        if self._train_batches < hp.get("segmenter_warmup_steps", 0) and self.segmenter_trainable:
            self._segmenter_warmup_step(batch, parsing)
            return
        self._step_keys = self._batch_keys(batch)
        targets = self._sample_manipulation_targets(batch) if "manipulate" in tasks else None
        logs: dict[str, torch.Tensor] = {}

        # ---- discriminator step (every batch)
        d_opt = opts["discriminator"]
        self.toggle_optimizer(d_opt)
        with torch.no_grad():
            region_kwargs, _ = self._region_inputs(images, batch.get("landmarks"), with_grad=False)
            fakes, boxes, au_free = [], None, None
            if targets is not None:
                out = self.generator(images, self._target_codes(self.coder, targets), **region_kwargs)
                fakes.append(out.image)
                boxes, au_free = out.boxes, out.au_free
            if "transfer" in tasks:
                out = self.generator(images, self.coder.from_image(batch["reference_image"]), **region_kwargs)
                fakes.append(out.image)
                boxes, au_free = out.boxes, out.au_free
        d_losses = self._discriminator_losses(batch, fakes, boxes)
        d_total = self._d_total(d_losses)
        self._check_finite(d_losses, d_total, "discriminator")
        d_opt.zero_grad()
        self.manual_backward(d_total)
        self._optimizer_step(d_opt)
        self.untoggle_optimizer(d_opt)
        logs.update({f"d_{k}": v.detach() for k, v in d_losses.items()})
        logs["d_loss"] = d_total.detach()

        # ---- AU-free feature classifier step (transfer): learn expression/AUs from the detached AU-free feature
        if "transfer" in tasks and (batch.get("expression") is not None or batch.get("aus") is not None):
            fc_opt = opts["feature_classifier"]
            self.toggle_optimizer(fc_opt)
            fc_loss = multiclass_adversarial_classifier_loss(
                self.discriminator.feature_classifier(au_free.detach()), batch.get("expression"),
                batch["aus"].float() if batch.get("aus") is not None else None, hp.au_loss)
            self._check_finite({"feature_classifier": fc_loss}, fc_loss, "feature-classifier")
            fc_opt.zero_grad()
            self.manual_backward(hp.lambda_mcadv * fc_loss)
            self._optimizer_step(fc_opt)
            self.untoggle_optimizer(fc_opt)
            logs["fc_loss"] = fc_loss.detach()

        # ---- generator (+ coder, + segmenter when joint) step every n_critic batches
        self._train_batches += 1
        if self._train_batches % hp.n_critic == 0:
            g_opt = opts["generator"]
            self.toggle_optimizer(g_opt)
            region_kwargs, logits = self._region_inputs(images, batch.get("landmarks"), with_grad=True)
            code_source = self.coder.from_image(images)
            g_losses: dict[str, torch.Tensor] = {}
            g_total = images.new_zeros(())
            if "manipulate" in tasks:
                part, total = self._manipulate_g_losses(batch, targets, region_kwargs, code_source)
                g_losses.update(part)
                g_total = g_total + total
            if "transfer" in tasks:
                part, total = self._transfer_g_losses(batch, region_kwargs, code_source)
                g_losses.update(part)
                g_total = g_total + total
            if batch.get("aus") is not None or batch.get("expression") is not None:
                g_losses["image_code"] = image_code_loss(self.coder, code_source, batch, hp.au_loss)
                g_total = g_total + hp.lambda_code * g_losses["image_code"]
            if self.segmenter_trainable and hp.lambda_seg > 0:
                # Mask supervision from the parsing batch of a CombinedDataModule, else from the GAN batch.
                if parsing is not None:
                    seg_logits, seg_mask = self.segmenter(parsing["image"]), parsing["mask"]
                else:
                    seg_logits, seg_mask = logits, batch.get("mask")
                if seg_mask is not None:
                    g_losses["seg_loss"] = ohem_cross_entropy(seg_logits, seg_mask.long(), **self._seg_loss_args)
                    g_total = g_total + hp.lambda_seg * g_losses["seg_loss"]
            diagnostic = {k: g_losses.pop(k) for k in ("transfer_l1_gt", "edit_l1_gt") if k in g_losses}
            self._check_finite(g_losses, g_total, "generator")
            g_opt.zero_grad()
            self.manual_backward(g_total)
            self._optimizer_step(g_opt)
            self.untoggle_optimizer(g_opt)
            if self.ema is not None:
                self.ema.update({"generator": self.generator, "coder": self.coder})
            logs.update({k: v.detach() for k, v in {**g_losses, **diagnostic}.items()})
            logs["g_loss"] = g_total.detach()

        self._step_keys = None
        if self.segmenter_trainable and self._world_size() > 1:
            # DDP broadcasts buffers from rank 0 before each forward while its reducer is armed; it is not
            # (see segexpr.modules.distributed), so keep BatchNorm statistics identical here instead.
            broadcast_buffers(self.segmenter)
        headline = {k: logs.pop(k) for k in ("d_loss", "g_loss") if k in logs}
        self.log_dict({f"train/{k}": v for k, v in logs.items()}, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in headline.items()}, prog_bar=True, batch_size=batch_size)
        if hp.sample_every_n_steps and self._train_batches % hp.sample_every_n_steps == 0:
            self._log_samples(batch, "train/samples")

    def _segmenter_warmup_step(self, batch: Mapping[str, Any], parsing: Mapping[str, Any] | None) -> None:
        """One segmentation-only step of the generator optimiser (only the segmenter's group has gradients)."""
        source = parsing if parsing is not None else batch
        if source.get("mask") is None:
            raise KeyError("segmenter_warmup_steps > 0 needs batches with 'mask' (or a CombinedDataModule parsing "
                           f"batch); keys: {sorted(source)}")
        g_opt = self._named_optimizers()["generator"]
        self.toggle_optimizer(g_opt)
        seg_loss = ohem_cross_entropy(self.segmenter(source["image"]), source["mask"].long(), **self._seg_loss_args)
        self._check_finite({"seg_loss": seg_loss}, seg_loss, "segmenter warm-up")
        g_opt.zero_grad(set_to_none=True)  # parameters without gradients are skipped by Adam
        self.manual_backward(seg_loss)
        self._optimizer_step(g_opt)
        self.untoggle_optimizer(g_opt)
        self._train_batches += 1
        if self._world_size() > 1:
            broadcast_buffers(self.segmenter)
        self.log("train/warmup_seg_loss", seg_loss.detach(), prog_bar=True, batch_size=source["image"].shape[0])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx, "test")

    def _evaluation_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        batch, parsing = _split_combined(batch)
        images = batch["image"]
        batch_size = images.shape[0]
        generator, coder = self._eval_networks()
        region_kwargs, logits = self._region_inputs(images, batch.get("landmarks"), with_grad=False)
        reconstruction = generator(images, coder.from_image(images), **region_kwargs).image
        self.val_recon_l1.update((reconstruction - images).abs().mean(dim=(1, 2, 3)))
        self.log(f"{stage}/recon_l1", self.val_recon_l1, prog_bar=True, batch_size=batch_size)
        # Expression accuracy of edits as judged by the GAN's *own* discriminator: a training diagnostic, not
        # an independent evaluation (use segexpr.metrics.ExpressionEditMetrics with a separate recogniser).
        targets = (torch.arange(batch_size, device=images.device) + batch_idx) % NUM_EXPRESSIONS
        edited = generator(images, coder.from_label(targets), **region_kwargs).image
        self.val_d_acc_edit(self.discriminator.global_d(edited)["expression"], targets)
        self.log(f"{stage}/d_acc_edit", self.val_d_acc_edit, batch_size=batch_size)
        if self.uses_manipulate and batch.get("edit_expression") is not None and batch.get("edit_target") is not None:
            labelled = generator(images, coder.from_label(batch["edit_expression"].long()), **region_kwargs).image
            self.val_edit_l1_gt.update((labelled - batch["edit_target"]).abs().mean(dim=(1, 2, 3)))
            self.log(f"{stage}/edit_l1_gt", self.val_edit_l1_gt, batch_size=batch_size)
        if self.uses_transfer and batch.get("reference_image") is not None and batch.get("transfer_target") is not None:
            swapped = generator(images, coder.from_image(batch["reference_image"]), **region_kwargs).image
            self.val_transfer_l1_gt.update((swapped - batch["transfer_target"]).abs().mean(dim=(1, 2, 3)))
            self.log(f"{stage}/transfer_l1_gt", self.val_transfer_l1_gt, batch_size=batch_size)
        if parsing is not None and self.segmenter is not None:
            self.val_parsing.update(self._segment(parsing["image"], with_grad=False), parsing["mask"].long())
        elif logits is not None and batch.get("mask") is not None:
            self.val_parsing.update(logits, batch["mask"].long())
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
        if int(self.val_parsing.confmat.sum()) > 0 or self.trainer.world_size > 1:
            if self.segmenter is not None and self.hparams.region_source == "segmenter":
                self.log(f"{stage}/parsing_miou", self.val_parsing.compute()["miou"])
        self.val_parsing.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["segexpr_train_batches"] = self._train_batches
        if self._key_generator is not None:
            checkpoint["segexpr_key_generator"] = self._key_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._train_batches = int(checkpoint.get("segexpr_train_batches", 0))
        if "segexpr_key_generator" in checkpoint:
            self._key_generator = torch.Generator()
            self._key_generator.set_state(checkpoint["segexpr_key_generator"])

    def _log_samples(self, batch: Mapping[str, Any], tag: str) -> None:
        if self._trainer is None or not self.trainer.is_global_zero:
            return
        grid = sample_grid(self, batch, num_samples=self.hparams.num_samples)
        log_image_grid(self, grid, tag, caption=" | ".join(sample_grid_columns(self, batch)))

    # ------------------------------------------------------------------ public inference API
    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def _prepare(self, images: torch.Tensor, landmarks: torch.Tensor | None, name: str = "images"
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Resize to the training size (and scale landmarks accordingly)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{name} must be a float tensor [B, 3, H, W] in [-1, 1], got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        images = images.to(device=self.device, dtype=torch.float32)
        height, width = images.shape[-2:]
        size = self.image_size
        if landmarks is not None:
            landmarks = landmarks.to(device=self.device, dtype=torch.float32)
            if landmarks.dim() == 2:
                landmarks = landmarks.unsqueeze(0).expand(images.shape[0], -1, -1)
            landmarks = landmarks * torch.tensor([size / width, size / height], device=self.device)
        if (height, width) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return images, landmarks

    @staticmethod
    def _restore(original: torch.Tensor, small_in: torch.Tensor, small_out: torch.Tensor) -> torch.Tensor:
        """Back to the input size: add the upsampled *change* to the full-resolution input (keeps its detail)."""
        if original.shape[-2:] == small_out.shape[-2:]:
            return small_out.clamp(-1, 1)
        delta = F.interpolate(small_out - small_in, size=original.shape[-2:], mode="bilinear", align_corners=False)
        return (original.to(small_out) + delta).clamp(-1, 1)

    def _generate(self, images: torch.Tensor, code_fn, landmarks: torch.Tensor | None) -> torch.Tensor:
        generator, coder = self._eval_networks()
        small, small_landmarks = self._prepare(images, landmarks)
        region_kwargs, _ = self._region_inputs(small, small_landmarks, with_grad=False)
        out = generator(small, code_fn(coder, small.shape[0]), **region_kwargs).image
        return self._restore(images.to(self.device, torch.float32), small, out)

    def edit(self, images: torch.Tensor, expression: int | str | torch.Tensor | None = None,
             aus: torch.Tensor | None = None, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """Set the expression of ``images`` by label or AU vector.

        Args:
            images: float ``[B, 3, H, W]`` in ``[-1, 1]``, any size (processed at ``image_size``; the change is
                upsampled onto the original, so unedited detail is kept).
            expression: an index in ``[0, 8)``, a name from :data:`segexpr.data.labels.EXPRESSIONS`, or an int64
                tensor ``[B]``. Exactly one of ``expression`` / ``aus``.
            aus: float ``[B, 17]`` or ``[17]`` AU intensities (trained range ``[0, 1]``).
            landmarks: float ``[B, 68, 2]`` pixel coordinates of ``images``; required for
                ``region_source="landmarks"`` only.

        Returns:
            float ``[B, 3, H, W]`` in ``[-1, 1]``. Runs in eval mode without gradients (EMA weights when present)
            and restores the previous train/eval mode.
        """
        if (expression is None) == (aus is None):
            raise ValueError("edit needs exactly one of expression= or aus=")
        batch = images.shape[0]
        if expression is not None:
            labels = _as_index_tensor(expression, batch, self.device)
            code_fn = lambda coder, n: coder.from_label(labels)  # noqa: E731
        else:
            aus_t = torch.as_tensor(aus, dtype=torch.float32, device=self.device)
            aus_t = aus_t.unsqueeze(0).expand(batch, -1) if aus_t.dim() == 1 else aus_t
            if tuple(aus_t.shape) != (batch, NUM_AUS):
                raise ValueError(f"aus must be [{NUM_AUS}] or [{batch}, {NUM_AUS}], got {tuple(aus_t.shape)}")
            code_fn = lambda coder, n: coder.from_aus(aus_t)  # noqa: E731
        with self._inference():
            return self._generate(images, code_fn, landmarks)

    def transfer(self, images: torch.Tensor, references: torch.Tensor, landmarks: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Copy the expression of ``references`` onto ``images`` (A's AU-free feature + B's AU-related code).

        Args:
            images: float ``[B, 3, H, W]`` in ``[-1, 1]``, any size.
            references: float ``[B, 3, H', W']`` in ``[-1, 1]`` (or ``[1, 3, H', W']``, broadcast), any size.
            landmarks: landmarks of ``images`` for ``region_source="landmarks"``.

        Returns:
            float ``[B, 3, H, W]`` in ``[-1, 1]`` (eval mode, no gradients; EMA weights when present).
        """
        refs, _ = self._prepare(references, None, "references")
        if refs.shape[0] == 1 and images.shape[0] > 1:
            refs = refs.expand(images.shape[0], -1, -1, -1)
        if refs.shape[0] != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {refs.shape[0]} references")
        with self._inference():
            return self._generate(images, lambda coder, n: coder.from_image(refs), landmarks)

    def regions(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """The region masks the generator uses, float ``[B, R, H, W]`` in ``[0, 1]`` at the input size.

        * ``"segmenter"``: the soft masks ``soft_regions(segmenter(images))`` that the crop boxes come from (the
          fusion weights are feathered versions of these).
        * ``"landmarks"``: the soft box masks the generator fuses with; requires ``landmarks`` ``[B, 68, 2]``.
        * ``"none"``: an empty tensor ``[B, 0, H, W]`` (global generator only).

        Channel order is :attr:`region_names`. Eval mode, no gradients.
        """
        source = self.hparams.region_source
        height, width = images.shape[-2:]
        with self._inference():
            small, small_landmarks = self._prepare(images, landmarks)
            if source == "none":
                return small.new_zeros(images.shape[0], 0, height, width)
            if source == "segmenter":
                masks = soft_regions(self.segmenter(small), self.region_groups)
            else:
                if small_landmarks is None:
                    raise ValueError("region_source='landmarks': regions() needs landmarks [B, 68, 2]")
                generator, _ = self._eval_networks()
                boxes = generator.region_boxes(tuple(small.shape[-2:]), landmarks=small_landmarks)
                masks = box_masks(boxes, tuple(small.shape[-2:]), generator.box_feather)[:, :, 0]
            if masks.shape[-2:] != (height, width):
                masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
            return masks.clamp(0, 1)


# ------------------------------------------------------------------------------------------------ sample grids
def _region_class_map(masks: torch.Tensor, region_names: Sequence[str], threshold: float = 0.5) -> torch.Tensor:
    """Soft region masks ``[B, R, H, W]`` -> an order-A class map coloured with each region's first class."""
    classes = torch.tensor([REGION_GROUPS[r][0] if r in REGION_GROUPS else 1 for r in region_names],
                           device=masks.device, dtype=torch.long)
    best, index = masks.max(dim=1)
    return torch.where(best > threshold, classes[index], torch.zeros_like(index))


def sample_grid_columns(module: JointModule, batch: Mapping[str, Any]) -> list[str]:
    """Column titles of :func:`sample_grid` for this module and batch."""
    columns = ["source"] + list(EXPRESSIONS)
    if module.uses_transfer and batch.get("reference_image") is not None:
        columns += ["reference", "transfer"]
    if module.region_names and (module.hparams.region_source != "landmarks" or batch.get("landmarks") is not None):
        columns.append("regions")
    return columns


def sample_grid(module: JointModule, batch: Mapping[str, Any], num_samples: int = 4) -> torch.Tensor:
    """A result grid, float ``[3, H', W']`` in ``[0, 1]``.

    Rows are samples (the first ``num_samples`` of ``batch``); columns are (see :func:`sample_grid_columns`):
    source | one edit per target expression (8, AffectNet order) | reference | transfer (when the module
    trains transfer and the batch has ``reference_image``) | region-mask overlay (the masks :meth:`JointModule.regions`
    returns, coloured like the parsing classes; omitted for ``region_source="none"``).
    """
    images = batch["image"][:num_samples].to(module.device, torch.float32)
    count = images.shape[0]
    landmarks = batch.get("landmarks")
    landmarks = landmarks[:count] if landmarks is not None else None
    columns = [images]
    for expression in range(NUM_EXPRESSIONS):
        columns.append(module.edit(images, expression=expression, landmarks=landmarks))
    if module.uses_transfer and batch.get("reference_image") is not None:
        references = batch["reference_image"][:count].to(module.device, torch.float32)
        columns += [references, module.transfer(images, references, landmarks=landmarks)]
    if module.region_names and (module.hparams.region_source != "landmarks" or landmarks is not None):
        masks = module.regions(images, landmarks=landmarks)
        columns.append(overlay(images, _region_class_map(masks, module.region_names), alpha=0.6))
    tiles = torch.stack([c.detach().float().cpu().clamp(-1, 1) for c in columns], dim=1).flatten(0, 1)
    return torchvision.utils.make_grid((tiles + 1) / 2, nrow=len(columns), padding=2, pad_value=1.0).clamp(0, 1)


def log_image_grid(module: pl.LightningModule, grid: torch.Tensor, tag: str, caption: str | None = None) -> list[Path]:
    """Send ``grid`` (float ``[3, H, W]`` in ``[0, 1]``) to the module's loggers; returns PNG paths written.

    W&B loggers get ``log_image``, TensorBoard loggers ``add_image``; with any other logger (or none) the grid
    is saved as ``<trainer.log_dir>/samples/<tag>_step<step>.png`` (``/`` in the tag becomes ``_``).
    Call from global rank zero only.
    """
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    step = module.global_step
    written: list[Path] = []
    needs_png = not module.loggers
    for logger in module.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[grid], step=step, caption=[caption] if caption else None)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, grid, global_step=step)
        else:
            needs_png = True
    if needs_png:
        log_dir = module.trainer.log_dir or module.trainer.default_root_dir
        path = Path(log_dir) / "samples" / f"{tag.replace('/', '_')}_step{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        torchvision.utils.save_image(grid, path)
        written.append(path)
    return written
