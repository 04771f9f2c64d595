"""OHEM cross-entropy and Dice on hand-checkable inputs."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segexpr.losses import dice_loss, ohem_cross_entropy, ohem_mask


def _logits_from_probs(p_true: list[float], target: list[int], num_classes: int = 2) -> torch.Tensor:
    """[1, C, 1, N] logits whose softmax gives probability p_true[i] to class target[i] (2 classes)."""
    assert num_classes == 2
    logits = torch.zeros(1, 2, 1, len(p_true))
    for i, (p, t) in enumerate(zip(p_true, target)):
        logits[0, t, 0, i] = math.log(p / (1 - p))  # the other class has logit 0
    return logits


def test_ohem_keeps_pixels_below_threshold():
    p = [0.9, 0.5, 0.8, 0.2, 0.69, 0.95]
    target = torch.tensor([[[0, 1, 0, 1, 0, 1]]])
    logits = _logits_from_probs(p, target.flatten().tolist())
    keep = ohem_mask(logits, target, thresh=0.7, min_kept=1)
    assert keep.flatten().tolist() == [False, True, False, True, True, False]
    expected = -(math.log(0.5) + math.log(0.2) + math.log(0.69)) / 3
    assert ohem_cross_entropy(logits, target, thresh=0.7, min_kept=1).item() == pytest.approx(expected, rel=1e-5)


def test_ohem_min_kept_takes_hardest_pixels():
    p = [0.9, 0.5, 0.8, 0.2, 0.69, 0.95]
    target = torch.tensor([[[0, 1, 0, 1, 0, 1]]])
    logits = _logits_from_probs(p, target.flatten().tolist())
    # only 3 pixels are below 0.7, so with min_kept=4 the 4 lowest-probability pixels are kept instead
    keep = ohem_mask(logits, target, thresh=0.7, min_kept=4)
    assert keep.flatten().tolist() == [False, True, True, True, True, False]
    expected = -(math.log(0.5) + math.log(0.8) + math.log(0.2) + math.log(0.69)) / 4
    assert ohem_cross_entropy(logits, target, thresh=0.7, min_kept=4).item() == pytest.approx(expected, rel=1e-5)
    # default min_kept is 1/16 of labelled pixels: 6 // 16 = 0, so the threshold alone decides
    assert ohem_mask(logits, target).flatten().tolist() == [False, True, False, True, True, False]


def test_ohem_ignores_ignore_index_and_handles_empty():
    p = [0.1, 0.1, 0.9]
    target = torch.tensor([[[0, 1, 0]]])
    logits = _logits_from_probs(p, target.flatten().tolist())
    target_ignored = torch.tensor([[[255, 1, 0]]])
    keep = ohem_mask(logits, target_ignored, thresh=0.7, min_kept=3)
    assert keep.flatten().tolist() == [False, True, True]  # min_kept clipped to the 2 labelled pixels
    all_ignored = torch.full_like(target, 255)
    logits.requires_grad_(True)
    loss = ohem_cross_entropy(logits, all_ignored)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None


def test_ohem_with_threshold_one_is_plain_cross_entropy():
    logits = torch.randn(2, 5, 7, 9)
    target = torch.randint(0, 5, (2, 7, 9))
    torch.testing.assert_close(ohem_cross_entropy(logits, target, thresh=1.0), F.cross_entropy(logits, target))


def test_dice_hand_computed():
    # two pixels, two classes; probabilities [[0.8, 0.2], [0.4, 0.6]] for pixel 0 (target 0) and 1 (target 1)
    probs = torch.tensor([[0.8, 0.4], [0.2, 0.6]])  # [C, N]
    logits = probs.log().view(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    dice0 = (2 * 0.8 + 1) / (0.8 + 0.4 + 1 + 1)
    dice1 = (2 * 0.6 + 1) / (0.2 + 0.6 + 1 + 1)
    assert dice_loss(logits, target).item() == pytest.approx(1 - (dice0 + dice1) / 2, rel=1e-5)
    dice0_nosmooth = 2 * 0.8 / (0.8 + 0.4 + 1)
    dice1_nosmooth = 2 * 0.6 / (0.2 + 0.6 + 1)
    assert dice_loss(logits, target, smooth=0).item() == pytest.approx(1 - (dice0_nosmooth + dice1_nosmooth) / 2,
                                                                       rel=1e-5)


def test_dice_only_counts_present_classes_and_is_zero_when_perfect():
    target = torch.randint(0, 3, (2, 8, 8))  # classes 3..5 never occur
    logits = F.one_hot(target, 6).movedim(-1, 1).float() * 50
    assert dice_loss(logits, target, smooth=0).item() == pytest.approx(0.0, abs=1e-5)
    wrong = torch.roll(logits, 1, dims=1)
    assert dice_loss(wrong, target).item() > 0.9


@pytest.mark.parametrize("fn", [ohem_cross_entropy, dice_loss])
def test_bad_inputs_raise(fn):
    logits = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        fn(logits[0], torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        fn(logits, torch.zeros(2, 1, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        fn(logits, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="disagree"):
        fn(logits, torch.zeros(2, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        fn(logits, torch.full((2, 4, 4), 3, dtype=torch.long))


def test_ohem_bad_config_raises():
    logits, target = torch.randn(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="thresh"):
        ohem_cross_entropy(logits, target, thresh=1.5)
    with pytest.raises(ValueError, match="min_kept"):
        ohem_cross_entropy(logits, target, min_kept=-1)
