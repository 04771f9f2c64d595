"""The GAN's objectives as plain callables over the networks and a batch: named terms and a weighted total.

:class:`GANObjectives` holds references to the networks (it owns none) and the loss settings; each method
returns :class:`Terms` (a dict of named scalar terms and their weighted total) and can be called without a
LightningModule, a Trainer or an optimiser. ``JointModule`` decides *when* each objective runs and which
optimiser steps on it (the schedule); this module decides *what* is computed.

* :meth:`GANObjectives.discriminator_loss` -- critics on real vs fake (+ gradient penalty), expression/AU heads on
  real images, the local critics on region crops.
* :meth:`GANObjectives.manipulation_loss` -- StarGAN/GANimation-style edits to label or AU targets, with the cycle
  back to the source code, attention regularisation and the code-readout term.
* :meth:`GANObjectives.transfer_loss` -- the transfer paper's swap: self-reconstruction, swap, swap-back cycle,
  swap-consistency statistics and the multi-class adversarial encoder term.
* :meth:`GANObjectives.generator_loss` -- both of the above in one go, their generator passes batched into two
  calls (:mod:`segexpr.gan.passes`) and their fakes judged in one critic call: what a training step runs.
* :meth:`GANObjectives.feature_classifier_loss` -- the AU-free feature classifier on detached features.
* :func:`image_code_loss` -- supervises the image code with the batch's labels (readout + alignment).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segexpr.losses.gan import (
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
from segexpr.gan.passes import Pass, generator_passes
from segexpr.gan.targets import DRAW_GP, target_codes
from segexpr.ops.regions import crop

__all__ = ["GANObjectives", "LossWeights", "Terms", "image_code_loss"]

#: ``(fake, landmarks) -> generator region keyword arguments`` for a generated image (an ablation hook; by
#: default the cycle and swap-back passes reuse the source's region inputs).
RegionsOf = Callable[[torch.Tensor, "torch.Tensor | None"], Mapping[str, Any]]
#: ``purpose -> per-sample GP interpolation weights [B] or None`` (None: torch.rand).
GPAlpha = Callable[[int], "torch.Tensor | None"]


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of ``values [B]`` over ``valid [B]`` (bool), 0 when nothing is valid; no host synchronisation."""
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


class Terms(NamedTuple):
    """Named scalar terms (for logging) and the weighted ``total`` to back-propagate.

    The generator objectives also return what the critic's step can reuse (detached there): ``fake`` (the edit
    or swap ``[B, 3, H, W]``), its crop ``boxes`` ``[B, R, 4]`` (or ``None``) and the source's ``au_free`` feature.
    """

    terms: dict[str, torch.Tensor]
    total: torch.Tensor
    fake: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    au_free: torch.Tensor | None = None


@dataclass(frozen=True)
class LossWeights:
    """The ``lambda_*`` weights (see ``docs/training.md``); field ``x`` is ``lambda_x``."""

    gp: float = 10.0
    cls: float = 1.0
    au: float = 1.0
    cyc: float = 10.0
    rec: float = 10.0
    swap: float = 1.0
    attn_mean: float = 0.1
    attn_tv: float = 1e-5
    mcadv: float = 1.0
    local: float = 1.0
    code: float = 1.0
    paired: float = 0.0

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> "LossWeights":
        """Pick ``lambda_<field>`` entries of a hyperparameter mapping (missing ones keep their defaults)."""
        return cls(**{f.name: float(hparams[f"lambda_{f.name}"]) for f in fields(cls) if f"lambda_{f.name}" in hparams})


def image_code_loss(coder: nn.Module, code: torch.Tensor, batch: Mapping[str, Any], au_kind: str = "mse"
                    ) -> torch.Tensor:
    """Supervise the image code ``code = coder.from_image(batch["image"])`` with the batch's labels.

    Terms (each only when its label is present):

    * readout: ``au_regression(coder.to_aus(code), aus)`` and ``CE(coder.to_expression_logits(code), expression)``;
    * alignment: ``MSE(code, coder.from_aus(aus).detach())`` -- the image code is pulled onto the code of its
      own AU vector. The AU code is a function of AUs only, so this is what removes *identity* from the
      reference code (readout alone would leave identity in the directions the linear heads ignore). The AU
      code is the detached target so the two cannot collapse together.

    Returns a scalar (0 when the batch has no labels).
    """
    terms = []
    aus, expression = batch.get("aus"), batch.get("expression")
    if aus is not None:
        aus = aus.float()
        terms.append(au_regression_loss(coder.to_aus(code), aus, au_kind))
        terms.append(F.mse_loss(code.float(), coder.from_aus(aus).detach().float()))
    if expression is not None:
        terms.append(expression_classification_loss(coder.to_expression_logits(code), expression))
    return torch.stack(terms).sum() if terms else code.new_zeros(())


