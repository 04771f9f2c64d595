"""face-parsing.PyTorch's BiSeNet, key-for-key, so its ``79999_iter.pth`` checkpoint loads strictly.

This is a re-implementation of the BiSeNet face parser of face-parsing.PyTorch
(https://github.com/zllrunning/face-parsing.PyTorch, MIT licence, (c) 2019 zll); no code is copied, but
module names, widths and the forward pass follow the reference exactly so that ``state_dict()`` has the
reference's keys (``cp.resnet.conv1.weight``, ``cp.arm16.conv.conv.weight``, ``ffm.convblk.bn.bias``,
``conv_out.conv_out.weight``, ...). Checkpoints of that project (e.g. ``79999_iter.pth``, 19 classes,
CelebAMask-HQ order A) are MIT-licenced by their authors; none is shipped or downloaded here.

Structure (as in the reference)::

    image -> ResNet-18 (cp.resnet) -> feat8 (1/8, 128 ch), feat16 (1/16, 256), feat32 (1/32, 512)
    cp:   avg = ConvBNReLU1x1(mean(feat32))                      (BatchNorm on a 1x1 map)
          cp16 = ConvBNReLU(nearest_up(ARM(feat32) + avg -> feat16 size))      (1/16)
          cp8  = ConvBNReLU(nearest_up(ARM(feat16) + cp16 -> feat8 size))      (1/8)
    ffm:  FFM(concat(feat8, cp8))   (feat8 replaces the spatial path)
    heads: conv_out(ffm) -> logits; conv_out16(cp8) -> aux16; conv_out32(cp16) -> aux32,
           each bilinearly upsampled (align_corners=True) to H x W.

Note the reference's naming: ``aux16``/``conv_out16`` sees the 1/8 context features and ``aux32``/
``conv_out32`` the 1/16 ones. Differences to the reference: inputs are in ``[-1, 1]`` (converted to
ImageNet normalisation inside), the ResNet starts from random weights (the reference fetches ImageNet
weights at construction; load a full checkpoint with :func:`load_face_parsing_checkpoint` instead), and
the 1x1 ``conv_avg`` broadcast replaces an equivalent nearest upsampling of a 1x1 map. Any ``H, W`` works
(the reference's upsampling targets the exact finer feature size, so it does not need multiples of 32
either). As in the reference, the BatchNorms on 1x1 maps (``conv_avg``, ARM attention) need a batch
size > 1 in training mode.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from segexpr.models.segmenters.base import Segmenter
from segexpr.models.segmenters.bisenet import _IMAGENET_MEAN, _IMAGENET_STD, resnet18_backbone

__all__ = ["FaceParsingBiSeNet", "load_face_parsing_checkpoint"]


def _init_conv(conv: nn.Conv2d) -> None:
    nn.init.kaiming_normal_(conv.weight, a=1)  # the reference's init for all non-backbone convolutions
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _ConvBNReLU(nn.Module):
    """``relu(bn(conv(x)))``, bias-free ``k x k`` conv with same padding; keys ``conv``, ``bn``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        _init_conv(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class _Head(nn.Module):
    """``BiSeNetOutput``: ``ConvBNReLU3x3(in -> mid) -> Conv1x1(mid -> classes, no bias)``."""

    def __init__(self, in_ch: int, mid_ch: int, num_classes: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(in_ch, mid_ch, 3)
        self.conv_out = nn.Conv2d(mid_ch, num_classes, 1, bias=False)
        _init_conv(self.conv_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.conv(x))


class _AttentionRefinement(nn.Module):
    """ARM: ``f = ConvBNReLU(x)``; ``y = f * sigmoid(BN(conv1x1(mean_hw(f))))``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = _ConvBNReLU(in_ch, out_ch, 3)
        self.conv_atten = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(out_ch)
        _init_conv(self.conv_atten)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv(x)
        return feat * torch.sigmoid(self.bn_atten(self.conv_atten(feat.mean((2, 3), keepdim=True))))


class _FeatureFusion(nn.Module):
    """FFM: ``f = ConvBNReLU1x1(concat(spatial, context))``; ``y = f + f * sigmoid(conv2(relu(conv1(mean(f)))))``."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.convblk = _ConvBNReLU(in_ch, out_ch, 1)
        self.conv1 = nn.Conv2d(out_ch, out_ch // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(out_ch // 4, out_ch, 1, bias=False)
        _init_conv(self.conv1)
        _init_conv(self.conv2)

    def forward(self, spatial: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(feat.mean((2, 3), keepdim=True)))))
        return feat + feat * attention


class _ContextPath(nn.Module):
    """ResNet-18 plus the ARMs and heads; returns ``(feat8, cp8, cp16)`` at strides 8, 8, 16."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = resnet18_backbone(64)  # torchvision's ResNet-18 has the reference's block keys
        del self.resnet.fc, self.resnet.avgpool  # the reference's backbone has no classifier
        self.arm16 = _AttentionRefinement(256, 128)
        self.arm32 = _AttentionRefinement(512, 128)
        self.conv_head32 = _ConvBNReLU(128, 128, 3)
        self.conv_head16 = _ConvBNReLU(128, 128, 3)
        self.conv_avg = _ConvBNReLU(512, 128, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r = self.resnet
        feat8 = r.layer2(r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x))))))
        feat16 = r.layer3(feat8)
        feat32 = r.layer4(feat16)
        avg = self.conv_avg(feat32.mean((2, 3), keepdim=True))  # broadcast == nearest upsampling of 1x1
        cp16 = self.conv_head32(F.interpolate(self.arm32(feat32) + avg, feat16.shape[-2:], mode="nearest"))
        cp8 = self.conv_head16(F.interpolate(self.arm16(feat16) + cp16, feat8.shape[-2:], mode="nearest"))
        return feat8, cp8, cp16


def _up(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class FaceParsingBiSeNet(Segmenter):
    """face-parsing.PyTorch's ``BiSeNet(n_classes)`` with its exact ``state_dict`` keys (~13.3M parameters).

    Args:
        num_classes: output classes (19 = CelebAMask-HQ order A, as in ``79999_iter.pth``); other values
            change only the three heads' last 1x1 convolutions (which then do not load from a 19-class file).
        in_channels: must be 3 (RGB).

    Shapes:
        input float ``[B, 3, H, W]`` in ``[-1, 1]``, any ``H, W >= 1``; output logits float
        ``[B, num_classes, H, W]``. With ``return_aux=True``: ``SegmenterOutput(logits, (aux16, aux32))``,
        the reference's ``feat_out16``/``feat_out32``, also at ``H x W``.
    """

    def __init__(self, num_classes: int = 19, in_channels: int = 3) -> None:
        super().__init__(num_classes, in_channels)
        if in_channels != 3:
            raise ValueError(f"FaceParsingBiSeNet takes RGB input (in_channels=3), got {in_channels}")
        self.cp = _ContextPath()
        self.ffm = _FeatureFusion(256, 256)
        self.conv_out = _Head(256, 256, num_classes)
        self.conv_out16 = _Head(128, 64, num_classes)
        self.conv_out32 = _Head(128, 64, num_classes)
        # [-1, 1] -> ImageNet normalisation, folded into one affine map: (x + 1) / 2 -> (v - mean) / std
        mean, std = torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
        self.register_buffer("_scale", (0.5 / std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", ((0.5 - mean) / std).view(1, 3, 1, 1), persistent=False)

    def _forward(self, x: torch.Tensor, return_aux: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        size = x.shape[-2:]
        feat8, cp8, cp16 = self.cp(x * self._scale + self._shift)
        logits = _up(self.conv_out(self.ffm(feat8, cp8)), size)
        if not return_aux:
            return logits, ()
        return logits, (_up(self.conv_out16(cp8), size), _up(self.conv_out32(cp16), size))


def _first(names: list[str], n: int = 10) -> str:
    shown = ", ".join(names[:n])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > n else shown


def _error_detail(err: Exception) -> str:
    """The cause in a ``torch.load`` error, without torch's advice to reload with ``weights_only=False``."""
    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(.*?)(?: was not an allowed global| Please|\n\n|$)", text, re.S)
    if found:
        return found.group(1).strip()
    first = text.splitlines()[0] if text else ""
    return "" if "weights_only" in first or "weights only" in first.lower() else first


def load_face_parsing_checkpoint(
    path: str | os.PathLike,
    model: FaceParsingBiSeNet | None = None,
    map_location: str | torch.device | None = "cpu",
) -> FaceParsingBiSeNet:
    """Load a face-parsing.PyTorch checkpoint (e.g. ``79999_iter.pth``) strictly into a :class:`FaceParsingBiSeNet`.

    The file is read with ``torch.load(weights_only=True)`` (tensors only, no arbitrary code). It may hold a
    plain ``state_dict`` (as the reference's ``train.py`` saves) or a dict with a ``"state_dict"`` entry; a
    ``module.`` prefix (``DataParallel``/DDP saves) is stripped. Every key and shape must match.

    Args:
        path: checkpoint file.
        model: the model to load into (its mode is left unchanged). ``None`` builds a new one with
            ``num_classes`` taken from the checkpoint's ``conv_out.conv_out.weight``, returned in eval mode.
        map_location: passed to ``torch.load``.

    Returns:
        The model with the checkpoint's weights.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file cannot be read as a tensor-only checkpoint, or its keys/shapes do not match the
            model (the message names the file and up to 10 missing, unexpected and mismatched keys).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"face-parsing checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _error_detail(err)
        if detail.startswith("Unsupported global"):
            reason = (f"it holds Python objects other than tensors and plain containers ({detail}), which are not "
                      f"unpickled for safety; re-save the weights alone with torch.save(model.state_dict(), path)")
        else:
            reason = f"not a valid torch.save file, corrupt or truncated (UnpicklingError: {detail})"
        raise ValueError(f"cannot read face-parsing checkpoint {str(path)!r}: {reason}") from None
    except Exception as err:  # noqa: BLE001 - zip/pickle/EOF errors of a corrupt or foreign file
        raise ValueError(f"cannot read face-parsing checkpoint {str(path)!r}: not a valid torch.save file, "
                         f"corrupt or truncated ({type(err).__name__}: {_error_detail(err)})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"face-parsing checkpoint {str(path)!r} is not a state_dict (a dict of tensors, or a dict "
                         f"with a 'state_dict' entry); got {type(state).__name__}")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}

    if model is None:
        head = state.get("conv_out.conv_out.weight")
        num_classes = int(head.shape[0]) if head is not None and head.dim() == 4 and head.shape[0] >= 2 else 19
        model = FaceParsingBiSeNet(num_classes=num_classes).eval()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
                  for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or mismatched:
        problems = [f"{label} keys [{_first(keys)}]" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)) if keys]
        raise ValueError(f"face-parsing checkpoint {str(path)!r} does not match {type(model).__name__}"
                         f"(num_classes={model.num_classes}): " + "; ".join(problems))
    model.load_state_dict(state, strict=True)
    return model
