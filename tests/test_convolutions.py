"""segexpr.ops.convolutions: fast forms of plain layers must be the same function (values and gradients)."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from segexpr.ops.convolutions import conv2d_channels_last, upsample_conv3x3


def plain(x, weight, bias=None):
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)


@pytest.mark.parametrize("height, width, bias", [(7, 6, True), (4, 4, False), (1, 3, True)])
def test_upsample_conv3x3_is_nearest_upsample_then_conv(height, width, bias):
    torch.manual_seed(0)
    x = torch.randn(2, 5, height, width, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    expected, got = plain(x, weight, b), upsample_conv3x3(x, weight, b)
    assert got.shape == (2, 4, 2 * height, 2 * width)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    upstream = torch.randn_like(expected)
    inputs = (x, weight) + ((b,) if bias else ())
    for g_got, g_expected in zip(torch.autograd.grad(got, inputs, upstream),
                                 torch.autograd.grad(expected, inputs, upstream)):
        torch.testing.assert_close(g_got, g_expected, rtol=0, atol=1e-12)


def test_upsample_conv3x3_under_vmap_is_one_call_per_weight():
    # the local generators run their decoders under vmap with one weight per region
    torch.manual_seed(1)
    xs = torch.randn(3, 2, 4, 5, 6, dtype=torch.float64)
    weights = torch.randn(3, 7, 4, 3, 3, dtype=torch.float64)
    expected = torch.stack([plain(xs[i], weights[i]) for i in range(3)])
    torch.testing.assert_close(vmap(upsample_conv3x3)(xs, weights), expected, rtol=0, atol=1e-12)


def test_upsample_conv3x3_keeps_autocast_behaviour():
    torch.manual_seed(2)
    x, weight = torch.randn(1, 4, 5, 5), torch.randn(3, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, expected = upsample_conv3x3(x, weight), plain(x, weight)
    assert got.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.05, atol=0.1)


@pytest.mark.parametrize("x_shape, w_shape, message", [
    ((1, 4, 5, 5), (3, 4, 5, 5), "3x3 weight"),
    ((1, 2, 5, 5), (3, 4, 3, 3), r"input \[B, 4, H, W\]"),
    ((4, 5, 5), (3, 4, 3, 3), r"input \[B, 4, H, W\]"),
])
def test_upsample_conv3x3_rejects_wrong_shapes(x_shape, w_shape, message):
    with pytest.raises(ValueError, match=message):
        upsample_conv3x3(torch.zeros(x_shape), torch.zeros(w_shape))


@pytest.mark.parametrize("padding, bias", [(3, True), (1, False), ((2, 0), True)])
def test_conv2d_channels_last_is_conv2d(padding, bias):
    torch.manual_seed(3)
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, 7, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    got, expected = conv2d_channels_last(x, weight, b, padding), F.conv2d(x, weight, b, padding=padding)
    assert got.is_contiguous()  # handed back in the default layout, whatever it computed in
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    upstream = torch.randn_like(expected)
    inputs = (x, weight) + ((b,) if bias else ())
    for g_got, g_expected in zip(torch.autograd.grad(got, inputs, upstream),
                                 torch.autograd.grad(expected, inputs, upstream)):
        assert g_got.shape == g_expected.shape
        torch.testing.assert_close(g_got, g_expected, rtol=0, atol=1e-10)


def test_conv2d_channels_last_under_vmap_is_plain_conv2d():
    # the local generators' heads run under vmap (one weight per region, a grouped convolution)
    torch.manual_seed(4)
    xs, weights = torch.randn(3, 2, 4, 6, 6, dtype=torch.float64), torch.randn(3, 2, 4, 3, 3, dtype=torch.float64)
    expected = torch.stack([F.conv2d(xs[i], weights[i], padding=1) for i in range(3)])
    got = vmap(lambda x, w: conv2d_channels_last(x, w, padding=1))(xs, weights)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
