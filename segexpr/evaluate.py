"""Evaluating a trained :class:`~segexpr.modules.JointModule`: the SynthFACS edit benchmark, a Lightning
callback that logs it during ``validate``/``test``, and the ``segexpr evaluate`` command.

* :class:`SynthFACSEditBenchmark` -- a fixed, seeded evaluation set of *held-out* SynthFACS identities (the
  ``test`` split, disjoint from ``train``). Every source face is edited to each of the 8 expressions; the
  ground truth of an edit is ``render(source identity, expression prototype AUs)``, so PSNR/SSIM/L1 against
  it measure both "right expression" and "same person". Transfers use source/reference pairs of different
  identities with the ground truth ``render(source identity, reference AUs)``.
* :func:`train_recognizer` -- trains the *independent judge*: an :class:`~segexpr.modules.AUDiscriminatorModule`
  on the SynthFACS ``train`` split alone (never the GAN's discriminator, which the generator learnt to fool).
* :class:`EditMetricsCallback` -- runs the benchmark at the end of validation/test epochs and logs it with
  ``pl_module.log_dict`` (``val/synthfacs/edit_psnr``, ...).
* :func:`main` -- ``segexpr evaluate --ckpt JOINT.ckpt --recognizer RECOG.ckpt [--data synthetic|CONFIG.yaml]``:
  prints a markdown table and writes JSON.

Metric keys (all floats; see ``docs/evaluation.md`` for each metric):

==========================  ====================================================================================
``edit_expression_accuracy`` judge's argmax on the edit == target expression (needs a recogniser)
``edit_au_mae``              judge's AUs on the edit vs the target prototype AUs (needs a recogniser)
``edit_psnr/ssim/l1``        edit vs ``render(identity, prototype)`` (SynthFACS only)
``edit_unwanted_change``     L1 source -> edit outside ``changeable_area`` (exact on SynthFACS)
``fid``, ``kid_mean/std``    real = ground-truth renders, fake = edits (features named in the result)
``identity_cosine`` ...      :class:`~segexpr.metrics.IdentityPreservation` with the judge's features
``transfer_*``               the same for transfers (AU error / accuracy vs the reference's labels)
``leakage_*``                linear probe: expression from the AU-free feature (goal: chance)
``parsing_miou``             the module's segmenter on the ground-truth masks
``judge_accuracy_gt``        the judge on the ground-truth renders themselves: the ceiling of edit accuracy
==========================  ====================================================================================
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from segexpr.data.labels import NUM_CLASSES, NUM_EXPRESSIONS, expression_prototype
from segexpr.data.synthetic import SyntheticFaces, changeable_area, render
from segexpr.data.transforms import to_batch_tensors
from segexpr.inference import CheckpointError, load_module, read_checkpoint
from segexpr.metrics import (
    ExpressionEditMetrics,
    GroundTruthMetrics,
    IdentityLeakage,
    IdentityPreservation,
    InceptionWeightsUnavailable,
    ParsingMetrics,
    UnwantedChange,
    assert_independent,
    build_feature_extractor,
    expression_area,
)
from segexpr.metrics.distribution import frozen_eval
from segexpr.modules.discriminator import AUDiscriminatorModule

__all__ = [
    "SynthFACSEditBenchmark", "BenchmarkResult", "EditMetricsCallback", "train_recognizer", "load_recognizer",
    "load_joint", "evaluate_datamodule", "markdown_table", "METRIC_DESCRIPTIONS", "main",
]

#: One-line meaning of each metric key, for tables (``↑`` higher is better, ``↓`` lower is better).
METRIC_DESCRIPTIONS: dict[str, str] = {
    "edit_expression_accuracy": "↑ judge says the edit shows the target expression (chance 1/8)",
    "edit_au_mae": "↓ judge's AUs on the edit vs the target AUs",
    "edit_psnr": "↑ dB, edit vs render(source identity, target AUs)",
    "edit_ssim": "↑ edit vs ground-truth render",
    "edit_l1": "↓ edit vs ground-truth render",
    "edit_unwanted_change": "↓ L1 source→edit where no AU can change anything",
    "fid": "↓ FID, ground-truth renders vs edits",
    "kid_mean": "↓ KID (mean over subsets)",
    "kid_std": "KID standard deviation over subsets",
    "identity_cosine": "↑ cosine(source, edit) of the judge's features",
    "impostor_cosine": "cosine(edit, other identities' sources)",
    "identity_gap": "↑ identity_cosine - impostor_cosine",
    "transfer_expression_accuracy": "↑ judge says the transfer shows the reference's expression",
    "transfer_au_mae": "↓ judge's AUs on the transfer vs the reference's AUs",
    "transfer_psnr": "↑ dB, transfer vs render(source identity, reference AUs)",
    "transfer_ssim": "↑ transfer vs ground-truth render",
    "transfer_l1": "↓ transfer vs ground-truth render",
    "transfer_unwanted_change": "↓ L1 source→transfer where no AU can change anything",
    "leakage_accuracy": "linear probe: expression from the AU-free feature (held-out identities)",
    "leakage_chance": "1 / 8",
    "leakage_majority": "always answering the most frequent probe-training class",
    "leakage": "→0 probe accuracy - max(chance, majority)",
    "parsing_miou": "↑ the module's segmenter on the ground-truth masks",
    "judge_accuracy_gt": "the judge on the ground-truth renders (ceiling of edit accuracy)",
    "judge_au_mae_gt": "the judge's AU error on the ground-truth renders (floor of edit AU error)",
    "judge_accuracy_source": "the judge on the unedited test sources",
}

#: Keys that need a recogniser (logged only when one is given).
RECOGNIZER_KEYS = ("edit_expression_accuracy", "edit_au_mae", "identity_cosine", "impostor_cosine", "identity_gap",
                   "transfer_expression_accuracy", "transfer_au_mae", "judge_accuracy_gt", "judge_au_mae_gt",
                   "judge_accuracy_source")

EditFn = Callable[[Tensor, Tensor, Tensor], Tensor]          # (images, target labels [B], landmarks) -> edits
TransferFn = Callable[[Tensor, Tensor, Tensor], Tensor]      # (images, references, landmarks) -> transfers


@dataclass
class BenchmarkResult:
    """Metrics (flat ``key -> float``) plus what they were measured with."""

    metrics: dict[str, float]
    judge: str | None = None
    features: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": {k: _jsonable(v) for k, v in self.metrics.items()}, "judge": self.judge,
                "fid_features": self.features, "notes": list(self.notes), "seconds": round(self.seconds, 2)}


def _jsonable(value: float) -> float | str:
    # JSON has no inf/nan; PSNR is +inf for a perfect match, so keep it readable rather than failing.
    return float(value) if math.isfinite(value) else str(value)


class _ResizedRecognizer(nn.Module):
    """Feeds the judge images at the size it was trained at (its ``forward`` and ``features``)."""

    def __init__(self, recognizer: nn.Module, size: int) -> None:
        super().__init__()
        self.recognizer, self.size = recognizer, int(size)
        self.image_size = self.size

    def _resize(self, images: Tensor) -> Tensor:
        if images.shape[-1] == self.size and images.shape[-2] == self.size:
            return images
        return F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=True).clamp(-1, 1)

    def forward(self, images: Tensor) -> Any:
        return self.recognizer(self._resize(images))

    def features(self, images: Tensor) -> Tensor:
        return self.recognizer.features(self._resize(images))

    @property
    def num_features(self) -> int:
        return int(self.recognizer.num_features)


def _judge_for(recognizer: nn.Module | None, size: int) -> nn.Module | None:
    """The recogniser, wrapped to resize inputs when it was trained at another size."""
    if recognizer is None:
        return None
    trained = getattr(recognizer, "image_size", None)
    return _ResizedRecognizer(recognizer, trained) if trained and int(trained) != size else recognizer


def _describe(recognizer: nn.Module | None) -> str | None:
    if recognizer is None:
        return None
    size = getattr(recognizer, "image_size", "?")
    params = sum(p.numel() for p in recognizer.parameters())
    return f"{type(recognizer).__name__} ({params / 1e6:.2f} M parameters, trained at {size} px)"


def _feature_extractor(choice: str, judge: nn.Module | None, size: int, notes: list[str]):
    """Resolve ``--fid-features``; returns ``None`` (FID/KID skipped, with a note) when nothing is usable."""
    if choice == "none":
        notes.append("FID/KID skipped (--fid-features none)")
        return None
    try:
        return build_feature_extractor(choice, judge, probe_size=size)
    except (InceptionWeightsUnavailable, ValueError) as err:
        notes.append(f"FID/KID skipped: {err}")
        return None


def _distribution_metrics(extractor, real: Sequence[Tensor], fake: Sequence[Tensor], subset_size: int | None
                          ) -> dict[str, float]:
    """FID and KID of ``fake`` against ``real`` (lists of image batches) with one shared feature extractor."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    count = min(sum(x.shape[0] for x in real), sum(x.shape[0] for x in fake))
    subset = min(subset_size or 100, count)
    fid = FrechetInceptionDistance(feature=extractor, normalize=False)
    kid = KernelInceptionDistance(feature=extractor, subsets=20, subset_size=subset, normalize=False)
    device = real[0].device
    fid, kid = fid.to(device), kid.to(device)
    for batch in real:
        fid.update(batch, real=True)
        kid.update(batch, real=True)
    for batch in fake:
        fid.update(batch, real=False)
        kid.update(batch, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std)}


