"""Adversarial, classification, reconstruction, swap-consistency and attention losses.

Every function returns a scalar tensor (a mean over the batch unless stated) and works for any spatial
size. Conventions used throughout:

* Discriminator *scores* are raw, unbounded critic outputs of any shape ``[B, ...]`` (PatchGAN maps
  ``[B, 1, h, w]`` included); losses average over every element.
* Images are float ``[B, 3, H, W]`` in ``[-1, 1]``; AU vectors float ``[B, N]`` in ``[0, 1]``;
  expression logits float ``[B, C]`` (unnormalised), labels int64 ``[B]``.
* ``kind`` of an adversarial loss is one of :data:`ADVERSARIAL_LOSSES`:
  ``"wgan-gp"`` (Wasserstein critic; add :func:`gradient_penalty` to the critic loss),
  ``"hinge"`` (SAGAN/BigGAN) or ``"nonsaturating"`` (the original GAN loss with ``-log D(G(z))``).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "ADVERSARIAL_LOSSES",
    "AU_REGRESSION_KINDS",
    "wgan_gp_d_loss",
    "wgan_g_loss",
    "gradient_penalty",
    "hinge_d_loss",
    "hinge_g_loss",
    "nonsaturating_d_loss",
    "nonsaturating_g_loss",
    "adversarial_d_loss",
    "adversarial_g_loss",
    "expression_classification_loss",
    "au_regression_loss",
    "cycle_loss",
    "self_reconstruction_loss",
    "statistics_matching_loss",
    "swap_consistency_loss",
    "total_variation",
    "attention_regularization",
    "multiclass_adversarial_classifier_loss",
    "multiclass_adversarial_encoder_loss",
]

#: Names accepted by :func:`adversarial_d_loss` / :func:`adversarial_g_loss`.
ADVERSARIAL_LOSSES = ("wgan-gp", "hinge", "nonsaturating")
#: Names accepted by :func:`au_regression_loss`.
AU_REGRESSION_KINDS = ("mse", "l1")


# --------------------------------------------------------------------------------------------- adversarial
def wgan_gp_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Wasserstein critic loss ``E[D(fake)] - E[D(real)]`` (add :func:`gradient_penalty` separately)."""
    return fake_scores.float().mean() - real_scores.float().mean()


