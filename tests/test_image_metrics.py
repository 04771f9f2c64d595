"""Pixel metrics: PSNR/SSIM/L1 against ground truth, unwanted change, expression area."""
import math

import pytest
import torch

from segexpr.data.labels import CLASS_INDEX
from segexpr.metrics import GroundTruthMetrics, UnwantedChange, expression_area
from segexpr.ops.regions import hard_regions


def _images(b=2, size=32):
    return torch.rand(b, 3, size, size) * 1.6 - 0.8  # in [-0.8, 0.8], room for offsets


def test_identical_images_give_inf_psnr_unit_ssim_zero_l1():
    x = _images()
    metrics = GroundTruthMetrics()
    metrics.update(x, x.clone())
    out = metrics.compute()
    assert set(out) == {"psnr", "ssim", "l1"}
    assert math.isinf(out["psnr"].item()) and out["psnr"].item() > 0
    assert out["ssim"].item() == pytest.approx(1.0, abs=1e-5)
    assert out["l1"].item() == 0.0


def test_known_offset_gives_known_psnr_and_l1():
    x = _images()
    metrics = GroundTruthMetrics(prefix="gt/")
    metrics.update(x + 0.1, x)
    out = metrics.compute()
    # MSE = 0.01, data range 2 -> 10 log10(4 / 0.01)
    assert out["gt/psnr"].item() == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-3)
    assert out["gt/l1"].item() == pytest.approx(0.1, abs=1e-5)
    assert out["gt/ssim"].item() < 1.0


def test_psnr_pools_mse_over_batches_and_forward_returns_batch_value():
    x = _images(4)
    metrics = GroundTruthMetrics()
    first = metrics(x[:2], x[:2])  # identical batch -> inf
    second = metrics(x[2:] + 0.2, x[2:])
    assert math.isinf(first["psnr"].item())
    assert second["psnr"].item() == pytest.approx(10 * math.log10(4 / 0.04), abs=1e-3)
    # pooled MSE over both batches: (0 + 0.04) / 2
    assert metrics.compute()["psnr"].item() == pytest.approx(10 * math.log10(4 / 0.02), abs=1e-3)
    metrics.reset()
    metrics.update(x, x)
    assert math.isinf(metrics.compute()["psnr"].item())


@pytest.mark.parametrize(
    "preds, target, message",
    [
        (torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 16, 16), "same shape"),
        (torch.full((2, 3, 32, 32), 200.0), torch.zeros(2, 3, 32, 32), r"\[-1, 1\]"),
        (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, 3, 32, 32), "float"),
        (torch.zeros(2, 1, 32, 32), torch.zeros(2, 1, 32, 32), r"\[B, 3, H, W\]"),
        (torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), "11 px"),
    ],
)
def test_ground_truth_metrics_reject_bad_inputs(preds, target, message):
    with pytest.raises(ValueError, match=message):
        GroundTruthMetrics().update(preds, target)


def test_unwanted_change_is_zero_for_identical_and_for_changes_inside_the_area():
    source = _images()
    changeable = torch.zeros(2, 32, 32, dtype=torch.bool)
    changeable[:, 10:20, 8:24] = True
    metric = UnwantedChange()
    metric.update(source, source.clone(), changeable)
    assert metric.compute().item() == 0.0

    edited = source.clone()
    edited[:, :, 10:20, 8:24] += 0.15  # only inside the changeable area
    metric.reset()
    metric.update(source, edited, changeable)
    assert metric.compute().item() == 0.0


def test_unwanted_change_measures_mean_l1_outside_the_area_only():
    source = _images(1) * 0.5  # in [-0.4, 0.4]
    changeable = torch.zeros(1, 32, 32, dtype=torch.bool)
    changeable[:, :16] = True  # top half may change
    edited = source.clone()
    edited[:, :, :16] -= 0.5  # big allowed change
    edited[:, 0, 16:] += 0.3  # unwanted change, red channel only, bottom half
    metric = UnwantedChange()
    metric.update(source, edited, changeable)
    # outside pixels: |0.3| on 1 of 3 channels -> 0.1 per pixel
    assert metric.compute().item() == pytest.approx(0.1, abs=1e-6)


def test_unwanted_change_states_merge_like_ddp():
    source, edited = _images(4), _images(4)
    changeable = torch.rand(4, 32, 32) > 0.6
    full = UnwantedChange()
    full.update(source, edited, changeable)
    a, b = UnwantedChange(), UnwantedChange()
    a.update(source[:1], edited[:1], changeable[:1])
    b.update(source[1:], edited[1:], changeable[1:])
    a.merge_state(b)
    assert a.compute().item() == pytest.approx(full.compute().item(), abs=1e-7)


def test_unwanted_change_rejects_bad_masks():
    x = _images()
    metric = UnwantedChange()
    with pytest.raises(ValueError, match="bool"):
        metric.update(x, x, torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        metric.update(x, x, torch.zeros(2, 16, 16, dtype=torch.bool))
    metric.update(x, x, torch.ones(2, 32, 32, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="no unchangeable pixel"):
        metric.compute()


def _face_mask():
    mask = torch.full((2, 32, 32), CLASS_INDEX["skin"], dtype=torch.long)
    mask[:, 8, 8] = CLASS_INDEX["l_brow"]
    mask[:, 24, 16] = CLASS_INDEX["u_lip"]
    mask[:, 0:4, :] = CLASS_INDEX["hair"]
    return mask


def test_expression_area_without_dilation_is_the_region_union():
    mask = _face_mask()
    area = expression_area(mask, dilation=0)
    assert area.dtype == torch.bool and area.shape == (2, 32, 32)
    assert torch.equal(area, hard_regions(mask).amax(1) > 0)
    assert area.sum().item() == 2 * 2  # two labelled pixels per image


def test_expression_area_dilates_by_the_given_radius():
    mask = _face_mask()[0]  # [H, W] input keeps its rank
    area = expression_area(mask, dilation=2)
    assert area.shape == (32, 32)
    assert area.sum().item() == 2 * 25  # two disjoint 5x5 squares
    assert area[6:11, 6:11].all() and not area[5, 8] and not area[8, 11]
    assert not expression_area(torch.zeros(32, 32, dtype=torch.long), dilation=3).any()
    with pytest.raises(ValueError, match="dilation"):
        expression_area(mask, dilation=-1)
    with pytest.raises(ValueError, match="integer class map"):
        expression_area(mask.float())


def test_strided_inputs_are_accepted():
    """Slices and permuted views (as benchmark code produces them) give the same values as contiguous copies."""
    from segexpr.metrics.image import GroundTruthMetrics

    torch.manual_seed(0)
    base = torch.rand(8, 3, 16, 16) * 2 - 1
    preds, target = base[::2], (torch.rand(4, 3, 16, 16) * 2 - 1).permute(0, 1, 3, 2)
    strided = GroundTruthMetrics()(preds, target)
    contiguous = GroundTruthMetrics()(preds.contiguous(), target.contiguous())
    assert all(torch.allclose(strided[k], contiguous[k]) for k in contiguous)
