"""The landmark regressor of the predicted-keypoint baseline: shapes, pixel scaling, NME, and that training helps."""
from __future__ import annotations

import re

import pytest
import torch

from segexpr.data.synthetic import SyntheticFaces
from segexpr.models.landmarks import (
    LandmarkRegressor,
    normalized_mean_error,
    predict_landmarks,
    train_landmark_regressor,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small convolutions slow down tens of times when 2 threads fight other processes for 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_output_shape_and_pixel_scaling_of_a_non_square_image():
    torch.manual_seed(0)
    regressor = LandmarkRegressor(width=4, depth=2).eval()
    images = torch.rand(3, 3, 32, 48) * 2 - 1
    points = regressor(images)
    assert points.shape == (3, 68, 2) and points.dtype == torch.float32
    # normalised -1 / 0 / +1 land on the left-top edge / centre / right-bottom edge, x scaled by W, y by H
    with torch.no_grad():
        regressor.head.weight.zero_()
        for normalised, expected in ((-1.0, (0.0, 0.0)), (0.0, (24.0, 16.0)), (1.0, (48.0, 32.0))):
            regressor.head.bias.fill_(normalised)
            assert torch.allclose(regressor(images), torch.tensor(expected).expand(3, 68, 2))
    # an untrained regressor starts near the centre (small head weights, zero bias)
    fresh = LandmarkRegressor(width=4, depth=2).eval()
    assert ((fresh(images) - torch.tensor([24.0, 16.0])).abs() < 4).all()


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 1, 32, 32), (2, 4, 32, 32), (1, 2, 3, 32, 32)])
def test_regressor_rejects_bad_image_shapes_naming_them(shape):
    regressor = LandmarkRegressor(width=4, depth=1)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\], got shape " + re.escape(str(tuple(shape)))):
        regressor(torch.zeros(shape))


def test_regressor_rejects_integer_images_and_bad_sizes():
    with pytest.raises(ValueError, match="dtype"):
        LandmarkRegressor(width=4, depth=1)(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="width"):
        LandmarkRegressor(width=0)
    with pytest.raises(ValueError, match="depth"):
        LandmarkRegressor(depth=1.5)


def _faces(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = SyntheticFaces(size=32, length=count, seed=0)
    items = [dataset[i] for i in range(count)]
    return (torch.stack([item["image"] for item in items]),
            torch.stack([torch.as_tensor(item["landmarks"]) for item in items]))


def test_nme_of_exact_landmarks_is_zero_and_of_a_shift_is_shift_over_inter_ocular_distance():
    _, landmarks = _faces(4)
    assert normalized_mean_error(landmarks, landmarks).item() == 0.0
    shifted = landmarks + torch.tensor([3.0, 4.0])  # every point moved by 5 px
    inter_ocular = (landmarks[:, 36] - landmarks[:, 45]).norm(dim=-1)
    expected = (5.0 / inter_ocular).mean()
    assert torch.allclose(normalized_mean_error(shifted, landmarks), expected, rtol=1e-5)
    # a hand-made face: outer eye corners 10 px apart, one point of 68 off by 6.8 px -> NME 0.1 / 10
    target = torch.zeros(1, 68, 2)
    target[0, 45, 0] = 10.0
    pred = target.clone()
    pred[0, 0, 1] = 6.8
    assert torch.allclose(normalized_mean_error(pred, target), torch.tensor(0.01))


@pytest.mark.parametrize("pred_shape,target_shape", [((2, 68), (2, 68)), ((2, 67, 2), (2, 67, 2)),
                                                     ((2, 68, 3), (2, 68, 3)), ((2, 68, 2), (3, 68, 2))])
def test_nme_rejects_bad_shapes_naming_them(pred_shape, target_shape):
    with pytest.raises(ValueError, match=r"shape"):
        normalized_mean_error(torch.ones(pred_shape), torch.ones(target_shape))


def test_nme_rejects_a_zero_inter_ocular_distance():
    with pytest.raises(ValueError, match="inter-ocular"):
        normalized_mean_error(torch.zeros(1, 68, 2), torch.zeros(1, 68, 2))


def test_training_reduces_nme_and_is_deterministic():
    images, landmarks = _faces(8)
    dataset = SyntheticFaces(size=32, length=8, seed=0)
    torch.manual_seed(0)
    untrained = LandmarkRegressor(width=8, depth=2)
    before = normalized_mean_error(predict_landmarks(untrained, images), landmarks)
    state = torch.get_rng_state()
    regressor, seconds = train_landmark_regressor(dataset, steps=30, batch_size=4, lr=2e-3, seed=0, width=8, depth=2)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is left alone
    assert not regressor.training and seconds > 0
    after = normalized_mean_error(predict_landmarks(regressor, images), landmarks)
    assert after < before / 4, (float(before), float(after))
    again, _ = train_landmark_regressor(dataset, steps=30, batch_size=4, lr=2e-3, seed=0, width=8, depth=2)
    assert torch.equal(predict_landmarks(again, images), predict_landmarks(regressor, images))


def test_a_wall_clock_budget_alone_stops_training():
    dataset = SyntheticFaces(size=32, length=4, seed=0)
    regressor, seconds = train_landmark_regressor(dataset, steps=None, max_seconds=0.01, batch_size=2, width=4,
                                                  depth=1)
    assert isinstance(regressor, LandmarkRegressor) and 0 < seconds < 30


def test_training_rejects_bad_arguments():
    dataset = SyntheticFaces(size=32, length=2, seed=0)
    with pytest.raises(ValueError, match="steps or max_seconds"):
        train_landmark_regressor(dataset, steps=None)
    with pytest.raises(ValueError, match="steps"):
        train_landmark_regressor(dataset, steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        train_landmark_regressor(dataset, steps=1, batch_size=0)
    with pytest.raises(KeyError, match="landmarks"):
        train_landmark_regressor([{"image": torch.zeros(3, 32, 32)}], steps=1)