def _small_set_note(extractor, count: int) -> list[str]:
    dim = int(getattr(extractor, "num_features", 0))
    if dim and count < 2 * dim:
        return [f"FID from {count} images per set with {dim}-d features (< 2x the dimension): strongly biased and "
                "unstable; compare only at equal counts, or raise --count"]
    return []


def _chunks(count: int, size: int) -> Iterable[slice]:
    for start in range(0, count, size):
        yield slice(start, min(start + size, count))


# ------------------------------------------------------------------------------------------------ the benchmark
class SynthFACSEditBenchmark:
    """A fixed SynthFACS evaluation set on held-out identities, and the metrics of a model on it.

    Args:
        size: image side of the evaluation renders (use the module's training size).
        count: number of source faces, each its own ``test``-split identity (>= 2). Edits: ``count x 8``.
        seed: seed of the source expressions and the transfer pairing (``SyntheticFaces(split="test")``).
        batch_size: images per forward pass.
        kid_subset_size: KID subset size (default ``min(100, count * 8)``).

    Attributes (tensors on the CPU): ``images`` ``[N, 3, S, S]``, ``identity``/``expression`` ``[N]``,
    ``landmarks`` ``[N, 68, 2]``, ``changeable`` bool ``[N, S, S]`` (``changeable_area``), ``targets``
    ``[N, 8, 3, S, S]`` (source identity rendered with each prototype), ``target_masks`` ``[N, 8, S, S]``,
    ``references``/``reference_aus``/``reference_expression``/``transfer_targets`` for transfer.

    Identity leakage is probed on the ground-truth renders (8 balanced expressions per identity): the probe
    trains on the first half of the identities and is scored on the other half, so it can never succeed
    through identity alone.
    """

    def __init__(self, size: int = 64, count: int = 32, seed: int = 0, batch_size: int = 32,
                 kid_subset_size: int | None = None) -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            raise ValueError(f"count must be an integer >= 2 (sources, each a held-out identity), got {count!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.size, self.count, self.seed, self.batch_size = int(size), count, seed, batch_size
        self.kid_subset_size = kid_subset_size
        dataset = SyntheticFaces(size=size, length=count, seed=seed, split="test", identities=count, pairs=True)
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

        eval_networks = getattr(module, "_eval_networks", None)  # EMA weights when present: what edit() uses
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
        judge = _judge_for(recognizer, self.size)
        if judge is None:
            notes.append("no recogniser: expression accuracy, AU error, identity preservation and recogniser-feature "
                         "FID/KID are not measured")
        metrics: dict[str, float] = {}
        n, bs = self.count, self.batch_size
        edit_gt, uc = GroundTruthMetrics().to(device), UnwantedChange().to(device)
        edit_judge = ExpressionEditMetrics(judge, forbid=forbid).to(device) if judge is not None else None
        gt_judge = ExpressionEditMetrics(judge).to(device) if judge is not None else None
        src_judge = ExpressionEditMetrics(judge).to(device) if judge is not None else None
        identity = IdentityPreservation(judge, probe_size=self.size).to(device) if judge is not None else None
        real_batches: list[Tensor] = []
        fake_batches: list[Tensor] = []

        # ---- edits: every source to every expression
        for e in range(NUM_EXPRESSIONS):
            for s in _chunks(n, bs):
                images, landmarks = self.images[s].to(device), self.landmarks[s].to(device)
                labels = torch.full((images.shape[0],), e, dtype=torch.long, device=device)
                edited = edit(images, labels, landmarks).to(device).float().clamp(-1, 1)
                target = self.targets[s, e].to(device)
                edit_gt.update(edited, target)
                uc.update(images, edited, self.changeable[s].to(device))
                real_batches.append(target)
                fake_batches.append(edited)
                if judge is not None:
                    proto = self.prototypes[e].to(device).expand(images.shape[0], -1)
                    edit_judge.update(edited, labels, proto)
                    gt_judge.update(target, labels, proto)
                    identity.update(images, edited, self.identity[s].to(device))
        scores = edit_gt.compute()
        metrics.update({f"edit_{k}": float(v) for k, v in scores.items()})
        metrics["edit_unwanted_change"] = float(uc.compute())
        if judge is not None:
            judged = edit_judge.compute()
            metrics["edit_expression_accuracy"] = float(judged["expression_accuracy"])
            metrics["edit_au_mae"] = float(judged["au_mae"])
            on_gt = gt_judge.compute()
            metrics["judge_accuracy_gt"] = float(on_gt["expression_accuracy"])
            metrics["judge_au_mae_gt"] = float(on_gt["au_mae"])
            for s in _chunks(n, bs):
                src_judge.update(self.images[s].to(device), self.expression[s].to(device))
            metrics["judge_accuracy_source"] = float(src_judge.compute()["expression_accuracy"])
            metrics.update({k: float(v) for k, v in identity.compute().items()})

        # ---- FID / KID: ground-truth renders vs edits
        extractor = _feature_extractor(fid_features, judge, self.size, notes)
        features = None
        if extractor is not None:
            features = extractor.description
            metrics.update(_distribution_metrics(extractor, real_batches, fake_batches, self.kid_subset_size))
            notes += _small_set_note(extractor, n * NUM_EXPRESSIONS)
        del real_batches, fake_batches

        # ---- transfer: source identity with the reference's AUs
        if transfer is not None:
            tr_gt, tr_uc = GroundTruthMetrics().to(device), UnwantedChange().to(device)
            tr_judge = ExpressionEditMetrics(judge, forbid=forbid).to(device) if judge is not None else None
            for s in _chunks(n, bs):
                images, landmarks = self.images[s].to(device), self.landmarks[s].to(device)
                out = transfer(images, self.references[s].to(device), landmarks).to(device).float().clamp(-1, 1)
                tr_gt.update(out, self.transfer_targets[s].to(device))
                tr_uc.update(images, out, self.changeable[s].to(device))
                if tr_judge is not None:
                    tr_judge.update(out, self.reference_expression[s].to(device), self.reference_aus[s].to(device))
            metrics.update({f"transfer_{k}": float(v) for k, v in tr_gt.compute().items()})
            metrics["transfer_unwanted_change"] = float(tr_uc.compute())
            if tr_judge is not None:
                judged = tr_judge.compute()
                metrics["transfer_expression_accuracy"] = float(judged["expression_accuracy"])
                metrics["transfer_au_mae"] = float(judged["au_mae"])

        # ---- identity leakage and parsing, on the ground-truth renders (8 balanced expressions per identity)
        renders = self.targets.flatten(0, 1)
        labels = torch.arange(NUM_EXPRESSIONS).repeat(n)
        probe_train = (torch.arange(n) < n // 2).repeat_interleave(NUM_EXPRESSIONS)  # split by identity
        if encoder is not None:
            leak = IdentityLeakage()
            context = frozen_eval(encoder_module, device) if encoder_module is not None else torch.no_grad()
            with context:
                for s in _chunks(renders.shape[0], bs):
                    feats = encoder(_resize(renders[s].to(device), model_size))
                    for train in (True, False):
                        keep = probe_train[s] == train
                        if bool(keep.any()):
                            leak.update(feats[keep.to(feats.device)], labels[s][keep].to(feats.device), train=train)
            leaked = leak.compute()
            metrics.update({"leakage_accuracy": float(leaked["accuracy"]), "leakage_chance": float(leaked["chance"]),
                            "leakage_majority": float(leaked["majority_baseline"]),
                            "leakage": float(leaked["leakage"])})
        if segmenter is not None:
            parsing = ParsingMetrics(NUM_CLASSES).to(device)
            masks = self.target_masks.flatten(0, 1)
            with frozen_eval(segmenter, device):
                for s in _chunks(renders.shape[0], bs):
                    logits = segmenter(_resize(renders[s].to(device), model_size))
                    if logits.shape[-1] != self.size:
                        logits = F.interpolate(logits, size=(self.size, self.size), mode="bilinear",
                                               align_corners=False)
                    parsing.update(logits, masks[s].to(device))
            metrics["parsing_miou"] = float(parsing.compute()["miou"])
        return BenchmarkResult(metrics, judge=_describe(recognizer), features=features, notes=notes,
                               seconds=time.time() - start)


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# ------------------------------------------------------------------------------------------------ real data
def evaluate_datamodule(module: nn.Module, datamodule: pl.LightningDataModule, recognizer: nn.Module | None = None,
                        *, count: int = 256, fid_features: str = "auto", batch_size: int | None = None,
                        dilation: int | None = None, device: torch.device | str | None = None) -> BenchmarkResult:
    """The subset of the benchmark that real data allows (no ground truth for an edit exists).

    Takes up to ``count`` images from the DataModule's test loader (else validation) and edits each to all
    8 expressions. Measured: ``edit_expression_accuracy``/``edit_au_mae`` (judge vs the target label and its
    prototype AUs), ``fid``/``kid`` (the sources vs the edits), ``edit_unwanted_change`` outside
    :func:`expression_area` of the module segmenter's *predicted* source masks (else the batch's ``mask``;
    an approximation, see its docstring), ``parsing_miou`` when batches carry masks, and transfers to the
    next image of the batch (``transfer_au_mae``/``transfer_expression_accuracy`` vs its labels). Not
    measured: PSNR/SSIM (no ground truth) and identity leakage (needs identity-disjoint expression labels).
    """
    start = time.time()
    device = torch.device(device) if device is not None else next(module.parameters()).device
    notes = ["real data: no ground truth for edits, so no PSNR/SSIM/L1; identity leakage not measured"]
    forbid = [getattr(module, "discriminator", None)]
    size = int(getattr(module, "image_size", 64))
    judge = _judge_for(recognizer, size)
    if judge is None:
        notes.append("no recogniser: expression accuracy and AU error are not measured")
    if recognizer is not None:
        assert_independent(recognizer, *forbid)
    datamodule.setup("test")
    try:
        loader = datamodule.test_dataloader()
    except Exception:  # DataModules without a test split
        datamodule.setup("validate")
        loader = datamodule.val_dataloader()
    dilation = max(1, round(0.03 * size)) if dilation is None else dilation
    segmenter = getattr(module, "segmenter", None)
    uc = UnwantedChange().to(device)
    edit_judge = ExpressionEditMetrics(judge, forbid=forbid).to(device) if judge is not None else None
    tr_judge = ExpressionEditMetrics(judge, forbid=forbid).to(device) if judge is not None else None
    parsing = ParsingMetrics(NUM_CLASSES).to(device)
    prototypes = torch.stack([torch.from_numpy(expression_prototype(e)) for e in range(NUM_EXPRESSIONS)]).to(device)
    real, fake, seen, transfers = [], [], 0, 0
    for batch in loader:
        if seen >= count:
            break
        take = min(batch["image"].shape[0], count - seen)
        seen += take
        images = _resize(batch["image"][:take].to(device).float(), size)
        landmarks = batch.get("landmarks")
        if landmarks is not None:
            landmarks = landmarks[:take].to(device) * (size / batch["image"].shape[-1])
        changeable = None
        if segmenter is not None:
            with frozen_eval(segmenter, device):
                logits = segmenter(images)
            changeable = expression_area(logits.argmax(1), dilation)
            if batch.get("mask") is not None:
                mask = batch["mask"][:take].to(device).long()
                if mask.shape[-1] != size:
                    mask = F.interpolate(mask[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
                parsing.update(logits, mask)
        elif batch.get("mask") is not None:
            mask = batch["mask"][:take].to(device).long()
            mask = F.interpolate(mask[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
            changeable = expression_area(mask, dilation)
        real.append(images)
        for e in range(NUM_EXPRESSIONS):
            labels = torch.full((take,), e, dtype=torch.long, device=device)
            edited = module.edit(images, expression=labels, landmarks=landmarks).to(device).float().clamp(-1, 1)
            fake.append(edited)
            if changeable is not None:
                uc.update(images, edited, changeable)
            if edit_judge is not None:
                edit_judge.update(edited, labels, prototypes[e].expand(take, -1))
        if tr_judge is not None and take > 1 and batch.get("expression") is not None:
            # reference = the next image of the batch; judged against the reference's own labels
            out = module.transfer(images, images.roll(1, 0), landmarks=landmarks).to(device).float().clamp(-1, 1)
            ref_aus = batch["aus"][:take].roll(1, 0).to(device).float() if batch.get("aus") is not None else None
            tr_judge.update(out, batch["expression"][:take].roll(1, 0).to(device), ref_aus)
            transfers += take
    if seen == 0:
        raise ValueError("the DataModule's evaluation loader yielded no images")
    metrics: dict[str, float] = {}
    if edit_judge is not None:
        judged = edit_judge.compute()
        metrics["edit_expression_accuracy"] = float(judged["expression_accuracy"])
        metrics["edit_au_mae"] = float(judged["au_mae"])
        if transfers:
            judged = tr_judge.compute()
            metrics["transfer_expression_accuracy"] = float(judged["expression_accuracy"])
            if "au_mae" in judged:
                metrics["transfer_au_mae"] = float(judged["au_mae"])
        else:
            notes.append("transfer metrics skipped: batches carry no expression labels")
    if int(uc.count) > 0:
        metrics["edit_unwanted_change"] = float(uc.compute())
        notes.append(f"unwanted change outside expression_area(dilation={dilation}) of "
                     + ("the segmenter's predicted masks" if segmenter is not None else "the dataset masks")
                     + " (approximate: AU6/AU17/AU26 move skin outside every parsing region)")
    else:
        notes.append("unwanted change skipped: no segmenter and no masks")
    if int(parsing.confmat.sum()) > 0:
        metrics["parsing_miou"] = float(parsing.compute()["miou"])
    extractor = _feature_extractor(fid_features, judge, size, notes)
    features = None
    if extractor is not None:
        features = extractor.description
        metrics.update(_distribution_metrics(extractor, real, fake, None))
        notes += _small_set_note(extractor, seen)
        notes.append("FID/KID: the unedited sources (real) vs their edits to all 8 expressions")
    return BenchmarkResult(metrics, judge=_describe(recognizer), features=features, notes=notes,
                           seconds=time.time() - start)


# ------------------------------------------------------------------------------------------------ the judge
def train_recognizer(
    size: int = 64,
    minutes: float | None = None,
    max_steps: int = -1,
    *,
    batch_size: int = 32,
    train_length: int = 4000,
    seed: int = 1,
    discriminator_kwargs: Mapping[str, Any] | None = None,
    lr: float = 1e-3,
    dataset: Dataset | None = None,
    out: str | Path | None = None,
) -> AUDiscriminatorModule:
    """Train an independent expression / AU judge on the SynthFACS ``train`` split and return it (eval mode).

    It is an :class:`AUDiscriminatorModule` trained *alone* on real renders (expression cross-entropy + AU
    regression of the global heads; no local heads): it never saw a generated image, so a generator cannot
    have learnt to fool it. The benchmark evaluates on ``test``-split identities, which it never saw either.

    Args:
        size: image side. minutes: wall-clock budget (Lightning ``max_time``); max_steps: step budget (-1: none).
            At least one of the two must be set.
        batch_size, train_length, seed, lr: training data and optimiser settings.
        discriminator_kwargs: ``AUDiscriminator`` arguments (default: 16 base channels, 4 layers, no regions).
        dataset: train on this dataset instead (items with ``image`` and ``expression``/``aus``).
        out: also save a Lightning checkpoint there (load it with :func:`load_recognizer`).
    """
    if minutes is None and (max_steps is None or max_steps < 0):
        raise ValueError("train_recognizer needs a budget: minutes= and/or max_steps=")
    pl.seed_everything(seed, workers=True, verbose=False)
    kwargs = {"base_channels": 16, "n_layers": 4, "regions": ()}
    kwargs.update(dict(discriminator_kwargs or {}))
    recognizer = AUDiscriminatorModule(image_size=size, discriminator_kwargs=kwargs, lr=lr, local=False)
    if dataset is None:
        dataset = SyntheticFaces(size=size, length=train_length, seed=seed, split="train")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                        generator=torch.Generator().manual_seed(seed))
    trainer = pl.Trainer(max_time={"seconds": max(1, int(minutes * 60))} if minutes is not None else None,
                         max_steps=max_steps if max_steps is not None else -1, max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, accelerator="cpu")
    trainer.fit(recognizer, loader)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(out)
    return recognizer.eval()


def load_recognizer(path: str | Path, map_location: str | torch.device = "cpu") -> AUDiscriminatorModule:
    """Load a judge checkpoint safely (``weights_only``); it must hold an :class:`AUDiscriminatorModule`."""
    hparams = read_checkpoint(path).get("hyper_parameters") or {}
    if "discriminator_kwargs" not in hparams and "_class_path" not in hparams:
        kind = "a JointModule" if "region_source" in hparams else "not an AUDiscriminatorModule"
        raise CheckpointError(f"{path} holds {kind} (hyperparameters {sorted(hparams)[:8]}); --recognizer needs an "
                              "independently trained AUDiscriminatorModule checkpoint "
                              "(see segexpr.evaluate.train_recognizer)")
    return load_module(path, expected=AUDiscriminatorModule, map_location=map_location)


def load_joint(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a :class:`~segexpr.modules.JointModule` checkpoint safely (``weights_only``)."""
    from segexpr.modules.joint import JointModule

    hparams = read_checkpoint(path).get("hyper_parameters") or {}
    if "region_source" not in hparams and "_class_path" not in hparams:
        raise CheckpointError(f"{path} does not hold a JointModule (hyperparameters {sorted(hparams)[:8]}); "
                              "--ckpt needs a JointModule checkpoint")
    return load_module(path, expected=JointModule, map_location=map_location)


# ------------------------------------------------------------------------------------------------ callback
class EditMetricsCallback(pl.Callback):
    """Log the SynthFACS edit benchmark at the end of validation and test epochs.

    ``metrics also logged in validate/test`` without touching the module: the callback calls
    ``pl_module.log_dict({"val/synthfacs/edit_psnr": ..., ...})`` from ``on_validation_epoch_end`` (and
    ``test/...`` from ``on_test_epoch_end``), so the values reach every logger, ``trainer.callback_metrics``
    and the dicts returned by ``trainer.validate``/``trainer.test``; checkpoint callbacks can monitor them.

    Args:
        recognizer: the independent judge (an :class:`AUDiscriminatorModule`), or
        recognizer_ckpt: a path to its checkpoint (loaded once, safely). With neither, only the
            recogniser-free metrics are logged (PSNR/SSIM/L1, unwanted change, transfer PSNR, leakage, mIoU),
            and a warning says so once.
        size: benchmark image size (default: the module's ``image_size``).
        count: source faces of the benchmark (edits: ``count x 8``).
        every_n_epochs: during ``fit``, run on every n-th validation epoch (``validate``/``test`` always run).
        fid_features: ``"recognizer"`` (default: cheap), ``"auto"``, ``"inception"`` or ``"none"``.
        prefix: key infix (``<stage>/<prefix>/<metric>``).
    """

    def __init__(self, recognizer: nn.Module | None = None, recognizer_ckpt: str | Path | None = None,
                 size: int | None = None, count: int = 16, seed: int = 0, every_n_epochs: int = 1,
                 fid_features: str = "recognizer", batch_size: int = 32, prefix: str = "synthfacs") -> None:
        super().__init__()
        if recognizer is not None and recognizer_ckpt is not None:
            raise ValueError("give recognizer= or recognizer_ckpt=, not both")
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.recognizer = recognizer
        self.recognizer_ckpt = Path(recognizer_ckpt) if recognizer_ckpt is not None else None
        self.size, self.count, self.seed, self.every_n_epochs = size, count, seed, every_n_epochs
        self.fid_features, self.batch_size, self.prefix = fid_features, batch_size, prefix
        self._benchmark: SynthFACSEditBenchmark | None = None
        self._warned = False
        self.last_result: BenchmarkResult | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.recognizer is None and self.recognizer_ckpt is not None:
            self.recognizer = load_recognizer(self.recognizer_ckpt)
        if self.recognizer is None and not self._warned:
            rank_zero_warn("EditMetricsCallback: no recogniser given; logging only the recogniser-free metrics "
                           "(PSNR/SSIM/L1, unwanted change, transfer PSNR, identity leakage, parsing mIoU). Expression "
                           "accuracy, AU error, FID/KID and identity preservation need an independently trained "
                           "recogniser (segexpr.evaluate.train_recognizer)")
            self._warned = True

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        size = int(self.size or getattr(pl_module, "image_size", 64))
        if self._benchmark is None or self._benchmark.size != size:
            self._benchmark = SynthFACSEditBenchmark(size=size, count=self.count, seed=self.seed,
                                                     batch_size=self.batch_size)
        fid = self.fid_features if self.recognizer is not None or self.fid_features != "recognizer" else "none"
        result = self._benchmark.evaluate(pl_module, self.recognizer, fid_features=fid, device=pl_module.device)
        self.last_result = result
        pl_module.log_dict({f"{stage}/{self.prefix}/{k}": float(v) for k, v in result.metrics.items()},
                           batch_size=self._benchmark.count)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        fitting = trainer.state.fn == "fit"
        if fitting and (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._run(trainer, pl_module, "test")


# ------------------------------------------------------------------------------------------------ the command
def markdown_table(metrics: Mapping[str, float], descriptions: Mapping[str, str] = METRIC_DESCRIPTIONS) -> str:
    """A two/three-column markdown table of ``metrics`` (known keys first, in :data:`METRIC_DESCRIPTIONS` order)."""
    keys = [k for k in descriptions if k in metrics] + [k for k in metrics if k not in descriptions]
    lines = ["| metric | value | meaning |", "| --- | ---: | --- |"]
    for key in keys:
        lines.append(f"| {key} | {_fmt(metrics[key])} | {descriptions.get(key, '')} |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"


def _load_datamodule(path: Path) -> pl.LightningDataModule:
    """A DataModule from a YAML config: ``data: {class_path, init_args}`` (LightningCLI style) or those keys at top."""
    import yaml

    config = yaml.safe_load(path.read_text())
    spec = config.get("data", config) if isinstance(config, dict) else None
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{path}: expected a 'data:' section with class_path/init_args (as LightningCLI writes it)")
    module_name, _, class_name = str(spec["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: cannot import data class_path {spec['class_path']!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningDataModule)):
        raise ValueError(f"{path}: {spec['class_path']} is not a LightningDataModule")
    return cls(**dict(spec.get("init_args") or {}))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="segexpr evaluate", description=(
        "Evaluate a JointModule checkpoint: expression accuracy / AU error judged by an independent recogniser, "
        "PSNR/SSIM against SynthFACS ground truth, unwanted change, FID/KID, parsing mIoU, transfer and identity "
        "leakage. Prints a markdown table and writes JSON."))
    parser.add_argument("--ckpt", type=Path, required=True, help="JointModule checkpoint")
    parser.add_argument("--recognizer", type=Path, default=None,
                        help="independently trained AUDiscriminatorModule checkpoint (the judge); without it only the "
                             "recogniser-free metrics are reported")
    parser.add_argument("--data", default="synthetic", help="'synthetic' (SynthFACS held-out identities, exact ground "
                        "truth) or a YAML file with a LightningCLI 'data:' section (real data, a subset of metrics)")
    parser.add_argument("--size", type=int, default=None, help="benchmark image size (default: the model's)")
    parser.add_argument("--count", type=int, default=32, help="source faces (SynthFACS: each edited to 8 expressions)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fid-features", default="auto", choices=("auto", "recognizer", "inception", "none"))
    parser.add_argument("--out", type=Path, default=Path("results.json"), help="JSON output path")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """``segexpr evaluate``: see :func:`parse_args`. Returns 0; errors raise with a message naming the problem."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.data != "synthetic":
        data_path = Path(args.data)
        if data_path.suffix.lower() not in (".yaml", ".yml"):
            raise SystemExit(f"segexpr evaluate: unknown --data {args.data!r}; expected 'synthetic' or a .yaml config")
        if not data_path.is_file():
            raise SystemExit(f"segexpr evaluate: --data config not found: {data_path}")
    try:
        module = load_joint(args.ckpt, map_location=args.device)
        recognizer = load_recognizer(args.recognizer, map_location=args.device) if args.recognizer else None
    except CheckpointError as err:
        raise SystemExit(f"segexpr evaluate: {err}") from err
    if recognizer is not None:
        try:
            assert_independent(recognizer, module.discriminator)
        except ValueError as err:
            raise SystemExit(f"segexpr evaluate: --recognizer is not independent of the GAN: {err}") from err
    if args.data == "synthetic":
        size = args.size or module.image_size
        benchmark = SynthFACSEditBenchmark(size=size, count=args.count, seed=args.seed, batch_size=args.batch_size)
        result = benchmark.evaluate(module, recognizer, fid_features=args.fid_features, device=args.device)
        data = {"data": "synthetic", "split": "test (held-out identities)", "size": size, "sources": args.count,
                "edits": args.count * NUM_EXPRESSIONS, "seed": args.seed}
    else:
        datamodule = _load_datamodule(Path(args.data))
        result = evaluate_datamodule(module, datamodule, recognizer, count=args.count, fid_features=args.fid_features,
                                     device=args.device)
        data = {"data": str(args.data), "sources": args.count}
    command = "segexpr evaluate " + " ".join(shlex.quote(a) for a in argv)
    table = markdown_table(result.metrics)
    print(f"## segexpr evaluate: {args.ckpt}\n")
    print(table)
    print(f"\njudge: {result.judge or 'none'}; FID/KID features: {result.features or 'none'}")
    for note in result.notes:
        print(f"note: {note}")
    payload = {"command": command, "checkpoint": str(args.ckpt),
               "recognizer": str(args.recognizer) if args.recognizer else None, **data, **result.as_dict()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    print(f"wrote {args.out}")
    return 0
