"""Face-parsing metrics: mean IoU, per-class IoU and F1, pixel accuracy, from one confusion matrix.

:class:`ParsingMetrics` is a :class:`torchmetrics.Metric` whose only state is a ``[C, C]`` confusion matrix
(summed across processes under DDP), accumulated with torchmetrics' own
``multiclass_confusion_matrix``. Classes absent from both the targets and the predictions of everything
seen are left out of every mean and of the per-class entries, so a dataset without, say, hats is not
penalised (or flattered) by an undefined hat IoU.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import multiclass_confusion_matrix

from segexpr.labels import CELEBAMASK_HQ_CLASSES

__all__ = ["ParsingMetrics", "parsing_scores"]


def parsing_scores(confmat: torch.Tensor, class_names: Sequence[str]) -> dict[str, torch.Tensor]:
    """Scores from a confusion matrix ``confmat[target, prediction]`` (int or float ``[C, C]``).

    Returns a flat dict of scalar float tensors:

    * ``miou`` - mean IoU over present classes, ``IoU_c = TP / (TP + FP + FN)``;
    * ``mean_f1`` - mean F1 over present classes, ``F1_c = 2 TP / (2 TP + FP + FN)``;
    * ``pixel_accuracy`` - ``trace / sum``;
    * ``iou_<name>`` and ``f1_<name>`` - one entry per *present* class.

    A class is present when it occurs in the targets or in the predictions (row or column sum > 0).
    With nothing counted, ``miou``, ``mean_f1`` and ``pixel_accuracy`` are NaN.
    """
    if confmat.dim() != 2 or confmat.shape[0] != confmat.shape[1]:
        raise ValueError(f"confmat must be square [C, C], got shape {tuple(confmat.shape)}")
    if len(class_names) != confmat.shape[0]:
        raise ValueError(f"got {len(class_names)} class names for a {confmat.shape[0]}-class confusion matrix")
    cm = confmat.double()
    tp = cm.diagonal()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    present = (cm.sum(0) + cm.sum(1)) > 0
    iou = tp / (tp + fp + fn).clamp_min(1)
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    nan = torch.tensor(float("nan"), dtype=torch.float64, device=cm.device)
    out = {
        "miou": iou[present].mean() if present.any() else nan,
        "mean_f1": f1[present].mean() if present.any() else nan,
        "pixel_accuracy": tp.sum() / cm.sum() if cm.sum() > 0 else nan,
    }
    for index in torch.nonzero(present).flatten().tolist():
        out[f"iou_{class_names[index]}"] = iou[index]
    for index in torch.nonzero(present).flatten().tolist():
        out[f"f1_{class_names[index]}"] = f1[index]
    return {key: value.float() for key, value in out.items()}


class ParsingMetrics(Metric):
    """Mean IoU, per-class IoU/F1 and pixel accuracy for face parsing.

    Args:
        num_classes: number of classes ``C`` (>= 2).
        class_names: ``C`` names used in the result keys; default: CelebAMask-HQ order A for 19 classes,
            ``class_0 ...`` otherwise.
        ignore_index: target value excluded from all counts (e.g. 255), or ``None``.

    ``update(preds, target)``: ``preds`` is an int64 class map ``[B, H, W]`` or logits/probabilities float
    ``[B, C, H, W]`` (argmax over ``C`` is taken); ``target`` is int64 ``[B, H, W]``.
    ``compute()`` returns the dict described in :func:`parsing_scores` (``miou``, ``mean_f1``,
    ``pixel_accuracy``, ``iou_<class>``, ``f1_<class>`` for present classes).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    confmat: torch.Tensor

    def __init__(self, num_classes: int = 19, class_names: Sequence[str] | None = None,
                 ignore_index: int | None = 255, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if class_names is None:
            class_names = (CELEBAMASK_HQ_CLASSES if num_classes == len(CELEBAMASK_HQ_CLASSES)
                           else [f"class_{i}" for i in range(num_classes)])
        if len(class_names) != num_classes:
            raise ValueError(f"got {len(class_names)} class names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.class_names = tuple(str(n) for n in class_names)
        self.ignore_index = ignore_index
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.dim() == 4 and preds.dtype.is_floating_point:
            if preds.shape[1] != self.num_classes:
                raise ValueError(f"preds have {preds.shape[1]} channels, expected num_classes={self.num_classes}")
            preds = preds.argmax(1)
        if preds.dim() != 3 or target.dim() != 3:
            raise ValueError(f"expected preds [B, H, W] (or logits [B, C, H, W]) and target [B, H, W], got "
                             f"{tuple(preds.shape)} and {tuple(target.shape)}")
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
        if target.dtype.is_floating_point:
            raise TypeError(f"target must be an integer class map, got dtype {target.dtype}")
        self.confmat += multiclass_confusion_matrix(preds.long(), target.long(), self.num_classes,
                                                    ignore_index=self.ignore_index, validate_args=True)

    def compute(self) -> dict[str, torch.Tensor]:
        return parsing_scores(self.confmat, self.class_names)
