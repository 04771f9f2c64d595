"""Global generator: StarGAN/GANimation encoder, code-modulated residual bottleneck, colour + attention heads."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from segexpr.ops.convolutions import conv2d_channels_last, upsample_conv3x3


@dataclass
class GlobalOutput:
    """Output of :class:`GlobalGenerator`.

    Attributes:
        image: edited image ``[B, 3, H, W]`` in ``[-1, 1]``: ``attention * input + (1 - attention) * color``.
        color: colour regression ``[B, 3, H, W]`` in ``[-1, 1]`` (tanh).
        attention: ``[B, 1, H, W]`` in ``[0, 1]`` (sigmoid); how much of the *input* each pixel keeps.
        au_free: the AU-free feature map ``[B, C, ceil(H / 2**n_down), ceil(W / 2**n_down)]``.
    """

    image: torch.Tensor
    color: torch.Tensor
    attention: torch.Tensor
    au_free: torch.Tensor


class FiLMResidualBlock(nn.Module):
    """Residual block whose two normalisations are modulated by the expression code (AdaIN-style).

    ``x + conv(relu(film(norm(conv(relu(film(norm(conv(x))))))))``-shaped; ``norm`` is InstanceNorm without
    affine parameters, and the per-channel scale/shift come from the code: ``(1 + gamma(code)) * x + beta(code)``.
    ``gamma``/``beta`` start small, so an untrained block is close to a plain InstanceNorm residual block.

    Args:
        channels: feature channels ``C``.
        code_dim: code size.

    Shapes: ``x`` ``[B, C, h, w]``, ``code`` ``[B, code_dim]`` -> ``[B, C, h, w]``.
    """

    def __init__(self, channels: int, code_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm1 = nn.InstanceNorm2d(channels, affine=False)
        self.norm2 = nn.InstanceNorm2d(channels, affine=False)
        self.film = nn.Linear(code_dim, 4 * channels)
        # Small weights, zero bias: an untrained block is close to a plain InstanceNorm residual block, yet the
        # code already moves the output (zero weights would also zero the code's gradient at the first step).
        nn.init.normal_(self.film.weight, std=0.02)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        gamma1, beta1, gamma2, beta2 = self.film(code)[:, :, None, None].chunk(4, dim=1)
        h = F.relu((1 + gamma1) * self.norm1(self.conv1(x)) + beta1)
        h = (1 + gamma2) * self.norm2(self.conv2(h)) + beta2
        return x + h


def _conv_in_relu(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False),
        nn.InstanceNorm2d(out_channels, affine=True),
        nn.ReLU(inplace=True),
    )


class GlobalGenerator(nn.Module):
    """Whole-face generator in the StarGAN / GANimation lineage.

    ``encode`` (7x7 conv, then ``n_down`` stride-2 4x4 convs, InstanceNorm(affine) + ReLU) gives the
    **AU-free** feature map, which depends on the image only. ``decode`` runs ``n_res`` residual blocks
    modulated by the expression code (FiLM / AdaIN-style), ``n_down`` upsampling stages (nearest x2 + 3x3
    conv, which avoids transposed-conv checkerboards) and two 7x7 heads: colour (tanh) and attention
    (sigmoid). The output follows GANimation: ``image = attention * input + (1 - attention) * color``.

    Why modulation in the bottleneck rather than StarGAN's label tiled onto the input: the encoder must stay
    independent of the target so its output is a genuine AU-free feature (the feature-level adversarial
    classifier and the swap-consistency loss act on it), and a 64-d continuous code injected at every
    residual block steers the decoder far more strongly than extra input channels do.

    Any ``H, W`` works: the input is replicate-padded at the bottom/right to a multiple of ``2**n_down`` and
    the decoded maps are cropped back. The bottleneck must keep more than one pixel (InstanceNorm needs
    spatial statistics), so ``H * W`` must exceed ``(2**n_down)**2`` roughly; smaller inputs raise an error.

    Args:
        in_channels: image channels (3).
        base_channels: width after the first conv; the bottleneck has ``base_channels * 2**n_down``.
        n_down: number of stride-2 stages (and upsampling stages).
        n_res: number of code-modulated residual blocks.
        code_dim: expression code size (see :class:`~segexpr.models.generators.codes.ExpressionCoder`).
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        n_down: int = 2,
        n_res: int = 6,
        code_dim: int = 64,
    ) -> None:
        super().__init__()
        for name, value, low in (("in_channels", in_channels, 1), ("base_channels", base_channels, 1),
                                 ("n_down", n_down, 0), ("n_res", n_res, 0), ("code_dim", code_dim, 1)):
            if value < low:
                raise ValueError(f"{type(self).__name__}: {name} must be >= {low}, got {value}")
        self.in_channels = in_channels
        self.n_down = n_down
        self.code_dim = code_dim
        self.au_free_channels = base_channels * 2 ** n_down

        layers = [_conv_in_relu(in_channels, base_channels, 7, 1, 3)]
        channels = base_channels
        for _ in range(n_down):
            layers.append(_conv_in_relu(channels, channels * 2, 4, 2, 1))
            channels *= 2
        self.encoder = nn.Sequential(*layers)

        self.bottleneck = nn.ModuleList(FiLMResidualBlock(channels, code_dim) for _ in range(n_res))

        up: list[nn.Module] = []
        for _ in range(n_down):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), _conv_in_relu(channels, channels // 2, 3, 1, 1)]
            channels //= 2
        self.decoder = nn.Sequential(*up)
        self.color_head = nn.Conv2d(channels, in_channels, 7, 1, 3)
        self.attention_head = nn.Conv2d(channels, 1, 7, 1, 3)

    @property
    def downsampling(self) -> int:
        """Total stride of the encoder, ``2**n_down``."""
        return 2 ** self.n_down

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """AU-free features: ``[B, in_channels, H, W]`` -> ``[B, C, ceil(H / 2**n_down), ceil(W / 2**n_down)]``."""
        if image.dim() != 4 or image.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}.encode expects images [B, {self.in_channels}, H, W], "
                             f"got shape {tuple(image.shape)}")
        height, width = image.shape[-2:]
        step = self.downsampling
        pad_h, pad_w = -height % step, -width % step
        if (height + pad_h) * (width + pad_w) <= step * step:
            raise ValueError(f"{type(self).__name__}: image {height}x{width} is too small for n_down="
                             f"{self.n_down}; the bottleneck needs more than one pixel")
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
        return self.encoder(image)

    def decode(
        self, au_free: torch.Tensor, code: torch.Tensor, out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour and attention from AU-free features and a code.

        Args:
            au_free: ``[B, C, h, w]`` from :meth:`encode` (possibly of another image: that is a transfer).
            code: ``[B, code_dim]``.
            out_size: ``(H, W)`` of the original image; must satisfy ``ceil(H / 2**n_down) == h`` (same for W).

        Returns:
            ``(color [B, 3, H, W] in [-1, 1], attention [B, 1, H, W] in [0, 1])``.
        """
        if au_free.dim() != 4 or au_free.shape[1] != self.au_free_channels:
            raise ValueError(f"{type(self).__name__}.decode expects au_free [B, {self.au_free_channels}, h, w], "
                             f"got shape {tuple(au_free.shape)}")
        if code.dim() != 2 or code.shape != (au_free.shape[0], self.code_dim):
            raise ValueError(f"{type(self).__name__}.decode expects code [{au_free.shape[0]}, {self.code_dim}], "
                             f"got shape {tuple(code.shape)}")
        height, width = int(out_size[0]), int(out_size[1])
        step = self.downsampling
        expected = (-(-height // step), -(-width // step))
        if tuple(au_free.shape[-2:]) != expected:
            raise ValueError(f"out_size {(height, width)} needs au_free of spatial size {expected}, "
                             f"got {tuple(au_free.shape[-2:])}")
        h = au_free
        for block in self.bottleneck:
            h = block(h, code)
        # Each upsampling stage is (nearest x2, 3x3 conv, InstanceNorm, ReLU); the first two run as one
        # convolution on the low-resolution map (upsample_conv3x3: the same function without the 4x larger
        # upsampled tensor); the modules stay as they are, so parameters and checkpoints are unchanged.
        for stage in range(0, len(self.decoder), 2):
            conv, norm, relu = self.decoder[stage + 1]
            h = relu(norm(upsample_conv3x3(h, conv.weight, conv.bias)))
        # Both heads as one convolution (their weights concatenated, so the parameters and state dict stay two
        # heads): a 7x7 convolution with 3 or 1 output channels is launch-bound, and on a CPU the pair cost twice
        # one 4-channel convolution (4x for the regions' grouped heads); each output channel is unchanged.
        weight = torch.cat([self.color_head.weight, self.attention_head.weight])
        bias = torch.cat([self.color_head.bias, self.attention_head.bias])
        # In channels-last memory on a CPU (conv2d_channels_last): these wide few-channel 7x7 convolutions are the
        # step's costliest per call there.
        heads = conv2d_channels_last(h, weight, bias, padding=self.color_head.padding)[..., :height, :width]
        color = torch.tanh(heads[:, :self.in_channels])
        attention = torch.sigmoid(heads[:, self.in_channels:])
        return color, attention

    def forward(self, image: torch.Tensor, code: torch.Tensor, au_free: torch.Tensor | None = None) -> GlobalOutput:
        """Edit ``image`` ``[B, 3, H, W]`` in ``[-1, 1]`` toward ``code`` ``[B, code_dim]``.

        ``au_free``: ``encode(image)`` when the caller already has it (several codes applied to the same images
        encode them once); it must be the features of ``image``.

        Returns:
            :class:`GlobalOutput` with ``image = attention * image + (1 - attention) * color``.
        """
        if au_free is None:
            au_free = self.encode(image)
        color, attention = self.decode(au_free, code, tuple(image.shape[-2:]))
        return GlobalOutput(
            image=attention * image + (1 - attention) * color, color=color, attention=attention, au_free=au_free
        )