def _split_outputs(outputs: Any, sizes: Sequence[int]) -> list[Any]:
    """A critic's outputs on a concatenated batch (a tensor, or a dict / tuple of them) -> one per part."""
    if isinstance(outputs, torch.Tensor):
        return list(outputs.split(list(sizes)))
    if isinstance(outputs, Mapping):
        parts = {key: _split_outputs(value, sizes) for key, value in outputs.items()}
        return [{key: chunks[index] for key, chunks in parts.items()} for index in range(len(sizes))]
    if isinstance(outputs, tuple):
        parts = [_split_outputs(value, sizes) for value in outputs]
        return [tuple(chunks[index] for chunks in parts) for index in range(len(sizes))]
    raise TypeError(f"cannot split a critic's output of type {type(outputs).__name__}")


class GANObjectives:
    """Discriminator, manipulation, transfer and feature-classifier objectives over shared networks.

    Args:
        generator: a :class:`~segexpr.models.generators.HierarchicalGenerator` (its outputs carry ``boxes``,
            ``attention``, ``au_free``).
        coder: an :class:`~segexpr.models.generators.ExpressionCoder`.
        discriminator: an :class:`~segexpr.models.discriminators.AUDiscriminator`.
        region_names: regions judged by the local critics (empty: no local critics).
        weights: the loss weights.
        adv_loss: ``"wgan-gp"``, ``"hinge"`` or ``"nonsaturating"``; au_loss: ``"mse"`` or ``"l1"``.
        regions_of: ``None`` (default, the paper's path): the cycle and swap-back passes reuse the *source's*
            region inputs (``region_kwargs``), so the segmenter is neither run on fakes (no BatchNorm statistics
            of generated images, no gradient path through a parse of the fake) nor run twice. A callable
            ``(fake, landmarks) -> region kwargs`` overrides this (e.g. to re-parse the fake, an ablation).

    Gradient paths into the segmenter are only the paper's: through the masks conditioning the generator
    (fusion weights and crop boxes of the generator's own crops). The critics crop their regions at
    *detached* boxes (:meth:`local_crops`), so the critics cannot move the boxes to make crops easier to judge.
    """

    def __init__(self, generator: nn.Module, coder: nn.Module, discriminator: nn.Module,
                 region_names: Sequence[str], weights: LossWeights, adv_loss: str, au_loss: str,
                 regions_of: RegionsOf | None = None) -> None:
        self.generator, self.coder, self.discriminator = generator, coder, discriminator
        self.region_names = tuple(region_names)
        self.weights, self.adv_loss, self.au_loss = weights, adv_loss, au_loss
        self.regions_of = regions_of

    # ------------------------------------------------------------------ shared pieces
    def local_crops(self, images: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor | None:
        """Region crops ``[B, R, 3, c, c]`` for the local critics at *detached* boxes, or ``None`` without boxes.

        The boxes are detached: GAN gradients reach the segmenter only through the masks that condition the
        generator, never through where the critics look.
        """
        if boxes is None or not self.region_names:
            return None
        return crop(images, boxes.detach(), self.discriminator.crop_size)

    def _critic_calls(self, critic: Callable[[torch.Tensor], Any], inputs: Sequence[torch.Tensor]) -> list[Any]:
        """``[critic(x) for x in inputs]`` as one call on their concatenation: the critics compute every sample on
        its own, so this is the same within float rounding, in fewer calls. One call per input when a critic has
        a parametrisation (spectral norm's power iteration steps once per call, which batching would change)."""
        if len(inputs) == 1 or any(hasattr(m, "parametrizations") for m in self.discriminator.modules()):
            return [critic(x) for x in inputs]
        sizes = [x.shape[0] for x in inputs]
        return _split_outputs(critic(torch.cat(list(inputs))), sizes)

    def _fake_regions(self, fake: torch.Tensor, batch: Mapping[str, Any], region_kwargs: Mapping[str, Any]
                      ) -> Mapping[str, Any]:
        """Region inputs of a pass on a generated image: the source's (default) or ``regions_of``'s."""
        return region_kwargs if self.regions_of is None else self.regions_of(fake, batch.get("landmarks"))

    def _adv_and_gp(self, critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, real_scores: torch.Tensor,
                    fake_scores: torch.Tensor, gp_alpha: GPAlpha, purpose: int) -> tuple[torch.Tensor, torch.Tensor]:
        adv = adversarial_d_loss(self.adv_loss, real_scores, fake_scores)
        if self.adv_loss == "wgan-gp" and self.weights.gp > 0:
            return adv, gradient_penalty(critic, real, fake, weight=1.0, alpha=gp_alpha(purpose))
        return adv, real.new_zeros(())

    def _judge_fakes(self, judged: Sequence[tuple[Any, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]]
                     ) -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
        """Generator-side adversarial + classification terms, and the global D outputs, of each set of fakes
        ``(fake, aus_target, expression_target, expression_valid)``; the critics judge all sets in one call."""
        d = self.discriminator
        outs = self._critic_calls(d.global_d, [fake.image for fake, *_ in judged])
        crops = [self.local_crops(fake.image, fake.boxes) for fake, *_ in judged]
        local = (self._critic_calls(d.local_scores, crops) if all(c is not None for c in crops)
                 else [None] * len(judged))
        return [self._judged_terms(out, scores, aus_target, expression_target, expression_valid)
                for (fake, aus_target, expression_target, expression_valid), out, scores in zip(judged, outs, local)]

    def _judged_terms(self, out: Mapping[str, torch.Tensor], local: tuple[torch.Tensor, torch.Tensor] | None,
                      aus_target: torch.Tensor | None, expression_target: torch.Tensor | None,
                      expression_valid: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], Mapping[str, torch.Tensor]]:
        """The terms of one set of fakes from the critics' outputs on it (global ``out``, ``local`` scores and
        features or ``None`` without local critics)."""
        d = self.discriminator
        zero = out["adv"].new_zeros(())
        terms = {"adv": adversarial_g_loss(self.adv_loss, out["adv"]), "cls": zero, "au": zero,
                 "local_adv": zero, "local_au": zero}
        if expression_target is not None:
            valid = expression_valid if expression_valid is not None else torch.ones_like(expression_target, dtype=torch.bool)
            # Mean cross-entropy over the valid samples (0 when none), without a host synchronisation.
            labels = torch.where(valid, expression_target.long(), torch.zeros_like(expression_target.long()))
            per_sample = F.cross_entropy(out["expression"].float(), labels, reduction="none")
            terms["cls"] = _masked_mean(per_sample, valid)
        if aus_target is not None:
            terms["au"] = au_regression_loss(out["aus"], aus_target, self.au_loss)
        if local is not None:
            # All regions' critics in one call; the mean over [B, R, ...] is the mean of the per-region means.
            local_adv, features = local
            terms["local_adv"] = adversarial_g_loss(self.adv_loss, local_adv)
            if aus_target is not None:
                region_targets, local_aus = d.region_targets(aus_target), d.local_aus(features)
                terms["local_au"] = torch.stack([au_regression_loss(local_aus[r], region_targets[r], self.au_loss)
                                                 for r in self.region_names]).mean()
        return terms, out

    def _judged_total(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        w = self.weights
        return (terms["adv"] + w.cls * terms["cls"] + w.au * terms["au"]
                + w.local * (terms["local_adv"] + w.au * terms["local_au"]))

    def attention_loss(self, *outputs: Any) -> torch.Tensor:
        """GANimation's attention regulariser (mean + TV) averaged over generator outputs, global and local."""
        w = self.weights
        total = outputs[0].image.new_zeros(())
        for out in outputs:
            total = total + attention_regularization(out.attention, w.attn_mean, w.attn_tv)
            if out.local_crop_attention.shape[1]:
                total = total + attention_regularization(out.local_crop_attention.flatten(0, 1), w.attn_mean, w.attn_tv)
        return total / len(outputs)

    def _real_head_terms(self, real_out: Mapping[str, torch.Tensor], batch: Mapping[str, Any]
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(expression cross-entropy, AU regression) of the global critic's heads on real images (0 when absent)."""
        zero = real_out["adv"].new_zeros(())
        cls = (expression_classification_loss(real_out["expression"], batch["expression"])
               if batch.get("expression") is not None else zero)
        au = au_regression_loss(real_out["aus"], batch["aus"].float(), self.au_loss) if batch.get("aus") is not None else zero
        return cls, au

    # ------------------------------------------------------------------ objectives
    def discriminator_loss(self, batch: Mapping[str, Any], fakes: Sequence[torch.Tensor], boxes: torch.Tensor | None,
                      gp_alpha: GPAlpha = lambda purpose: None) -> Terms:
        """Critic terms on ``batch["image"]`` vs each of ``fakes`` (detached images), heads on real images."""
        w = self.weights
        images = batch["image"]
        zero = images.new_zeros(())
        d = self.discriminator
        # The real images and every set of fakes in one call of each critic (_critic_calls).
        real_out, *fake_outs = self._critic_calls(d.global_d, [images, *fakes])
        adv, gp = zero, zero
        for k, (fake, fake_out) in enumerate(zip(fakes, fake_outs)):
            a, g = self._adv_and_gp(d.global_d, images, fake, real_out["adv"], fake_out["adv"], gp_alpha, DRAW_GP + k)
            adv, gp = adv + a / len(fakes), gp + g / len(fakes)
        cls, au = self._real_head_terms(real_out, batch)
        local_adv, local_gp, local_au = zero, zero, zero
        real_crops = self.local_crops(images, boxes)
        if real_crops is not None:
            # All regions' critics in one call for all sets of crops. Means over [B, R, ...] are the means of the
            # per-region means; the gradient penalty treats each (sample, region) crop as one sample, with the
            # region's own interpolation weights, so it is the mean of the per-region penalties.
            fakes_crops = [self.local_crops(fake, boxes) for fake in fakes]
            (real_adv, real_features), *fake_scores = self._critic_calls(d.local_scores, [real_crops, *fakes_crops])
            batch_size, regions = real_crops.shape[:2]

            def critic(x: torch.Tensor) -> torch.Tensor:  # [B * R, 3, h, w] -> scores [B * R, 1, h', w']
                return d.local_scores(x.reshape(batch_size, regions, *x.shape[1:]))[0].flatten(0, 1)

            for k, (fake_crops, (fake_adv, _)) in enumerate(zip(fakes_crops, fake_scores)):
                local_adv = local_adv + adversarial_d_loss(self.adv_loss, real_adv, fake_adv) / len(fakes)
                if self.adv_loss == "wgan-gp" and w.gp > 0:
                    alphas = [gp_alpha(DRAW_GP + 10 * (index + 1) + k) for index in range(regions)]
                    alpha = None if any(a is None for a in alphas) else torch.stack(alphas, dim=1).flatten()
                    local_gp = local_gp + gradient_penalty(critic, real_crops.flatten(0, 1), fake_crops.flatten(0, 1),
                                                           weight=1.0, alpha=alpha) / len(fakes)
            if batch.get("aus") is not None:
                region_targets, local_aus = d.region_targets(batch["aus"].float()), d.local_aus(real_features)
                local_au = torch.stack([au_regression_loss(local_aus[r], region_targets[r], self.au_loss)
                                        for r in self.region_names]).mean()
        terms = {"adv": adv, "gp": gp, "cls": cls, "au": au, "local_adv": local_adv, "local_gp": local_gp,
                 "local_au": local_au}
        total = (adv + w.gp * gp + w.cls * cls + w.au * au
                 + w.local * (local_adv + w.gp * local_gp + w.au * local_au))
        return Terms(terms, total)

    def critic_warmup_loss(self, batch: Mapping[str, Any]) -> Terms:
        """The global critic's expression / AU heads on real images only (no fakes, no adversarial term).

        A critic warm-up: in the unpaired setting the generator's classification loss is only as good as these
        heads, and trained from scratch beside the adversarial game they learn the expressions slowly.
        """
        if batch.get("expression") is None and batch.get("aus") is None:
            raise KeyError("critic_warmup_steps > 0 needs batches with 'expression' or 'aus' labels; keys: "
                           f"{sorted(batch)}")
        cls, au = self._real_head_terms(self.discriminator.global_d(batch["image"]), batch)
        return Terms({"cls": cls, "au": au}, self.weights.cls * cls + self.weights.au * au)

    def feature_classifier_loss(self, batch: Mapping[str, Any], au_free: torch.Tensor) -> torch.Tensor:
        """Multi-class adversarial classifier loss: expression/AUs from the *detached* AU-free feature."""
        return multiclass_adversarial_classifier_loss(
            self.discriminator.feature_classifier(au_free.detach()), batch.get("expression"),
            batch["aus"].float() if batch.get("aus") is not None else None, self.au_loss)

    def generator_loss(self, batch: Mapping[str, Any], tasks: Sequence[str],
                       targets: Mapping[str, torch.Tensor] | None, region_kwargs: Mapping[str, Any],
                       code_source: torch.Tensor, au_free: torch.Tensor | None = None) -> list[Terms]:
        """The generator's terms for ``tasks``: ``[manipulation, transfer]`` (those asked for, in that order).

        The passes of both tasks run together (:func:`~segexpr.gan.passes.generator_passes`): the edit, the
        self-reconstruction and the swap as one call on the source images (encoded once), then the cycle and
        the swap-back as one call. The terms are those of :meth:`manipulation_loss` and :meth:`transfer_loss`,
        which are this method with one task.
        """
        unknown = [task for task in tasks if task not in ("manipulate", "transfer")]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; expected 'manipulate' and/or 'transfer'")
        images = batch["image"]
        if au_free is None:  # one encoding of the source images for every pass on them
            au_free = self.generator.encode(images)
        codes: dict[str, torch.Tensor] = {}
        if "manipulate" in tasks:
            if targets is None:
                raise ValueError("the manipulation task needs targets (sample_manipulation_targets)")
            codes["edit"] = target_codes(self.coder, targets)
        if "transfer" in tasks:
            codes["self_rec"] = code_source
            codes["swap"] = self.coder.from_image(batch["reference_image"])
        first = dict(zip(codes, generator_passes(self.generator, [Pass(images, code, au_free) for code in
                                                                   codes.values()], region_kwargs)))
        back_of = {name: source for name, source in (("cycle", "edit"), ("swap_back", "swap")) if source in first}
        backs = self._back_passes({name: first[source].image for name, source in back_of.items()}, code_source,
                                  batch, region_kwargs)
        judged = {}  # the critics judge the edits and the swaps in one call
        if "manipulate" in tasks:  # only heads that learned from the data judge the edit (sample_manipulation_targets)
            judged["edit"] = (first["edit"], targets.get("critic_aus", targets["aus"]), targets["expression"],
                              targets["expression_valid"])
        if "transfer" in tasks:
            ref_aus = batch.get("reference_aus")
            judged["swap"] = (first["swap"], ref_aus.float() if ref_aus is not None else None,
                              batch.get("reference_expression"), None)
        verdicts = dict(zip(judged, self._judge_fakes(list(judged.values()))))
        parts = []
        if "manipulate" in tasks:
            parts.append(self._manipulation_terms(batch, targets, codes["edit"], first["edit"], backs["cycle"],
                                                  verdicts["edit"][0]))
        if "transfer" in tasks:
            parts.append(self._transfer_terms(batch, first["self_rec"], first["swap"], backs["swap_back"],
                                              *verdicts["swap"]))
        return parts

    def _back_passes(self, fakes: Mapping[str, torch.Tensor], code_source: torch.Tensor, batch: Mapping[str, Any],
                     region_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The passes from generated images back to the source's code (cycle, swap-back), by name."""
        if self.regions_of is None:  # the source's region inputs for all of them: one call
            outputs = generator_passes(self.generator, [Pass(fake, code_source) for fake in fakes.values()],
                                       region_kwargs)
            return dict(zip(fakes, outputs))
        return {name: self.generator(fake, code_source, **self._fake_regions(fake, batch, region_kwargs))
                for name, fake in fakes.items()}

    def manipulation_loss(self, batch: Mapping[str, Any], targets: Mapping[str, torch.Tensor],
                     region_kwargs: Mapping[str, Any], code_source: torch.Tensor,
                     au_free: torch.Tensor | None = None) -> Terms:
        """Edit to the sampled targets (:func:`~segexpr.gan.targets.sample_manipulation_targets`), cycle back.

        Terms are prefixed ``manipulate/``; ``edit_l1_gt`` (a diagnostic, not in the total) is the L1 to the
        data's answer where known, which becomes ``manipulate/paired_l1`` in the total with ``paired > 0``.
        """
        return self.generator_loss(batch, ["manipulate"], targets, region_kwargs, code_source, au_free)[0]

    def transfer_loss(self, batch: Mapping[str, Any], region_kwargs: Mapping[str, Any], code_source: torch.Tensor,
                      au_free: torch.Tensor | None = None) -> Terms:
        """Swap the reference's code in: self-reconstruction, swap, swap-back, swap consistency, mc-adversarial.

        Terms are prefixed ``transfer/``; ``transfer_l1_gt`` is a diagnostic against ``transfer_target``.
        """
        return self.generator_loss(batch, ["transfer"], None, region_kwargs, code_source, au_free)[0]

    def _manipulation_terms(self, batch: Mapping[str, Any], targets: Mapping[str, torch.Tensor],
                            code_target: torch.Tensor, fake: Any, reconstructed: Any,
                            judged: dict[str, torch.Tensor]) -> Terms:
        w = self.weights
        images = batch["image"]
        terms = dict(judged)
        terms["cycle_l1"] = cycle_loss(reconstructed.image, images)
        terms["attention"] = self.attention_loss(fake, reconstructed)
        # The target codes must read back as their targets, so label/AU codes stay readable as AUs.
        terms["code"] = au_regression_loss(self.coder.to_aus(code_target), targets["aus"], self.au_loss)
        total = (self._judged_total(terms) + w.cyc * terms["cycle_l1"] + terms["attention"]
                 + w.code * terms["code"])
        out = {f"manipulate/{k}": v for k, v in terms.items()}
        valid = targets.get("truth_valid")
        if valid is not None:
            # L1 over the samples whose answer is known (0 for a batch with none), without a host synchronisation.
            per_sample = (fake.image.float() - targets["truth"].float()).abs().flatten(1).mean(1)
            paired = _masked_mean(per_sample, valid)
            out["edit_l1_gt"] = paired.detach()
            if w.paired > 0:
                out["manipulate/paired_l1"] = paired
                total = total + w.paired * paired
        return Terms(out, total, fake.image, fake.boxes, fake.au_free)

    def _transfer_terms(self, batch: Mapping[str, Any], self_rec: Any, swapped: Any, swap_back: Any,
                        judged: dict[str, torch.Tensor], swapped_d: Mapping[str, torch.Tensor]) -> Terms:
        w = self.weights
        images = batch["image"]
        terms = dict(judged)
        with torch.no_grad():
            self_d = self.discriminator.global_d(self_rec.image)
        terms["recon_l1"] = self_reconstruction_loss(self_rec.image, images)
        # Swap consistency (a): the critic's real/fake scores on swaps match their statistics on
        # self-reconstructions: a swap must look as real as a reconstruction. Only the ``adv`` scores: a swap carries
        # the *reference's* expression, so its expression softmax and AU outputs must differ from the
        # self-reconstruction's (matching them would pull every swap back toward the source's expression and fight
        # the classification terms that judge the swap against the reference's labels).
        terms["swap_stats"] = statistics_matching_loss({"adv": swapped_d["adv"]}, {"adv": self_d["adv"]})
        # Swap consistency (b): the swap-back cycle.
        terms["swap_cycle_l1"] = cycle_loss(swap_back.image, images)
        terms["attention"] = self.attention_loss(self_rec, swapped, swap_back)
        # Multi-class adversarial: the encoder makes the AU-free feature uninformative to the (frozen) classifier.
        terms["mcadv_encoder"] = multiclass_adversarial_encoder_loss(self.discriminator.feature_classifier(self_rec.au_free))
        total = (self._judged_total(terms) + w.rec * terms["recon_l1"] + w.swap * terms["swap_stats"]
                 + w.cyc * terms["swap_cycle_l1"] + terms["attention"] + w.mcadv * terms["mcadv_encoder"])
        out = {f"transfer/{k}": v for k, v in terms.items()}
        if batch.get("transfer_target") is not None:
            paired = F.l1_loss(swapped.image.float(), batch["transfer_target"].float())
            out["transfer_l1_gt"] = paired.detach()
            if w.paired > 0:
                out["transfer/paired_l1"] = paired
                total = total + w.paired * paired
        return Terms(out, total, swapped.image, swapped.boxes, swapped.au_free)
