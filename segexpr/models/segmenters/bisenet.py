"""BiSeNet face parser (the face-parsing.PyTorch variant, Yu et al. 2018).

Structure (defaults reproduce face-parsing.PyTorch's channel widths)::

    image -> ResNet-18 (torchvision) -> feat8 (1/8), feat16 (1/16), feat32 (1/32)
    context path:  global context = mean(feat32) -> 1x1 conv, added to ARM(feat32), upsampled,
                   added to ARM(feat16), upsampled to 1/8                  -> cp8, cp16, cp32
    spatial path:  feat8 itself (face-parsing uses the backbone's 1/8 features as the spatial path;
                   ``spatial_stride=4`` uses the 1/4 features instead, for small images)
    fusion:        FFM(concat(feat8, cp8)) -> main head            -> logits (upsampled to H x W)
    auxiliary:     head(cp16), head(cp32)                          -> aux logits (training only)

Differences to face-parsing.PyTorch, chosen for robustness: the global-context and attention branches
use biased 1x1 convolutions instead of BatchNorm on 1x1 maps (so training works with batch size 1),
inputs in ``[-1, 1]`` are converted to ImageNet normalisation internally, and every upsampling targets
the exact size of the finer feature map (so any input size works, not only multiples of 32).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18
from torchvision.models.resnet import BasicBlock, ResNet

from segexpr.models.segmenters.base import Segmenter

__all__ = ["BiSeNet", "resnet18_backbone", "RESNET18_FILENAME"]

#: File name torchvision uses for the ImageNet ResNet-18 weights (``$TORCH_HOME/hub/checkpoints/<name>``).
RESNET18_FILENAME = Path(ResNet18_Weights.IMAGENET1K_V1.url).name

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class _NarrowResNet18(ResNet):
    """torchvision's ResNet-18 (same ``BasicBlock`` and ``_make_layer``) with configurable stage widths."""

    def __init__(self, width: int) -> None:
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(BasicBlock, width, 2)
        self.layer2 = self._make_layer(BasicBlock, width * 2, 2, stride=2)
        self.layer3 = self._make_layer(BasicBlock, width * 4, 2, stride=2)
        self.layer4 = self._make_layer(BasicBlock, width * 8, 2, stride=2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def resnet18_backbone(width: int = 64, pretrained: bool | str | os.PathLike = False) -> ResNet:
    """Build the ResNet-18 context-path backbone; never downloads anything.

    Args:
        width: stem / first-stage width; stages have ``width * (1, 2, 4, 8)`` channels. 64 is the
            standard torchvision ``resnet18``; smaller widths give a narrow net for CPU work.
        pretrained: ``False`` (random init), ``True`` (torchvision's ImageNet weights, read from the torch
            hub cache ``$TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth``), or a path to a ResNet-18
            ``state_dict`` file. Pretrained weights need ``width == 64``.

    Raises:
        FileNotFoundError: ``pretrained`` is ``True`` and the weights are not in the cache, or a path is missing.
        ValueError: invalid ``width``, or pretrained weights requested with ``width != 64``.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"backbone_width must be a positive integer, got {width!r}")
    if pretrained is False or pretrained is None:
        return resnet18(weights=None) if width == 64 else _NarrowResNet18(width)
    if width != 64:
        raise ValueError(f"pretrained ResNet-18 weights exist only for backbone_width=64, got {width}")
    if pretrained is True:
        path = Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_FILENAME
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained_backbone=True needs torchvision's ImageNet ResNet-18 weights at {path}, which do not "
                f"exist, and segexpr never downloads implicitly. Download {ResNet18_Weights.IMAGENET1K_V1.url} on a "
                f"machine with network access and place it there (or point TORCH_HOME at a directory holding "
                f"hub/checkpoints/{RESNET18_FILENAME}), or pass pretrained_backbone='/path/to/resnet18.pth'.")
    else:
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_backbone file {str(path)!r} does not exist; pass a ResNet-18 "
                                    f"state_dict saved with torch.save(model.state_dict(), path)")
    model = resnet18(weights=None)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    model.load_state_dict(state)
    return model


class ConvBNReLU(nn.Sequential):
    """``Conv2d(k, stride 1, same padding, no bias) -> BatchNorm2d -> ReLU``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__(nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class SegHead(nn.Sequential):
    """``ConvBNReLU(3x3) -> Conv2d(1x1)`` producing class logits (face-parsing's ``BiSeNetOutput``)."""

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int) -> None:
        super().__init__(ConvBNReLU(in_ch, mid_ch, 3), nn.Conv2d(mid_ch, num_classes, 1))


class AttentionRefinement(nn.Module):
    """ARM: ``y = f * sigmoid(conv1x1(mean_hw(f)))`` with ``f = ConvBNReLU(x)``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch, 3)
        self.attention = nn.Conv2d(out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.attention(feat.mean((2, 3), keepdim=True)))


class FeatureFusion(nn.Module):
    """FFM: ``f = ConvBNReLU1x1(concat(spatial, context))``; ``y = f + f * SE(f)`` (squeeze ratio 4)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_ch, out_ch, 1)
        self.squeeze = nn.Conv2d(out_ch, max(out_ch // 4, 1), 1)
        self.excite = nn.Conv2d(max(out_ch // 4, 1), out_ch, 1)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.conv(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.excite(F.relu(self.squeeze(feat.mean((2, 3), keepdim=True)))))
        return feat + feat * attention


def _up(x: torch.Tensor, like: torch.Tensor | tuple[int, int]) -> torch.Tensor:
    size = like.shape[-2:] if isinstance(like, torch.Tensor) else like
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class BiSeNet(Segmenter):
    """BiSeNet with a torchvision ResNet-18 context path, as in face-parsing.PyTorch.

    Args:
        num_classes: output classes (19 = CelebAMask-HQ order A).
        backbone_width: ResNet-18 stem width (64 = standard, ImageNet weights available); stage widths
            are ``backbone_width * (1, 2, 4, 8)``.
        context_channels: width of the attention-refinement / context path (face-parsing: 128).
        fusion_channels: width of the feature-fusion module and main head (face-parsing: 256).
        pretrained_backbone: ``False``, ``True`` (torchvision ImageNet weights from the local torch hub
            cache; never downloaded) or a path to a ResNet-18 ``state_dict``; see :func:`resnet18_backbone`.
        spatial_stride: stride of the spatial path, i.e. of the fused features and the main head: 8 (the
            backbone's 1/8 features, as in face-parsing.PyTorch) or 4 (its 1/4 features, ``layer1``: finer
            detail for small images such as 128 px, at a higher cost of the fusion module and head).
        in_channels: must be 3 (the ResNet stem is RGB).

    Shapes:
        input float ``[B, 3, H, W]`` in ``[-1, 1]``, any ``H, W >= 1``; output logits float
        ``[B, num_classes, H, W]``. With ``return_aux=True``: ``SegmenterOutput(logits, (aux16, aux32))``,
        the auxiliary heads on the 1/16 and 1/32 context features, also upsampled to ``H x W``.
    """

    def __init__(
        self,
        num_classes: int = 19,
        backbone_width: int = 64,
        context_channels: int = 128,
        fusion_channels: int = 256,
        pretrained_backbone: bool | str | os.PathLike = False,
        spatial_stride: int = 8,
        in_channels: int = 3,
    ) -> None:
        super().__init__(num_classes, in_channels)
        if in_channels != 3:
            raise ValueError(f"BiSeNet's ResNet-18 backbone takes RGB input (in_channels=3), got {in_channels}")
        for name, value in (("context_channels", context_channels), ("fusion_channels", fusion_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if spatial_stride not in (4, 8):
            raise ValueError(f"spatial_stride must be 4 or 8, got {spatial_stride!r}")
        self.spatial_stride = spatial_stride
        self.backbone = resnet18_backbone(backbone_width, pretrained_backbone)
        self.backbone.fc = nn.Identity()  # unused; keeps the state_dict free of the ImageNet classifier
        w, c = backbone_width, context_channels
        self.arm16 = AttentionRefinement(4 * w, c)
        self.arm32 = AttentionRefinement(8 * w, c)
        self.global_context = nn.Sequential(nn.Conv2d(8 * w, c, 1), nn.ReLU(inplace=True))
        self.head32 = ConvBNReLU(c, c, 3)
        self.head16 = ConvBNReLU(c, c, 3)
        spatial_channels = 2 * w if spatial_stride == 8 else w
        self.ffm = FeatureFusion(spatial_channels + c, fusion_channels)
        self.out = SegHead(fusion_channels, fusion_channels, num_classes)
        self.out16 = SegHead(c, max(c // 2, 1), num_classes)
        self.out32 = SegHead(c, max(c // 2, 1), num_classes)
        # [-1, 1] -> ImageNet normalisation, folded into one affine map: (x + 1) / 2 -> (v - mean) / std
        mean, std = torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
        self.register_buffer("_scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)

    def _forward(self, x: torch.Tensor, return_aux: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        size = x.shape[-2:]
        b = self.backbone
        h = b.maxpool(b.relu(b.bn1(b.conv1(x * self._scale + self._shift))))
        feat4 = b.layer1(h)
        feat8 = b.layer2(feat4)
        feat16 = b.layer3(feat8)
        feat32 = b.layer4(feat16)

        context = self.global_context(feat32.mean((2, 3), keepdim=True))
        cp32 = self.head32(_up(self.arm32(feat32) + context, feat16))
        cp16 = self.head16(_up(self.arm16(feat16) + cp32, feat8))
        if self.spatial_stride == 8:
            fused = self.ffm(feat8, cp16)
        else:
            fused = self.ffm(feat4, _up(cp16, feat4))
        logits = _up(self.out(fused), size)
        if not return_aux:
            return logits, ()
        return logits, (_up(self.out16(cp16), size), _up(self.out32(cp32), size))
