"""The SynthFACS edit benchmark: a fixed evaluation set with exact ground truth, and the metrics of a model on it.

* :class:`SynthFACSEditBenchmark` -- a fixed, seeded evaluation set of *held-out* SynthFACS identities (the
  ``test`` split, disjoint from ``train``). Every source face is edited to each of the 8 expressions; the
  ground truth of an edit is ``render(source identity, expression prototype AUs)``, so PSNR/SSIM/L1 against
  it measure both "right expression" and "same person". Transfers use source/reference pairs of different
  identities with the ground truth ``render(source identity, reference AUs)``.
* :class:`BenchmarkResult` -- the flat ``key -> float`` metrics plus what they were measured with (also the
  result of :func:`~segexpr.evaluation.evaluate_datamodule`).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import Metric

from segexpr.labels import EXPRESSIONS, NUM_CLASSES, NUM_EXPRESSIONS, expression_prototype
from segexpr.data.synthetic import SyntheticFaces, changeable_area, render
from segexpr.data.transforms import to_batch_tensors
from segexpr.evaluation.common import (
    EditFn,
    TransferFn,
    chunks,
    distribution_metrics,
    feature_extractor,
    resize,
    small_set_note,
)
from segexpr.evaluation.recognizer import describe_recognizer, judge_for
from segexpr.metrics import (
    ExpressionEditMetrics,
    GroundTruthMetrics,
    IdentityLeakage,
    IdentityPreservation,
    ParsingMetrics,
    UnwantedChange,
    assert_independent,
)
from segexpr.metrics.distribution import frozen_eval


@dataclass
class BenchmarkResult:
    """Metrics (flat ``key -> float``) plus what they were measured with.

    ``confusion``: the judge's readings of the label edits, ``[target][judged]`` counts in ``EXPRESSIONS``
    order (``None`` without a judge); ``member_accuracy``: each ensemble member's expression accuracy on the
    same edits (empty for a single judge), whose spread says how much the verdict depends on the judge.
    """

    metrics: dict[str, float]
    judge: str | None = None
    features: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    confusion: list[list[int]] | None = None
    member_accuracy: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": {k: _jsonable(v) for k, v in self.metrics.items()}, "judge": self.judge,
                "fid_features": self.features, "notes": list(self.notes), "seconds": round(self.seconds, 2),
                "expressions": list(EXPRESSIONS), "confusion": self.confusion,
                "member_accuracy": dict(self.member_accuracy)}


def _jsonable(value: float) -> float | str:
    # JSON has no inf/nan; PSNR is +inf for a perfect match, so keep it readable rather than failing.
    return float(value) if math.isfinite(value) else str(value)


def ensemble_members(recognizer: nn.Module | None) -> dict[str, nn.Module]:
    """``name -> member`` of a judge ensemble (its ``members`` and ``names``); empty for a single judge."""
    members = getattr(recognizer, "members", None)
    if recognizer is None or members is None:
        return {}
    names = getattr(recognizer, "names", None) or [f"member {i}" for i in range(len(members))]
    return dict(zip(names, members))


def per_expression_accuracy(confusion: Tensor, prefix: str) -> dict[str, float]:
    """``{prefix + expression: accuracy}`` from a ``[target][judged]`` confusion matrix (rows without targets skipped)."""
    totals = confusion.sum(1)
    return {f"{prefix}{name}": float(confusion[i, i] / totals[i])
            for i, name in enumerate(EXPRESSIONS) if int(totals[i]) > 0}


class SynthFACSEditBenchmark:
    """A fixed SynthFACS evaluation set on held-out identities, and the metrics of a model on it.

    Args:
        size: image side of the evaluation renders (use the module's training size).
        count: number of source faces, each its own ``test``-split identity (>= 2). Edits: ``count x 8``.
        seed: seed of the source expressions and the transfer pairing (``SyntheticFaces(split="test")``).
        batch_size: images per forward pass.
        kid_subset_size: KID subset size (default ``min(100, count * 8)``).
        split: SynthFACS split of the identities: ``"test"`` (reported figures) or ``"val"`` (what training
            monitors, so that selecting a checkpoint never looks at the test identities).

    Attributes (tensors on the CPU): ``images`` ``[N, 3, S, S]``, ``identity``/``expression`` ``[N]``,
    ``landmarks`` ``[N, 68, 2]``, ``changeable`` bool ``[N, S, S]`` (``changeable_area``), ``targets``
    ``[N, 8, 3, S, S]`` (source identity rendered with each prototype), ``target_masks`` ``[N, 8, S, S]``,
    ``references``/``reference_aus``/``reference_expression``/``transfer_targets`` for transfer.

    Identity leakage is probed on the ground-truth renders (8 balanced expressions per identity): the probe
    trains on the first half of the identities and is scored on the other half, so it can never succeed
    through identity alone.
    """

    def __init__(self, size: int = 64, count: int = 32, seed: int = 0, batch_size: int = 32,
                 kid_subset_size: int | None = None, split: str = "test") -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            raise ValueError(f"count must be an integer >= 2 (sources, each a held-out identity), got {count!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test' (held-out identities), got {split!r}")
        self.size, self.count, self.seed, self.batch_size = int(size), count, seed, batch_size
        self.kid_subset_size, self.split = kid_subset_size, split
        dataset = SyntheticFaces(size=size, length=count, seed=seed, split=split, identities=count, pairs=True)
        items = [dataset[i] for i in range(count)]

        def stack(key: str) -> Tensor:
            return torch.stack([torch.as_tensor(item[key]) for item in items])

        self.images, self.identity, self.expression = stack("image"), stack("identity"), stack("expression")
        self.aus, self.landmarks, self.masks = stack("aus"), stack("landmarks"), stack("mask")
        self.references, self.reference_aus = stack("reference_image"), stack("reference_aus").float()
        self.reference_expression, self.transfer_targets = stack("reference_expression"), stack("transfer_target")
        self.changeable = torch.from_numpy(np.stack([changeable_area(int(i), size) for i in self.identity]))
        self.prototypes = torch.stack([torch.from_numpy(expression_prototype(e)) for e in range(NUM_EXPRESSIONS)])
        targets, target_masks = [], []
        for identity in self.identity.tolist():
            renders = [to_batch_tensors(render(identity, expression_prototype(e), size))
                       for e in range(NUM_EXPRESSIONS)]
            targets.append(torch.stack([r["image"] for r in renders]))
            target_masks.append(torch.stack([r["mask"] for r in renders]))
        self.targets, self.target_masks = torch.stack(targets), torch.stack(target_masks)

    # ------------------------------------------------------------------ entry points
    def evaluate(self, module: nn.Module, recognizer: nn.Module | None = None, *, fid_features: str = "auto",
                 device: torch.device | str | None = None) -> BenchmarkResult:
        """All metrics of a :class:`~segexpr.modules.JointModule` (``edit``/``transfer``/``segmenter``/``generator``).

        Args:
            module: the model; its ``discriminator`` is forbidden as judge (:func:`assert_independent`).
            recognizer: the independent judge (e.g. from :func:`train_recognizer`); ``None`` keeps only the
                recogniser-free metrics and says so in ``notes``.
            fid_features: ``"auto"`` (Inception if its weights are on disk, else the recogniser),
                ``"recognizer"``, ``"inception"`` or ``"none"``.
            device: where to run (default: the module's device).
        """
        for name in ("edit", "transfer"):
            if not callable(getattr(module, name, None)):
                raise TypeError(f"{type(module).__name__} has no {name}() method; "
                                "the benchmark evaluates a JointModule")
        device = torch.device(device) if device is not None else next(module.parameters()).device
        forbid = [getattr(module, "discriminator", None)]

        def edit(images: Tensor, labels: Tensor, landmarks: Tensor) -> Tensor:
            return module.edit(images, expression=labels, landmarks=landmarks)

        def transfer(images: Tensor, references: Tensor, landmarks: Tensor) -> Tensor:
            return module.transfer(images, references, landmarks=landmarks)

        eval_networks = getattr(module, "eval_networks", None)  # EMA weights when present: what edit() uses
        generator = eval_networks()[0] if callable(eval_networks) else getattr(module, "generator", None)
        encoder = generator.encode if callable(getattr(generator, "encode", None)) else None
        return self.evaluate_functions(edit, transfer, recognizer=recognizer, forbid=forbid, encoder=encoder,
                                       encoder_module=generator, segmenter=getattr(module, "segmenter", None),
                                       model_size=getattr(module, "image_size", self.size),
                                       fid_features=fid_features, device=device)

    def evaluate_functions(
        self,
        edit: EditFn,
        transfer: TransferFn | None = None,
        *,
        recognizer: nn.Module | None = None,
        forbid: Sequence[nn.Module | None] = (),
        encoder: Callable[[Tensor], Tensor] | None = None,
        encoder_module: nn.Module | None = None,
        segmenter: nn.Module | None = None,
        model_size: int | None = None,
        fid_features: str = "auto",
        device: torch.device | str = "cpu",
    ) -> BenchmarkResult:
        """The benchmark for any edit function (e.g. ``lambda x, t, l: x``, the "no edit" baseline).

        ``edit(images, labels, landmarks)``, ``transfer(images, references, landmarks)`` return images like
        ``images``; ``encoder(images)`` returns AU-free features (leakage), ``segmenter(images)`` parsing
        logits (mIoU); both are fed images at ``model_size`` and run in eval mode without gradients
        (``encoder_module`` is the module owning ``encoder``). ``forbid``: modules the judge must be independent
        of. Missing parts skip their metrics.
        """
        start = time.time()
        device = torch.device(device)
        model_size = int(model_size or self.size)
        notes: list[str] = []
        if recognizer is not None:
            assert_independent(recognizer, *forbid)  # before any work: a GAN discriminator never judges
        judge = judge_for(recognizer, self.size)
        if judge is None:
            notes.append("no recogniser: expression accuracy, AU error, identity preservation and recogniser-feature "
                         "FID/KID are not measured")
        # The groups run in this order on purpose: KID draws its random subsets from the global generator,
        # and the edit/transfer functions may draw from it too, so reordering them would change the numbers.
        members = {name: judge_for(m, self.size) for name, m in ensemble_members(recognizer).items()}
        metrics, real, fake, judged = self._edit_metrics(edit, judge, forbid, device, members)
        scores, features = self._distribution_metrics(fid_features, judge, real, fake, notes)
        metrics.update(scores)
        del real, fake  # every edit of every source: the largest tensors held, not needed any more
        if transfer is not None:
            metrics.update(self._transfer_metrics(transfer, judge, forbid, device))
        if encoder is not None:
            metrics.update(self._leakage_metrics(encoder, encoder_module, model_size, device))
        if segmenter is not None:
            metrics.update(self._parsing_metrics(segmenter, model_size, device))
        return BenchmarkResult(metrics, judge=describe_recognizer(recognizer), features=features, notes=notes,
                               seconds=time.time() - start, **judged)

    # ------------------------------------------------------------------ metric groups
    def _edit_metrics(self, edit: EditFn, judge: nn.Module | None, forbid: Sequence[nn.Module | None],
                      device: torch.device, members: dict[str, nn.Module]
                      ) -> tuple[dict[str, float], list[Tensor], list[Tensor], dict[str, Any]]:
        """Every source edited to every expression: ``edit_*`` (and, with a judge, ``judge_*``/identity) scores.

        Also returns the ground-truth renders and the edits, batch by batch, as FID/KID's real and fake sets,
        and the judge's confusion matrix and each ensemble member's accuracy (``BenchmarkResult`` fields).
        """
        edit_gt, uc = GroundTruthMetrics().to(device), UnwantedChange().to(device)
        judges = self._edit_judges(judge, forbid, device) if judge is not None else None
        member_judges = {name: ExpressionEditMetrics(m, forbid=forbid).to(device) for name, m in members.items()}
        real: list[Tensor] = []
        fake: list[Tensor] = []
        for e in range(NUM_EXPRESSIONS):
            for s in chunks(self.count, self.batch_size):
                images, landmarks = self.images[s].to(device), self.landmarks[s].to(device)
                labels = torch.full((images.shape[0],), e, dtype=torch.long, device=device)
                edited = edit(images, labels, landmarks).to(device).float().clamp(-1, 1)
                target = self.targets[s, e].to(device)
                edit_gt.update(edited, target)
                uc.update(images, edited, self.changeable[s].to(device))
                real.append(target)
                fake.append(edited)
                if judges is not None:
                    proto = self.prototypes[e].to(device).expand(images.shape[0], -1)
                    judges["edit"].update(edited, labels, proto)
                    judges["gt"].update(target, labels, proto)
                    judges["identity"].update(images, edited, self.identity[s].to(device))
                    for member in member_judges.values():
                        member.update(edited, labels)
        metrics = {f"edit_{k}": float(v) for k, v in edit_gt.compute().items()}
        metrics["edit_unwanted_change"] = float(uc.compute())
        judged: dict[str, Any] = {}
        if judges is not None:
            metrics.update(self._judged_edit_scores(judges, device))
            confusion = judges["edit"].compute()["confusion"]
            metrics.update(per_expression_accuracy(confusion, "edit_accuracy_"))
            judged["confusion"] = confusion.tolist()
        if member_judges:
            judged["member_accuracy"] = {name: float(m.compute()["expression_accuracy"])
                                         for name, m in member_judges.items()}
            values = list(judged["member_accuracy"].values())
            metrics["judge_members_min_accuracy"], metrics["judge_members_max_accuracy"] = min(values), max(values)
        return metrics, real, fake, judged

    def _edit_judges(self, judge: nn.Module, forbid: Sequence[nn.Module | None], device: torch.device
                     ) -> dict[str, Metric]:
        """The judge's metrics of the edit pass: on the edits, the ground truth, the sources, and identity."""
        return {"edit": ExpressionEditMetrics(judge, forbid=forbid, confusion=True).to(device),
                "gt": ExpressionEditMetrics(judge).to(device),
                "source": ExpressionEditMetrics(judge).to(device),
                "identity": IdentityPreservation(judge, probe_size=self.size).to(device)}

    def _judged_edit_scores(self, judges: dict[str, Metric], device: torch.device) -> dict[str, float]:
        """Expression accuracy / AU error of the edits and of the judge itself (ground truth, sources), identity."""
        judged, on_gt = judges["edit"].compute(), judges["gt"].compute()
        metrics = {"edit_expression_accuracy": float(judged["expression_accuracy"]),
                   "edit_au_mae": float(judged["au_mae"]),
                   "judge_accuracy_gt": float(on_gt["expression_accuracy"]),
                   "judge_au_mae_gt": float(on_gt["au_mae"])}
        for s in chunks(self.count, self.batch_size):
            judges["source"].update(self.images[s].to(device), self.expression[s].to(device))
        metrics["judge_accuracy_source"] = float(judges["source"].compute()["expression_accuracy"])
        metrics.update({k: float(v) for k, v in judges["identity"].compute().items()})
        return metrics

    def _distribution_metrics(self, fid_features: str, judge: nn.Module | None, real: list[Tensor],
                              fake: list[Tensor], notes: list[str]) -> tuple[dict[str, float], str | None]:
        """FID / KID, ground-truth renders vs edits, and the features' description (``{}, None`` when skipped)."""
        extractor = feature_extractor(fid_features, judge, self.size, notes)
        if extractor is None:
            return {}, None
        metrics = distribution_metrics(extractor, real, fake, self.kid_subset_size)
        notes.extend(small_set_note(extractor, self.count * NUM_EXPRESSIONS))
        return metrics, extractor.description

    def _transfer_metrics(self, transfer: TransferFn, judge: nn.Module | None, forbid: Sequence[nn.Module | None],
                          device: torch.device) -> dict[str, float]:
        """``transfer_*``: each source given its reference's AUs, vs ``render(source identity, reference AUs)``."""
        tr_gt, tr_uc = GroundTruthMetrics().to(device), UnwantedChange().to(device)
        tr_judge = ExpressionEditMetrics(judge, forbid=forbid).to(device) if judge is not None else None
        for s in chunks(self.count, self.batch_size):
            images, landmarks = self.images[s].to(device), self.landmarks[s].to(device)
            out = transfer(images, self.references[s].to(device), landmarks).to(device).float().clamp(-1, 1)
            tr_gt.update(out, self.transfer_targets[s].to(device))
            tr_uc.update(images, out, self.changeable[s].to(device))
            if tr_judge is not None:
                tr_judge.update(out, self.reference_expression[s].to(device), self.reference_aus[s].to(device))
        metrics = {f"transfer_{k}": float(v) for k, v in tr_gt.compute().items()}
        metrics["transfer_unwanted_change"] = float(tr_uc.compute())
        if tr_judge is not None:
            judged = tr_judge.compute()
            metrics["transfer_expression_accuracy"] = float(judged["expression_accuracy"])
            metrics["transfer_au_mae"] = float(judged["au_mae"])
        return metrics

    def _leakage_metrics(self, encoder: Callable[[Tensor], Tensor], encoder_module: nn.Module | None,
                         model_size: int, device: torch.device) -> dict[str, float]:
        """``leakage_*``: a linear probe for the expression on the AU-free features of the ground-truth renders."""
        n = self.count
        renders = self.targets.flatten(0, 1)  # 8 balanced expressions per identity
        labels = torch.arange(NUM_EXPRESSIONS).repeat(n)
        probe_train = (torch.arange(n) < n // 2).repeat_interleave(NUM_EXPRESSIONS)  # split by identity
        leak = IdentityLeakage()
        context = frozen_eval(encoder_module, device) if encoder_module is not None else torch.no_grad()
        with context:
            for s in chunks(renders.shape[0], self.batch_size):
                feats = encoder(resize(renders[s].to(device), model_size))
                for train in (True, False):
                    keep = probe_train[s] == train
                    if bool(keep.any()):
                        leak.update(feats[keep.to(feats.device)], labels[s][keep].to(feats.device), train=train)
        leaked = leak.compute()
        return {"leakage_accuracy": float(leaked["accuracy"]), "leakage_chance": float(leaked["chance"]),
                "leakage_majority": float(leaked["majority_baseline"]), "leakage": float(leaked["leakage"])}

    def _parsing_metrics(self, segmenter: nn.Module, model_size: int, device: torch.device) -> dict[str, float]:
        """``parsing_miou``: the segmenter on the ground-truth renders vs their exact masks."""
        renders, masks = self.targets.flatten(0, 1), self.target_masks.flatten(0, 1)
        parsing = ParsingMetrics(NUM_CLASSES).to(device)
        with frozen_eval(segmenter, device):
            for s in chunks(renders.shape[0], self.batch_size):
                logits = segmenter(resize(renders[s].to(device), model_size))
                if logits.shape[-1] != self.size:
                    logits = F.interpolate(logits, size=(self.size, self.size), mode="bilinear",
                                           align_corners=False)
                parsing.update(logits, masks[s].to(device))
        return {"parsing_miou": float(parsing.compute()["miou"])}
