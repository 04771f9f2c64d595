"""Does the edit show the target expression? And does the AU-free feature still know the expression?

* :class:`ExpressionEditMetrics` -- expression accuracy and AU error of edited images, *as judged by an
  independently trained recogniser* (never the discriminator the generator trained against: the generator
  learnt to satisfy that network, so its verdict is not evidence). :func:`assert_independent` enforces it.
* :class:`IdentityLeakage` -- linear-probe accuracy of expression from the AU-free feature (the transfer
  model's "identity" code). Disentanglement succeeded when it is at chance.

A *recogniser* is any ``nn.Module`` whose ``forward(images [B,3,H,W] in [-1,1])`` returns expression logits
``[B, 8]`` and AU intensities ``[B, 17]`` in ``[0, 1]``, either as a tuple ``(logits, aus)`` or as a mapping
with keys ``expression_logits``/``expression``/``logits`` and ``aus``/``au`` -- e.g. a trained
:class:`segexpr.modules.AUDiscriminatorModule`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.wrappers.abstract import WrapperMetric

from segexpr.labels import NUM_AUS, NUM_EXPRESSIONS
from segexpr.metrics.distribution import frozen_eval
from segexpr.metrics.image import RANGE_TOLERANCE, check_images

__all__ = ["recognise", "assert_independent", "ExpressionEditMetrics", "IdentityLeakage", "linear_probe_accuracy"]

_LOGIT_KEYS = ("expression_logits", "expression", "logits")
_AU_KEYS = ("aus", "au")


def recognise(recognizer: nn.Module, images: Tensor, num_expressions: int = NUM_EXPRESSIONS,
              num_aus: int = NUM_AUS) -> tuple[Tensor, Tensor]:
    """Run a recogniser (eval mode, no gradients) and return ``(logits [B, E], aus [B, A] in [0, 1])``.

    Raises ``ValueError`` naming the problem when the output has another form, shape or range.
    """
    check_images(images, "images given to the recogniser")
    with frozen_eval(recognizer, images.device) as model:
        out = model(images)
    name = type(recognizer).__name__
    if isinstance(out, Mapping):
        logit_key = next((k for k in _LOGIT_KEYS if k in out), None)
        au_key = next((k for k in _AU_KEYS if k in out), None)
        if logit_key is None or au_key is None:
            raise ValueError(f"{name} returned a mapping with keys {sorted(out)}; expected one of {_LOGIT_KEYS} "
                             f"and one of {_AU_KEYS}")
        logits, aus = out[logit_key], out[au_key]
    elif isinstance(out, (tuple, list)) and len(out) >= 2:
        logits, aus = out[0], out[1]
    else:
        raise ValueError(f"{name} must return (expression_logits, aus) or a mapping of them, got {type(out).__name__}")
    batch = images.shape[0]
    if not isinstance(logits, Tensor) or tuple(logits.shape) != (batch, num_expressions):
        raise ValueError(f"{name}'s expression logits must be [B, {num_expressions}] = "
                         f"{(batch, num_expressions)}, got {getattr(logits, 'shape', type(logits).__name__)}")
    if not isinstance(aus, Tensor) or tuple(aus.shape) != (batch, num_aus):
        raise ValueError(f"{name}'s AUs must be [B, {num_aus}] = {(batch, num_aus)}, "
                         f"got {getattr(aus, 'shape', type(aus).__name__)}")
    if aus.numel() and (float(aus.min()) < -RANGE_TOLERANCE or float(aus.max()) > 1 + RANGE_TOLERANCE):
        raise ValueError(f"{name}'s AUs must be intensities in [0, 1] (apply a sigmoid to AU logits), got values in "
                         f"[{float(aus.min()):.4g}, {float(aus.max()):.4g}]")
    return logits.float(), aus.float().clamp(0, 1)


def _big_tensors(module: nn.Module) -> list[Tensor]:
    out = []
    for p in module.parameters():
        t = p.detach()
        if t.is_floating_point() and t.numel() >= 64 and bool((t != t.reshape(-1)[0]).any()):
            out.append(t)
    return out


def assert_independent(recognizer: nn.Module, *others: nn.Module | None) -> None:
    """Raise ``ValueError`` unless ``recognizer`` is independent of every module in ``others``.

    Use it to make sure an edit is not judged by the discriminator that trained the generator. Refused:

    * the very same object, or a module that contains it / is contained by it;
    * any shared parameter storage (compared by ``data_ptr``: tied or borrowed layers);
    * an exact copy of a weight tensor (a ``deepcopy`` of the discriminator; only non-constant floating
      tensors of >= 64 elements are compared, so zero-initialised biases or unit norms never match by chance).

    ``None`` entries are skipped. Independently trained networks always pass.
    """
    if not isinstance(recognizer, nn.Module):
        raise TypeError(f"recognizer must be an nn.Module, got {type(recognizer).__name__}")
    own_ptrs = {p.data_ptr() for p in recognizer.parameters() if p.numel()}
    own_by_shape: dict[tuple[int, ...], list[Tensor]] = {}
    for t in _big_tensors(recognizer):
        own_by_shape.setdefault(tuple(t.shape), []).append(t)
    for other in others:
        if other is None:
            continue
        if not isinstance(other, nn.Module):
            raise TypeError(f"forbidden modules must be nn.Modules, got {type(other).__name__}")
        label = type(other).__name__
        if other is recognizer or any(m is recognizer for m in other.modules()) or \
                any(m is other for m in recognizer.modules()):
            raise ValueError(f"the judge recogniser is (or contains, or is part of) the forbidden module {label}: "
                             "edits must be judged by a recogniser trained independently of the GAN's discriminator")
        if own_ptrs & {p.data_ptr() for p in other.parameters() if p.numel()}:
            raise ValueError(f"the judge recogniser shares parameters with the forbidden module {label}: "
                             "edits must be judged by an independently trained recogniser")
        for t in _big_tensors(other):
            for mine in own_by_shape.get(tuple(t.shape), ()):
                if mine.device == t.device and torch.equal(mine, t) or \
                        mine.device != t.device and torch.equal(mine.cpu(), t.cpu()):
                    raise ValueError(f"the judge recogniser has a weight tensor {tuple(t.shape)} identical to one of "
                                     f"the forbidden module {label} (a copy of it?): edits must be judged by an "
                                     "independently trained recogniser")


class ExpressionEditMetrics(WrapperMetric):
    """Expression accuracy and AU error of edits, judged by an independent recogniser.

    Args:
        recognizer: the judge (see the module docstring for its output contract). Held unregistered: it is
            not a parameter of this metric (never optimised, not saved in checkpoints), runs in eval mode
            without gradients and follows the device of the images.
        forbid: module(s) the judge must be independent of -- pass the GAN's discriminator (e.g.
            ``[joint_module.discriminator]``); checked by :func:`assert_independent` at construction.
        num_expressions, num_aus: output sizes of the recogniser (8 and 17 in segexpr).
        confusion: also keep torchmetrics' :class:`MulticlassConfusionMatrix` of target vs judged expression.

    ``update(edited, target_expression, target_aus=None)``:

    * ``edited``: float ``[B, 3, H, W]`` in ``[-1, 1]``;
    * ``target_expression``: int64 ``[B]`` in ``[0, num_expressions)``, the expression the edit should show;
    * ``target_aus``: optional float ``[B, num_aus]`` in ``[0, 1]``, the AU intensities it should show.

    ``compute()`` returns ``{"expression_accuracy": ..., "au_mae": ...}`` (``au_mae`` only if target AUs
    were given): ``expression_accuracy`` is torchmetrics' micro :class:`MulticlassAccuracy` of the judge's
    argmax against the target (in ``[0, 1]``, higher is better; chance is the target-class frequency, 1/8
    for balanced targets); ``au_mae`` is :class:`MeanAbsoluteError` between the judge's AUs and the target
    AUs, averaged over all AUs and images (in ``[0, 1]``, lower is better). Both are bounded by the judge's
    own accuracy on real images: report that alongside. With ``confusion=True`` it also returns ``confusion``,
    int64 ``[E, E]`` counts (row: target expression, column: the judge's reading).
    """

    def __init__(self, recognizer: nn.Module, forbid: Iterable[nn.Module | None] = (),
                 num_expressions: int = NUM_EXPRESSIONS, num_aus: int = NUM_AUS, confusion: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(forbid, nn.Module):  # a single module (iterating a Sequential would yield its children)
            forbid = [forbid]
        assert_independent(recognizer, *forbid)
        self._recognizer_ref = (recognizer,)
        self.num_expressions = num_expressions
        self.num_aus = num_aus
        self.accuracy = MulticlassAccuracy(num_classes=num_expressions, average="micro")
        self.au_error = MeanAbsoluteError()
        self.confusion = MulticlassConfusionMatrix(num_classes=num_expressions) if confusion else None

    @property
    def recognizer(self) -> nn.Module:
        return self._recognizer_ref[0]

    def _judge(self, edited: Tensor, target_expression: Tensor, target_aus: Tensor | None
               ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        logits, aus = recognise(self.recognizer, edited, self.num_expressions, self.num_aus)
        batch = edited.shape[0]
        if not isinstance(target_expression, Tensor) or target_expression.dtype.is_floating_point or \
                tuple(target_expression.shape) != (batch,):
            raise ValueError(f"target_expression must be an integer tensor [B] = [{batch}], got "
                             f"{getattr(target_expression, 'dtype', type(target_expression).__name__)} "
                             f"{tuple(getattr(target_expression, 'shape', ()))}")
        if batch and (int(target_expression.min()) < 0 or int(target_expression.max()) >= self.num_expressions):
            raise ValueError(f"target_expression must be in [0, {self.num_expressions}), got values in "
                             f"[{int(target_expression.min())}, {int(target_expression.max())}]")
        # torchmetrics flattens with .view(): strided inputs (slices, expand) must be made contiguous.
        target_expression = target_expression.to(logits.device).long().contiguous()
        if target_aus is not None:
            if not isinstance(target_aus, Tensor) or tuple(target_aus.shape) != (batch, self.num_aus):
                raise ValueError(f"target_aus must be [B, {self.num_aus}] = {(batch, self.num_aus)}, got "
                                 f"{tuple(getattr(target_aus, 'shape', ()))}")
            if target_aus.numel() and (float(target_aus.min()) < -RANGE_TOLERANCE
                                       or float(target_aus.max()) > 1 + RANGE_TOLERANCE):
                raise ValueError(f"target_aus must be in [0, 1], got values in [{float(target_aus.min()):.4g}, "
                                 f"{float(target_aus.max()):.4g}]")
            target_aus = target_aus.to(aus.device).float().contiguous()
        return logits.contiguous(), target_expression, aus.contiguous(), target_aus

    def update(self, edited: Tensor, target_expression: Tensor, target_aus: Tensor | None = None) -> None:
        logits, target_expression, aus, target_aus = self._judge(edited, target_expression, target_aus)
        self.accuracy.update(logits, target_expression)
        if self.confusion is not None:
            self.confusion.update(logits.argmax(1), target_expression)
        if target_aus is not None:
            self.au_error.update(aus, target_aus)

    def forward(self, edited: Tensor, target_expression: Tensor,  # type: ignore[override]
                target_aus: Tensor | None = None) -> dict[str, Tensor]:
        """Accumulate a batch and return that batch's values."""
        logits, target_expression, aus, target_aus = self._judge(edited, target_expression, target_aus)
        out = {"expression_accuracy": self.accuracy(logits, target_expression)}
        if self.confusion is not None:
            out["confusion"] = self.confusion(logits.argmax(1), target_expression)
        if target_aus is not None:
            out["au_mae"] = self.au_error(aus, target_aus)
        return out

    def compute(self) -> dict[str, Tensor]:
        out = {"expression_accuracy": self.accuracy.compute()}
        if int(self.au_error.total) > 0:
            out["au_mae"] = self.au_error.compute()
        if self.confusion is not None:
            out["confusion"] = self.confusion.compute()
        return out

    def reset(self) -> None:
        self.accuracy.reset()
        self.au_error.reset()
        if self.confusion is not None:
            self.confusion.reset()
        super().reset()


# ------------------------------------------------------------------------------------------ identity leakage
def linear_probe_accuracy(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int = NUM_EXPRESSIONS,
    steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-3,
) -> float:
    """Held-out accuracy of a multinomial logistic-regression probe.

    Features are standardised with the training mean/std; the probe (zero-initialised weights, so the
    result is deterministic) is fitted by full-batch Adam on cross-entropy + ``weight_decay * ||W||²``
    for ``steps`` steps. Works inside ``torch.inference_mode`` / ``no_grad`` (e.g. a validation loop).

    Args:
        train_x, test_x: float ``[N, D]``. train_y, test_y: int64 ``[N]`` in ``[0, num_classes)``.
    """
    with torch.inference_mode(False), torch.enable_grad():
        train_x, test_x = train_x.detach().clone().double(), test_x.detach().clone().double()
        train_y, test_y = train_y.detach().clone().long(), test_y.detach().clone().long()
        mean, std = train_x.mean(0), train_x.std(0, unbiased=False).clamp_min(1e-8)
        train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
        weight = torch.zeros(train_x.shape[1], num_classes, dtype=torch.float64, device=train_x.device,
                             requires_grad=True)
        bias = torch.zeros(num_classes, dtype=torch.float64, device=train_x.device, requires_grad=True)
        optim = torch.optim.Adam([weight, bias], lr=lr)
        for _ in range(steps):
            optim.zero_grad()
            loss = F.cross_entropy(train_x @ weight + bias, train_y) + weight_decay * weight.square().sum()
            loss.backward()
            optim.step()
        with torch.no_grad():
            pred = (test_x @ weight + bias).argmax(1)
        return float((pred == test_y).double().mean())


class IdentityLeakage(Metric):
    """How much expression information survives in the AU-free ("identity") feature.

    Collects AU-free features with their (source) expression labels, split into a probe-training set and a
    held-out set by the caller, then fits a linear probe (:func:`linear_probe_accuracy`) on the first and
    reports its accuracy on the second. The disentanglement goal is **chance**: a probe that cannot beat
    guessing means the feature carries no linearly decodable expression. A linear probe is a lower bound
    on leakage (a non-linear decoder might still succeed); hold out *identities*, not only images, or the
    probe can score through identity-expression correlations of the split.

    Args:
        num_classes: number of expressions (8).
        pool: for feature maps ``[B, C, H, W]``: ``"avg"`` (global average, default) or ``"flatten"``
            (keeps spatial layout: a stronger probe, needs many more samples than ``C*H*W`` to not overfit).
        steps, lr, weight_decay: probe optimisation, see :func:`linear_probe_accuracy`.

    ``update(features, expression, train)``: ``features`` float ``[B, D]`` or ``[B, C, H, W]``,
    ``expression`` int64 ``[B]``, ``train`` bool (True: probe-training set, False: held-out set).

    ``compute()`` returns ``{"accuracy", "chance", "majority_baseline", "leakage"}``: ``chance`` is
    ``1 / num_classes``; ``majority_baseline`` is the held-out accuracy of always answering the most frequent
    training class; ``leakage = accuracy - max(chance, majority_baseline)`` -- about 0 (or below) means no
    leakage detected, 1 - 1/8 at worst. States are concatenated across processes under DDP (memory ``N x D``).
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, num_classes: int = NUM_EXPRESSIONS, pool: str = "avg", steps: int = 300, lr: float = 0.05,
                 weight_decay: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if pool not in ("avg", "flatten"):
            raise ValueError(f"pool must be 'avg' or 'flatten', got {pool!r}")
        self.num_classes, self.pool, self.steps, self.lr, self.weight_decay = num_classes, pool, steps, lr, weight_decay
        for name in ("train_x", "train_y", "test_x", "test_y"):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, features: Tensor, expression: Tensor, train: bool) -> None:
        if not isinstance(train, bool):
            raise TypeError(f"train must be a bool (True: probe-training set, False: held-out set), got {train!r}")
        if not isinstance(features, Tensor) or features.dim() not in (2, 4) or not features.dtype.is_floating_point:
            raise ValueError(f"features must be float [B, D] or [B, C, H, W], got "
                             f"{getattr(features, 'dtype', type(features).__name__)} "
                             f"{tuple(getattr(features, 'shape', ()))}")
        if features.dim() == 4:
            features = features.mean((2, 3)) if self.pool == "avg" else features.flatten(1)
        if not isinstance(expression, Tensor) or expression.dtype.is_floating_point or \
                tuple(expression.shape) != (features.shape[0],):
            raise ValueError(f"expression must be an integer tensor [B] = [{features.shape[0]}], got "
                             f"{getattr(expression, 'dtype', type(expression).__name__)} "
                             f"{tuple(getattr(expression, 'shape', ()))}")
        if expression.numel() and (int(expression.min()) < 0 or int(expression.max()) >= self.num_classes):
            raise ValueError(f"expression must be in [0, {self.num_classes}), got values in "
                             f"[{int(expression.min())}, {int(expression.max())}]")
        seen = self.train_x + self.test_x
        if seen and seen[0].shape[1] != features.shape[1]:
            raise ValueError(f"feature dimension changed between updates: {seen[0].shape[1]} then {features.shape[1]}")
        xs, ys = (self.train_x, self.train_y) if train else (self.test_x, self.test_y)
        xs.append(features.detach().float())
        ys.append(expression.detach().long())

    def compute(self) -> dict[str, Tensor]:
        if not self.train_x or not self.test_x:
            raise RuntimeError("IdentityLeakage needs both probe-training (train=True) and held-out (train=False) "
                               "features before compute()")
        train_x, train_y = dim_zero_cat(self.train_x), dim_zero_cat(self.train_y)
        test_x, test_y = dim_zero_cat(self.test_x), dim_zero_cat(self.test_y)
        accuracy = linear_probe_accuracy(train_x, train_y, test_x, test_y, self.num_classes, self.steps, self.lr,
                                         self.weight_decay)
        majority_class = torch.bincount(train_y, minlength=self.num_classes).argmax()
        majority = float((test_y == majority_class).double().mean())
        chance = 1.0 / self.num_classes
        return {
            "accuracy": torch.tensor(accuracy),
            "chance": torch.tensor(chance),
            "majority_baseline": torch.tensor(majority),
            "leakage": torch.tensor(accuracy - max(chance, majority)),
        }