def wgan_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Wasserstein generator loss ``-E[D(fake)]``."""
    return -fake_scores.float().mean()


def gradient_penalty(
    discriminator_fn: Callable[[torch.Tensor], torch.Tensor | Mapping[str, torch.Tensor]],
    real: torch.Tensor,
    fake: torch.Tensor,
    weight: float = 10.0,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty ``weight * E[(||grad_x D(x_hat)||_2 - 1)^2]`` (Gulrajani et al. 2017).

    ``x_hat = a * real + (1 - a) * fake`` with one ``a ~ U[0, 1]`` per sample. The gradient is taken with
    ``create_graph=True`` so the penalty itself can be back-propagated into the critic. ``fake`` is
    detached (the penalty trains the critic only).

    Args:
        discriminator_fn: maps ``[B, ...]`` inputs to scores ``[B, ...]`` (summed per sample), or to a dict
            whose ``"adv"`` entry holds the scores (the segexpr discriminators' output).
        real, fake: the same shape ``[B, ...]``.
        weight: the penalty weight (10 in WGAN-GP).
        alpha: optional interpolation weights ``[B]`` in ``[0, 1]`` (default: ``torch.rand``). JointModule
            passes weights derived from per-sample keys so DDP and resumed runs draw the same ones.

    Works under ``torch.autocast``: interpolation and the norm are computed in float32 and the scores are
    cast to float32 before differentiation, so the gradient norm does not lose precision in fp16/bf16.
    """
    if real.shape != fake.shape:
        raise ValueError(f"gradient_penalty needs real and fake of one shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    shape = [real.shape[0]] + [1] * (real.dim() - 1)
    dtype = torch.promote_types(real.dtype, torch.float32)  # float32, or float64 under precision="64-true"
    if alpha is None:
        alpha = torch.rand(shape, device=real.device, dtype=dtype)
    else:
        alpha = alpha.to(device=real.device, dtype=dtype).reshape(shape)
    interpolated = (alpha * real.detach().to(dtype) + (1 - alpha) * fake.detach().to(dtype)).requires_grad_(True)
    scores = discriminator_fn(interpolated)
    if isinstance(scores, Mapping):
        scores = scores["adv"]
    (grad,) = torch.autograd.grad(scores.to(dtype).sum(), interpolated, create_graph=True)
    grad_norm = grad.to(dtype).flatten(1).norm(2, dim=1)
    return weight * ((grad_norm - 1.0) ** 2).mean()


def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge critic loss ``E[relu(1 - D(real))] + E[relu(1 + D(fake))]``."""
    return F.relu(1.0 - real_scores.float()).mean() + F.relu(1.0 + fake_scores.float()).mean()


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss ``-E[D(fake)]``."""
    return -fake_scores.float().mean()


def nonsaturating_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Standard GAN discriminator loss on logits: ``E[softplus(-D(real))] + E[softplus(D(fake))]``.

    Equal to binary cross-entropy with real = 1 and fake = 0.
    """
    return F.softplus(-real_scores.float()).mean() + F.softplus(fake_scores.float()).mean()


def nonsaturating_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``E[softplus(-D(fake))] = -E[log sigmoid(D(fake))]``."""
    return F.softplus(-fake_scores.float()).mean()


def _check_adversarial_kind(kind: str) -> None:
    if kind not in ADVERSARIAL_LOSSES:
        raise ValueError(f"unknown adversarial loss {kind!r}; expected one of {ADVERSARIAL_LOSSES}")


def adversarial_d_loss(kind: str, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Discriminator loss of the named ``kind`` (see :data:`ADVERSARIAL_LOSSES`).

    For ``"wgan-gp"`` this is only the Wasserstein term; the caller adds :func:`gradient_penalty`.
    """
    _check_adversarial_kind(kind)
    if kind == "wgan-gp":
        return wgan_gp_d_loss(real_scores, fake_scores)
    if kind == "hinge":
        return hinge_d_loss(real_scores, fake_scores)
    return nonsaturating_d_loss(real_scores, fake_scores)


def adversarial_g_loss(kind: str, fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator loss of the named ``kind`` (see :data:`ADVERSARIAL_LOSSES`)."""
    _check_adversarial_kind(kind)
    if kind == "wgan-gp":
        return wgan_g_loss(fake_scores)
    if kind == "hinge":
        return hinge_g_loss(fake_scores)
    return nonsaturating_g_loss(fake_scores)


# ------------------------------------------------------------------------------ classification / regression
def expression_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of expression logits ``[B, C]`` against int64 labels ``[B]`` in ``[0, C)``."""
    return F.cross_entropy(logits.float(), labels.long())


def au_regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """AU intensity regression, ``pred`` and ``target`` float ``[B, N]`` in ``[0, 1]``.

    ``kind="mse"`` (default): mean squared error, as in GANimation's conditional AU loss (smooth near zero,
    so small residual intensities are not over-penalised). ``kind="l1"``: mean absolute error (the metric
    reported for AU error; more robust to noisy AU labels of real datasets).
    """
    if pred.shape != target.shape:
        raise ValueError(f"AU prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if kind == "mse":
        return F.mse_loss(pred.float(), target.float())
    if kind == "l1":
        return F.l1_loss(pred.float(), target.float())
    raise ValueError(f"unknown AU regression loss {kind!r}; expected one of {AU_REGRESSION_KINDS}")


# ------------------------------------------------------------------------------------------ reconstruction
def cycle_loss(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Cycle-consistency L1 ``mean |G(G(x, c_target), c_source) - x|`` (StarGAN)."""
    return F.l1_loss(reconstructed.float(), original.float())


def self_reconstruction_loss(
    reconstructed: torch.Tensor, original: torch.Tensor, weight_map: torch.Tensor | None = None
) -> torch.Tensor:
    """Self-reconstruction L1 ``mean |G(x, code(x)) - x|``.

    ``weight_map`` (optional, broadcastable to the images, e.g. ``[B, 1, H, W]``) weights pixels; the loss
    is then ``sum(w |r - x|) / sum(w * channels)``.
    """
    diff = (reconstructed.float() - original.float()).abs()
    if weight_map is None:
        return diff.mean()
    weight = weight_map.float().expand_as(diff)
    return (weight * diff).sum() / weight.sum().clamp_min(1e-8)


# ------------------------------------------------------------------------------------------ swap consistency
def _flat_items(values: torch.Tensor | Mapping | Sequence) -> list[torch.Tensor]:
    """Flatten a tensor / dict / (nested) sequence of tensors into a list of ``[B, F]`` tensors."""
    if isinstance(values, torch.Tensor):
        return [values.float().flatten(1)]
    if isinstance(values, Mapping):
        return [t for key in sorted(values) for t in _flat_items(values[key])]
    return [t for item in values for t in _flat_items(item)]


def statistics_matching_loss(
    swapped: torch.Tensor | Mapping | Sequence, anchor: torch.Tensor | Mapping | Sequence
) -> torch.Tensor:
    """Match the first two batch moments of discriminator outputs on swapped vs anchor images.

    Each tensor ``[B, ...]`` is flattened to ``[B, F]``; the loss is the mean over tensors of
    ``mean_f |mu_swap - mu_anchor| + mean_f |sigma_swap - sigma_anchor|`` (moments over the batch).
    ``anchor`` (the self-reconstructions) is detached: it is the target distribution, and pulling it toward
    the swaps would let both degrade together. Dicts are matched key by key (sorted keys) and must have the
    same structure.

    Why batch moments rather than per-sample distances: a swapped image carries the *reference's*
    expression while the self-reconstruction carries the *source's*, so their per-sample outputs should
    differ; only their distributions should be indistinguishable (the transfer paper's requirement).
    """
    swapped_items, anchor_items = _flat_items(swapped), _flat_items(anchor)
    if len(swapped_items) != len(anchor_items):
        raise ValueError(f"swapped and anchor outputs differ in structure ({len(swapped_items)} vs {len(anchor_items)} tensors)")
    if not swapped_items:
        raise ValueError("statistics_matching_loss got no tensors")
    total = swapped_items[0].new_zeros(())
    for s, a in zip(swapped_items, anchor_items):
        a = a.detach()
        if s.shape[1:] != a.shape[1:]:
            raise ValueError(f"feature shapes differ: {tuple(s.shape)} vs {tuple(a.shape)}")
        std_s = s.std(0, unbiased=False) if s.shape[0] > 1 else torch.zeros_like(s[0])
        std_a = a.std(0, unbiased=False) if a.shape[0] > 1 else torch.zeros_like(a[0])
        total = total + (s.mean(0) - a.mean(0)).abs().mean() + (std_s - std_a).abs().mean()
    return total / len(swapped_items)


def swap_consistency_loss(
    swapped_outputs: torch.Tensor | Mapping | Sequence,
    self_outputs: torch.Tensor | Mapping | Sequence,
    swap_back: torch.Tensor,
    original: torch.Tensor,
    cycle_weight: float = 1.0,
) -> torch.Tensor:
    """Swap-consistency loss of the expression-transfer model (Shao et al., TIP 2021), as implemented here.

    Terms:

    (a) ``statistics_matching_loss(swapped_outputs, self_outputs)``: the discriminator's outputs (realism
        map, expression probabilities, AU predictions, features — whatever the caller passes) on swapped
        results ``G(a, code(b))`` must have the same batch statistics as on self-reconstructions
        ``G(a, code(a))``, which are trained to be faithful (L1 to ``a``) and so play the role of "real".
        This is a feature-matching form of "indistinguishable"; segexpr does not train a separate
        swap-discriminator (a fifth network and optimiser) — the global discriminator's outputs are the
        features being matched.
    (b) ``cycle_weight * L1(swap_back, original)``: swap-back cycle — transferring the original code
        ``code(a)`` back onto the swapped image recovers ``a``.

    Args:
        swapped_outputs, self_outputs: tensors / dicts of tensors ``[B, ...]`` (the same structure).
        swap_back: ``G(G(a, code(b)), code(a))``, float ``[B, 3, H, W]``.
        original: ``a``, float ``[B, 3, H, W]``.
        cycle_weight: relative weight of term (b).
    """
    return statistics_matching_loss(swapped_outputs, self_outputs) + cycle_weight * cycle_loss(swap_back, original)


# ------------------------------------------------------------------------------------------------ attention
def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation of ``[B, C, H, W]``, summed over pixels and averaged over the batch."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)
    return (dh + dw).mean()


def attention_regularization(
    attention: torch.Tensor, mean_weight: float = 0.1, tv_weight: float = 1e-5
) -> torch.Tensor:
    """GANimation's attention regulariser ``mean_weight * mean(A) + tv_weight * TV(A)``.

    Args:
        attention: float ``[B, 1, H, W]`` (or ``[B, C, H, W]``) in ``[0, 1]``.
        mean_weight: weight of the mean of ``A`` (GANimation: 0.1). It keeps ``A`` from saturating to 1;
            which value "disables" the edit depends on the generator's blending convention, so the caller
            passes the map whose saturation at 1 is the failure mode (GANimation: the keep-original weight).
        tv_weight: weight of the L1 total variation (summed over pixels, averaged over the batch — hence the
            tiny default 1e-5, as in GANimation), which makes the map smooth.
    """
    attention = attention.float()
    return mean_weight * attention.mean() + tv_weight * total_variation(attention)


# ----------------------------------------------------------------------------- multi-class adversarial (AU-free)
def multiclass_adversarial_classifier_loss(
    pred: Mapping[str, torch.Tensor],
    expression: torch.Tensor | None = None,
    aus: torch.Tensor | None = None,
    au_kind: str = "mse",
) -> torch.Tensor:
    """Loss of the feature classifier that predicts expression / AUs from the AU-free feature.

    Args:
        pred: ``{"expression": logits [B, C], "aus": [B, N] in [0, 1]}`` from the feature classifier run on
            the *detached* AU-free feature.
        expression: int64 ``[B]`` labels (skipped when ``None``).
        aus: float ``[B, N]`` targets (skipped when ``None``).

    Returns ``CE(expression) + AU regression`` over the available targets; raises if neither is given.
    """
    terms = []
    if expression is not None:
        terms.append(expression_classification_loss(pred["expression"], expression))
    if aus is not None:
        terms.append(au_regression_loss(pred["aus"], aus, au_kind))
    if not terms:
        raise ValueError("multiclass_adversarial_classifier_loss needs expression labels, AU targets or both")
    return torch.stack(terms).sum()


def multiclass_adversarial_encoder_loss(
    pred: Mapping[str, torch.Tensor], au_target: str | float = "batch_mean"
) -> torch.Tensor:
    """Push the feature classifier's predictions on the AU-free feature toward *uninformative* ones.

    The encoder (not the classifier) minimises this, so the AU-free feature carries no expression
    information (the multi-class adversarial training of the transfer paper):

    * expression head: ``KL(U || softmax(logits)) = CE(U, softmax(logits)) - log C``, i.e. cross-entropy
      to the uniform distribution shifted to be 0 at the optimum (same gradients as the cross-entropy);
      unlike "maximise the classifier's loss" it is bounded and has a stable optimum.
    * AU head: MSE of the AU predictions to a constant. ``au_target="batch_mean"`` (default) uses the
      detached per-AU batch mean of the predictions — the encoder only has to remove the *variation* that
      would reveal each sample's AUs; a float (e.g. 0.5) uses that constant.

    Either key may be absent from ``pred``; at least one must be present.
    """
    terms = []
    if "expression" in pred:
        log_probs = F.log_softmax(pred["expression"].float(), dim=1)
        num_classes = log_probs.shape[1]
        terms.append(-log_probs.mean(1).mean() - math.log(num_classes))
    if "aus" in pred:
        aus = pred["aus"].float()
        if au_target == "batch_mean":
            target = aus.mean(0, keepdim=True).detach().expand_as(aus)
        elif isinstance(au_target, (int, float)) and not isinstance(au_target, bool):
            target = torch.full_like(aus, float(au_target))
        else:
            raise ValueError(f"au_target must be 'batch_mean' or a number, got {au_target!r}")
        terms.append(F.mse_loss(aus, target))
    if not terms:
        raise ValueError("multiclass_adversarial_encoder_loss needs 'expression' and/or 'aus' predictions")
    return torch.stack(terms).sum()
