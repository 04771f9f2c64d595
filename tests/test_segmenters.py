"""Face-parsing networks: shapes at odd sizes, aux heads, gradients through soft_regions, errors."""
from __future__ import annotations

import pytest
import torch

from segexpr.data.labels import REGION_GROUPS
from segexpr.ops.regions import soft_regions
from segexpr.models.segmenters import (BiSeNet, SegmenterOutput, UNet, create_segmenter, list_segmenters)
from segexpr.models.segmenters.bisenet import RESNET18_FILENAME, resnet18_backbone

SMALL = {
    "bisenet": dict(backbone_width=8, context_channels=16, fusion_channels=16),
    "bisenet_s4": dict(backbone_width=8, context_channels=16, fusion_channels=16, spatial_stride=4),
    "unet": dict(base_channels=8, depth=3),
}


def test_registry():
    assert list_segmenters() == ["bisenet", "unet"]
    assert isinstance(create_segmenter("BiSeNet", **SMALL["bisenet"]), BiSeNet)
    assert isinstance(create_segmenter("unet", **SMALL["unet"]), UNet)


@pytest.mark.parametrize("arch", ["bisenet", "bisenet_s4", "unet"])
@pytest.mark.parametrize("size", [(37, 53), (64, 48), (1, 1), (9, 70)])
def test_output_matches_input_size(arch, size):
    net = create_segmenter(arch.split("_")[0], num_classes=19, **SMALL[arch]).eval()
    x = torch.rand(2, 3, *size) * 2 - 1
    logits = net(x)
    assert logits.shape == (2, 19, *size)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    out = net(x, return_aux=True)
    assert isinstance(out, SegmenterOutput)
    torch.testing.assert_close(out.logits, logits)
    assert len(out.aux) == (2 if arch.startswith("bisenet") else 0)
    assert all(a.shape == (2, 19, *size) for a in out.aux)
    assert net.predict(x).shape == (2, *size) and net.predict(x).dtype == torch.int64


def test_unet_crop_is_consistent_with_padded_input():
    """The padded-and-cropped result equals running the net on an already divisible input."""
    net = UNet(num_classes=5, base_channels=4, depth=2).eval()
    x = torch.rand(1, 3, 16, 20)
    torch.testing.assert_close(net(x), net(x))  # deterministic
    # a 14x18 input is padded by one replicated pixel on each side to 16x20
    inner = x[:, :, 1:15, 1:19]
    padded = torch.nn.functional.pad(inner, (1, 1, 1, 1), mode="replicate")
    torch.testing.assert_close(net(inner), net(padded)[:, :, 1:15, 1:19])


def test_default_widths_match_face_parsing():
    """Default BiSeNet is face-parsing.PyTorch's size (~13.3M parameters with a 19-class head)."""
    net = BiSeNet(num_classes=19)
    n = sum(p.numel() for p in net.parameters())
    assert 13.0e6 < n < 13.6e6


@pytest.mark.parametrize("arch", ["bisenet", "bisenet_s4", "unet"])
def test_gradients_reach_parameters_through_soft_regions(arch):
    net = create_segmenter(arch.split("_")[0], **SMALL[arch]).train()
    x = torch.rand(2, 3, 40, 36) * 2 - 1
    regions = soft_regions(net(x), REGION_GROUPS)
    assert regions.shape == (2, 4, 40, 36)
    (regions * torch.rand_like(regions)).sum().backward()
    params = [p for p in net.parameters() if p.requires_grad]
    main_path = [p for name, p in net.named_parameters() if not name.startswith(("out16", "out32"))]
    assert all(p.grad is not None for p in main_path)
    assert sum(float(p.grad.abs().sum()) for p in main_path) > 0
    # the first convolution (deepest in the graph) gets a non-zero gradient
    first = net.backbone.conv1.weight if arch.startswith("bisenet") else net.stem[0].weight
    assert float(first.grad.abs().sum()) > 0
    assert len(params) >= len(main_path)


def test_bisenet_aux_heads_trainable_with_batch_one():
    net = BiSeNet(num_classes=19, **SMALL["bisenet"]).train()
    out = net(torch.rand(1, 3, 33, 33), return_aux=True)
    (out.logits.sum() + sum(a.sum() for a in out.aux)).backward()
    assert net.out16[1].weight.grad is not None and net.out32[1].weight.grad is not None


@pytest.mark.parametrize("bad", [torch.rand(3, 32, 32), torch.rand(1, 1, 32, 32), torch.rand(1, 4, 32, 32),
                                 torch.zeros(1, 3, 32, 32, dtype=torch.long), torch.rand(0, 3, 8, 8)])
@pytest.mark.parametrize("arch", ["bisenet", "unet"])
def test_bad_inputs_raise(arch, bad):
    net = create_segmenter(arch, **SMALL[arch])
    with pytest.raises((ValueError, TypeError), match=r"expects|input|empty"):
        net(bad)


def test_bad_construction_raises():
    with pytest.raises(ValueError, match="unknown segmenter 'segformer'"):
        create_segmenter("segformer")
    with pytest.raises(ValueError, match="num_classes"):
        create_segmenter("unet", num_classes=1)
    with pytest.raises(ValueError, match="num_classes"):
        create_segmenter("bisenet", num_classes=2.5)
    with pytest.raises(ValueError, match="depth"):
        UNet(depth=0)
    with pytest.raises(ValueError, match="base_channels"):
        UNet(base_channels=-4)
    with pytest.raises(ValueError, match="backbone_width"):
        BiSeNet(backbone_width=0)
    with pytest.raises(ValueError, match="spatial_stride"):
        BiSeNet(spatial_stride=2)
    with pytest.raises(ValueError, match="in_channels=3"):
        BiSeNet(in_channels=1)
    with pytest.raises(TypeError, match="accepted options"):
        create_segmenter("unet", backbone_width=16)


def test_pretrained_backbone_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    with pytest.raises(FileNotFoundError, match="TORCH_HOME"):
        BiSeNet(pretrained_backbone=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BiSeNet(pretrained_backbone=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="backbone_width=64"):
        BiSeNet(pretrained_backbone=True, backbone_width=32)


def test_pretrained_backbone_from_local_file(tmp_path, monkeypatch):
    reference = resnet18_backbone(64)
    path = tmp_path / "r18.pth"
    torch.save(reference.state_dict(), path)
    net = BiSeNet(pretrained_backbone=str(path))
    torch.testing.assert_close(net.backbone.conv1.weight, reference.conv1.weight)
    # True reads torchvision's cache file under $TORCH_HOME/hub/checkpoints
    cache = tmp_path / "home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / RESNET18_FILENAME)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    net = BiSeNet(pretrained_backbone=True)
    torch.testing.assert_close(net.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
