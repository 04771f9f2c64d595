"""Evaluating a :class:`~segexpr.modules.JointModule` on real data: the subset of the benchmark without ground truth.

* :func:`evaluate_datamodule` -- edits up to ``count`` images of any ``LightningDataModule``'s test (else
  validation) loader to all 8 expressions and reports what can be measured without a ground-truth edit:
  judged expression accuracy / AU error, FID/KID, approximate unwanted change, parsing mIoU, transfers and
  (with dlib) ``identity_distance``, the dlib face descriptor distance between each source and its edits.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segexpr.labels import NUM_CLASSES, NUM_EXPRESSIONS, expression_prototype
from segexpr.evaluation.benchmark import BenchmarkResult
from segexpr.evaluation.common import distribution_metrics, feature_extractor, resize, small_set_note
from segexpr.evaluation.recognizer import describe_recognizer, judge_for
from segexpr.metrics import ExpressionEditMetrics, ParsingMetrics, UnwantedChange, assert_independent, expression_area
from segexpr.metrics.distribution import frozen_eval


def evaluate_datamodule(module: nn.Module, datamodule: pl.LightningDataModule, recognizer: nn.Module | None = None,
                        *, count: int = 256, fid_features: str = "auto", batch_size: int | None = None,
                        dilation: int | None = None, device: torch.device | str | None = None,
                        identity: bool | None = None, identity_count: int = 64) -> BenchmarkResult:
    """The subset of the benchmark that real data allows (no ground truth for an edit exists).

    Takes up to ``count`` images from the DataModule's test loader (else validation) and edits each to all
    8 expressions. Measured: ``edit_expression_accuracy``/``edit_au_mae`` (judge vs the target label and its
    prototype AUs), ``fid``/``kid`` (the sources vs the edits), ``edit_unwanted_change`` outside
    :func:`expression_area` of the module segmenter's *predicted* source masks (else the batch's ``mask``;
    an approximation, see its docstring), ``parsing_miou`` when batches carry masks, and transfers to the
    next image of the batch (``transfer_au_mae``/``transfer_expression_accuracy`` vs its labels). Not
    measured: PSNR/SSIM (no ground truth) and identity leakage (needs identity-disjoint expression labels).

    ``identity``: report ``identity_distance``, the mean Euclidean distance between dlib's 128-d face descriptors
    (:func:`segexpr.faces.identity.identity_distance`) of each source and its 8 edits; lower keeps the identity
    better, below 0.6 is dlib's "same person". It is dlib's descriptor, not ArcFace. ``None`` (default): on when
    dlib is importable (``pip install 'segexpr[photo]'``); ``True`` without dlib is an ImportError. Measured on the
    first ``identity_count`` images only (dlib's descriptor costs ~0.1-0.3 s per face on a CPU, 9 per image).
    """
    start = time.time()
    device = torch.device(device) if device is not None else next(module.parameters()).device
    notes = ["real data: no ground truth for edits, so no PSNR/SSIM/L1; identity leakage not measured"]
    forbid = [getattr(module, "discriminator", None)]
    size = int(getattr(module, "image_size", 64))
    judge = judge_for(recognizer, size)
    if judge is None:
        notes.append("no recogniser: expression accuracy and AU error are not measured")
    if recognizer is not None:
        assert_independent(recognizer, *forbid)
    identity = _identity_available(identity, notes)
    loader = _evaluation_loader(datamodule)
    dilation = max(1, round(0.03 * size)) if dilation is None else dilation
    run = _RealDataRun(module, judge, forbid, size, dilation, device,
                       identity_count=identity_count if identity else 0)
    for batch in loader:
        if run.seen >= count:
            break
        run.add(batch, min(batch["image"].shape[0], count - run.seen))
    if run.seen == 0:
        raise ValueError("the DataModule's evaluation loader yielded no images")
    metrics = run.scores(notes)
    extractor = feature_extractor(fid_features, judge, size, notes)
    features = None
    if extractor is not None:
        features = extractor.description
        metrics.update(distribution_metrics(extractor, run.real, run.fake, None))
        notes += small_set_note(extractor, run.seen)
        notes.append("FID/KID: the unedited sources (real) vs their edits to all 8 expressions")
    return BenchmarkResult(metrics, judge=describe_recognizer(recognizer), features=features, notes=notes,
                           seconds=time.time() - start)


def _identity_available(identity: bool | None, notes: list[str]) -> bool:
    """Whether to measure ``identity_distance``: as asked, or (``None``) when dlib is importable."""
    if identity is False:
        return False
    try:
        from segexpr.faces.detect import import_dlib  # the edge, imported on use

        import_dlib()
    except ImportError:
        if identity:
            raise
        notes.append("identity_distance skipped: needs dlib (pip install 'segexpr[photo]')")
        return False
    return True


def _evaluation_loader(datamodule: pl.LightningDataModule):
    """The DataModule's test loader, else its validation loader."""
    datamodule.setup("test")
    try:
        return datamodule.test_dataloader()
    except Exception:  # DataModules without a test split
        datamodule.setup("validate")
        return datamodule.val_dataloader()


class _RealDataRun:
    """The running metrics of :func:`evaluate_datamodule`, fed one loader batch at a time."""

    def __init__(self, module: nn.Module, judge: nn.Module | None, forbid: Sequence[nn.Module | None], size: int,
                 dilation: int, device: torch.device, identity_count: int = 0) -> None:
        self.module, self.size, self.dilation, self.device = module, size, dilation, device
        self.identity_left = max(0, int(identity_count))
        self.identity_distances: list[Tensor] = []
        self.identity_fallbacks = 0
        self.segmenter = getattr(module, "segmenter", None)
        self.uc = UnwantedChange().to(device)
        self.edit_judge = ExpressionEditMetrics(judge, forbid=forbid).to(device) if judge is not None else None
        self.tr_judge = ExpressionEditMetrics(judge, forbid=forbid).to(device) if judge is not None else None
        self.parsing = ParsingMetrics(NUM_CLASSES).to(device)
        self.prototypes = torch.stack([torch.from_numpy(expression_prototype(e))
                                       for e in range(NUM_EXPRESSIONS)]).to(device)
        self.real: list[Tensor] = []
        self.fake: list[Tensor] = []
        self.seen, self.transfers = 0, 0

    def add(self, batch: dict[str, Any], take: int) -> None:
        """The first ``take`` images of ``batch``: edited to every expression and transferred."""
        device, size = self.device, self.size
        self.seen += take
        images = resize(batch["image"][:take].to(device).float(), size)
        landmarks = batch.get("landmarks")
        if landmarks is not None:
            landmarks = landmarks[:take].to(device) * (size / batch["image"].shape[-1])
        changeable = self._changeable_area(batch, images, take)
        self.real.append(images)
        measured = min(take, self.identity_left)
        self.identity_left -= measured
        sources = self._descriptors(images[:measured]) if measured else None
        for e in range(NUM_EXPRESSIONS):
            labels = torch.full((take,), e, dtype=torch.long, device=device)
            edited = self.module.edit(images, expression=labels, landmarks=landmarks).to(device).float().clamp(-1, 1)
            self.fake.append(edited)
            if sources is not None:
                self.identity_distances.append((self._descriptors(edited[:measured]) - sources).norm(dim=1))
            if changeable is not None:
                self.uc.update(images, edited, changeable)
            if self.edit_judge is not None:
                self.edit_judge.update(edited, labels, self.prototypes[e].expand(take, -1))
        if self.tr_judge is not None and take > 1 and batch.get("expression") is not None:
            # reference = the next image of the batch; judged against the reference's own labels
            out = self.module.transfer(images, images.roll(1, 0), landmarks=landmarks).to(device).float().clamp(-1, 1)
            ref_aus = batch["aus"][:take].roll(1, 0).to(device).float() if batch.get("aus") is not None else None
            self.tr_judge.update(out, batch["expression"][:take].roll(1, 0).to(device), ref_aus)
            self.transfers += take

    def _descriptors(self, images: Tensor) -> Tensor:
        """dlib face descriptors float ``[B, 128]`` of aligned face crops (counting template-box fallbacks)."""
        from segexpr.faces.identity import face_descriptors

        descriptors, fallback = face_descriptors(images.detach().float().cpu(), return_fallback=True)
        self.identity_fallbacks += int(fallback.sum())
        return torch.from_numpy(descriptors)

    def _changeable_area(self, batch: dict[str, Any], images: Tensor, take: int) -> Tensor | None:
        """Where an edit may change pixels: from the segmenter's prediction (scoring it on the batch's masks
        when present), else from the batch's masks; ``None`` with neither."""
        device, size = self.device, self.size
        if self.segmenter is not None:
            with frozen_eval(self.segmenter, device):
                logits = self.segmenter(images)
            changeable = expression_area(logits.argmax(1), self.dilation)
            if batch.get("mask") is not None:
                mask = batch["mask"][:take].to(device).long()
                if mask.shape[-1] != size:
                    mask = F.interpolate(mask[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
                self.parsing.update(logits, mask)
            return changeable
        if batch.get("mask") is not None:
            mask = batch["mask"][:take].to(device).long()
            mask = F.interpolate(mask[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
            return expression_area(mask, self.dilation)
        return None

    def scores(self, notes: list[str]) -> dict[str, float]:
        """The judged, unwanted-change and parsing metrics (not FID/KID), adding notes on what was skipped."""
        metrics: dict[str, float] = {}
        if self.edit_judge is not None:
            judged = self.edit_judge.compute()
            metrics["edit_expression_accuracy"] = float(judged["expression_accuracy"])
            metrics["edit_au_mae"] = float(judged["au_mae"])
            if self.transfers:
                judged = self.tr_judge.compute()
                metrics["transfer_expression_accuracy"] = float(judged["expression_accuracy"])
                if "au_mae" in judged:
                    metrics["transfer_au_mae"] = float(judged["au_mae"])
            else:
                notes.append("transfer metrics skipped: batches carry no expression labels")
        if int(self.uc.count) > 0:
            metrics["edit_unwanted_change"] = float(self.uc.compute())
            notes.append(f"unwanted change outside expression_area(dilation={self.dilation}) of "
                         + ("the segmenter's predicted masks" if self.segmenter is not None else "the dataset masks")
                         + " (approximate: AU6/AU17/AU26 move skin outside every parsing region)")
        else:
            notes.append("unwanted change skipped: no segmenter and no masks")
        if int(self.parsing.confmat.sum()) > 0:
            metrics["parsing_miou"] = float(self.parsing.compute()["miou"])
        if self.identity_distances:
            distances = torch.cat(self.identity_distances)
            metrics["identity_distance"] = float(distances.mean())
            notes.append(f"identity_distance: dlib face descriptor distance (not ArcFace) between each source and its "
                         f"8 edits, mean over {distances.numel()} pairs ({distances.numel() // NUM_EXPRESSIONS} sources); "
                         "< 0.6 is dlib's same-person threshold"
                         + (f"; no face detected in {self.identity_fallbacks} crop(s), dlib's template face box used"
                            if self.identity_fallbacks else ""))
        return metrics
