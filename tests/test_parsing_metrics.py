"""Parsing metrics against a hand-computed confusion matrix, and torchmetrics cross-checks."""
from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassF1Score, MulticlassJaccardIndex

from segexpr.data.labels import CELEBAMASK_HQ_CLASSES
from segexpr.metrics.parsing import ParsingMetrics, parsing_scores


def test_hand_computed_confusion_matrix():
    # 4 classes; class 3 ("d") occurs in neither targets nor predictions and must be ignored
    target = torch.tensor([[[0, 0, 0, 1], [1, 1, 2, 2]]])
    preds = torch.tensor([[[0, 0, 1, 1], [1, 2, 2, 0]]])
    # confmat[t, p]: t=0 -> p 0,0,1 ; t=1 -> p 1,1,2 ; t=2 -> p 2,0
    expected_cm = torch.tensor([[2, 1, 0, 0], [0, 2, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    metric = ParsingMetrics(4, ["a", "b", "c", "d"], ignore_index=None)
    metric.update(preds, target)
    assert torch.equal(metric.confmat, expected_cm)
    out = metric.compute()
    # IoU: a = 2/(2+1+1)=0.5 ; b = 2/(2+1+1)=0.5 ; c = 1/(1+1+1)=1/3
    # F1:  a = 4/(4+1+1)=2/3 ; b = 4/6 = 2/3 ; c = 2/(2+1+1)=0.5
    assert out["iou_a"].item() == pytest.approx(0.5)
    assert out["iou_b"].item() == pytest.approx(0.5)
    assert out["iou_c"].item() == pytest.approx(1 / 3)
    assert out["f1_a"].item() == pytest.approx(2 / 3)
    assert out["f1_c"].item() == pytest.approx(0.5)
    assert "iou_d" not in out and "f1_d" not in out
    assert out["miou"].item() == pytest.approx((0.5 + 0.5 + 1 / 3) / 3)
    assert out["mean_f1"].item() == pytest.approx((2 / 3 + 2 / 3 + 0.5) / 3)
    assert out["pixel_accuracy"].item() == pytest.approx(5 / 8)


def test_class_predicted_but_absent_from_target_counts_as_zero():
    target = torch.tensor([[[0, 0]]])
    preds = torch.tensor([[[0, 1]]])
    out = ParsingMetrics(3, ["a", "b", "c"]).__call__(preds, target)
    assert out["iou_b"].item() == 0.0 and out["miou"].item() == pytest.approx(0.25)


def test_ignore_index_and_logits_input_and_accumulation():
    metric = ParsingMetrics(19)
    assert metric.class_names == CELEBAMASK_HQ_CLASSES
    target = torch.randint(0, 19, (2, 16, 16))
    target[:, :4] = 255
    logits = torch.randn(2, 19, 16, 16)
    metric.update(logits[:1], target[:1])
    metric.update(logits[1:], target[1:])
    assert int(metric.confmat.sum()) == 2 * 12 * 16
    out = metric.compute()
    # cross-check against torchmetrics' own per-class Jaccard / F1 (classes all present here)
    preds = logits.argmax(1)
    jaccard = MulticlassJaccardIndex(19, average=None, ignore_index=255)(preds, target)
    f1 = MulticlassF1Score(19, average=None, ignore_index=255, multidim_average="global")(preds, target)
    for i, name in enumerate(CELEBAMASK_HQ_CLASSES):
        assert out[f"iou_{name}"].item() == pytest.approx(jaccard[i].item(), abs=1e-6)
        assert out[f"f1_{name}"].item() == pytest.approx(f1[i].item(), abs=1e-6)
    metric.reset()
    assert int(metric.confmat.sum()) == 0


def test_errors():
    with pytest.raises(ValueError, match="num_classes"):
        ParsingMetrics(1)
    with pytest.raises(ValueError, match="class names"):
        ParsingMetrics(3, ["a", "b"])
    metric = ParsingMetrics(3, ["a", "b", "c"])
    with pytest.raises(ValueError, match="differ in shape"):
        metric.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="channels"):
        metric.update(torch.zeros(1, 5, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="square"):
        parsing_scores(torch.zeros(2, 3), ["a", "b"])
