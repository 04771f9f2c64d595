"""The expression code space: labels, AU vectors and reference images all map into one code.

The code is the *AU-related* representation of the transfer paper (Shao et al., TIP 2021): a vector that
says which expression to produce and nothing about identity. The generator's encoder supplies the
complementary *AU-free* feature map (see :class:`~segexpr.models.generators.global_generator.GlobalGenerator`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from segexpr.labels import NUM_AUS, NUM_EXPRESSIONS, expression_prototype
from segexpr.ops.checks import check_on_device


def _group_norm(channels: int) -> nn.GroupNorm:
    # GroupNorm (not InstanceNorm) because the reference encoder may reach 1x1 spatial size on small images,
    # where instance statistics are undefined; like InstanceNorm it is batch-size independent.
    return nn.GroupNorm(math.gcd(8, channels), channels)


class ExpressionCoder(nn.Module):
    """Map an expression label, an AU vector or a reference image into one code space.

    Label codes go through the label's **FACS prototype AU vector** (``segexpr.labels.
    EXPRESSION_PROTOTYPES``) and the same AU MLP as :meth:`from_aus`, plus a learned per-label offset that
    starts at zero. So ``from_label(happy)`` starts out equal to ``from_aus(prototype(happy))``: the three
    kinds of target share one space from the first step, and the offset lets training move a label's code
    where the data's typical "happy" is (real faces rarely match the prototype exactly).

    Args:
        num_expressions: number of expression classes (8, AffectNet order).
        num_aus: length of AU vectors (17, OpenFace order, values in ``[0, 1]``).
        code_dim: size of the code.
        base_channels: width of the first conv of the reference-image encoder (doubles per stage, max 256).
        n_down: stride-2 stages of the reference-image encoder.

    Shapes:
        * ``from_label``: int64 ``[B]`` in ``[0, num_expressions)`` -> float ``[B, code_dim]``
        * ``from_aus``: float ``[B, num_aus]`` in ``[0, 1]`` -> float ``[B, code_dim]``
        * ``from_image``: float ``[B, 3, H, W]`` in ``[-1, 1]`` (any ``H, W >= 1``) -> float ``[B, code_dim]``
        * ``to_aus``: ``[B, code_dim]`` -> float ``[B, num_aus]`` in ``[0, 1]``
        * ``to_expression_logits``: ``[B, code_dim]`` -> float ``[B, num_expressions]`` (unnormalised)
    """

    def __init__(
        self,
        num_expressions: int = NUM_EXPRESSIONS,
        num_aus: int = NUM_AUS,
        code_dim: int = 64,
        base_channels: int = 32,
        n_down: int = 4,
    ) -> None:
        super().__init__()
        for name, value in (("num_expressions", num_expressions), ("num_aus", num_aus), ("code_dim", code_dim),
                            ("base_channels", base_channels), ("n_down", n_down)):
            if value < 1:
                raise ValueError(f"ExpressionCoder: {name} must be >= 1, got {value}")
        self.num_expressions = num_expressions
        self.num_aus = num_aus
        self.code_dim = code_dim

        if num_expressions == NUM_EXPRESSIONS and num_aus == NUM_AUS:
            prototypes = torch.stack([torch.from_numpy(expression_prototype(i)) for i in range(num_expressions)])
        else:  # custom label sets have no FACS prototypes: labels then rely on the learned offset alone
            prototypes = torch.zeros(num_expressions, num_aus)
        self.register_buffer("prototypes", prototypes, persistent=False)
        self.label_offset = nn.Embedding(num_expressions, code_dim)
        nn.init.zeros_(self.label_offset.weight)

        hidden = max(2 * code_dim, 64)
        self.au_mlp = nn.Sequential(
            nn.Linear(num_aus, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, code_dim),
        )

        layers: list[nn.Module] = [nn.Conv2d(3, base_channels, 3, 1, 1), nn.LeakyReLU(0.2)]
        channels = base_channels
        for _ in range(n_down):
            out = min(channels * 2, 256)
            # kernel 3 / stride 2 / padding 1 gives ceil(H / 2): never reaches zero size, so any H, W works.
            layers += [nn.Conv2d(channels, out, 3, 2, 1), _group_norm(out), nn.LeakyReLU(0.2)]
            channels = out
        self.image_encoder = nn.Sequential(*layers)
        self.image_head = nn.Linear(channels, code_dim)

        # Linear heads keep the code linearly readable as AUs / expression (used by code-consistency losses).
        self.au_head = nn.Linear(code_dim, num_aus)
        self.expression_head = nn.Linear(code_dim, num_expressions)

    def from_label(self, expression: torch.Tensor) -> torch.Tensor:
        """Code of expression labels: int64 ``[B]`` -> ``[B, code_dim]``."""
        if expression.dim() != 1 or expression.dtype.is_floating_point:
            raise ValueError(f"from_label expects int64 labels [B], got shape {tuple(expression.shape)} "
                             f"dtype {expression.dtype}")
        if expression.numel():
            check_on_device(((expression >= 0) & (expression < self.num_expressions)).all(),
                            f"expression labels must be in [0, {self.num_expressions})",
                            lambda: f", got values in [{int(expression.min())}, {int(expression.max())}]")
        expression = expression.long()
        return self.from_aus(self.prototypes[expression]) + self.label_offset(expression)

    def from_aus(self, aus: torch.Tensor) -> torch.Tensor:
        """Code of AU vectors: float ``[B, num_aus]`` in ``[0, 1]`` -> ``[B, code_dim]``."""
        if aus.dim() != 2 or aus.shape[1] != self.num_aus:
            raise ValueError(f"from_aus expects aus [B, {self.num_aus}], got shape {tuple(aus.shape)}")
        if not aus.dtype.is_floating_point:
            raise ValueError(f"from_aus expects a float AU vector, got dtype {aus.dtype}")
        # labels arrive as float32 whatever the weights' precision (e.g. float64 under precision="64-true")
        return self.au_mlp(aus.to(self.prototypes.dtype))

    def from_image(self, images: torch.Tensor) -> torch.Tensor:
        """Code of reference images (the AU-related encoder): ``[B, 3, H, W]`` in ``[-1, 1]`` -> ``[B, code_dim]``."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"from_image expects images [B, 3, H, W], got shape {tuple(images.shape)}")
        features = self.image_encoder(images).mean(dim=(2, 3))  # global average pooling: any H, W
        return self.image_head(features)

    def to_aus(self, code: torch.Tensor) -> torch.Tensor:
        """AU intensities read back from a code: ``[B, code_dim]`` -> ``[B, num_aus]`` in ``[0, 1]``."""
        self._check_code(code)
        return torch.sigmoid(self.au_head(code))

    def to_expression_logits(self, code: torch.Tensor) -> torch.Tensor:
        """Expression logits read back from a code: ``[B, code_dim]`` -> ``[B, num_expressions]``."""
        self._check_code(code)
        return self.expression_head(code)

    def forward(
        self,
        expression: torch.Tensor | None = None,
        aus: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Code of exactly one target: a label ``[B]``, an AU vector ``[B, num_aus]`` or a reference image."""
        given = [name for name, value in (("expression", expression), ("aus", aus), ("reference", reference))
                 if value is not None]
        if len(given) != 1:
            raise ValueError("ExpressionCoder needs exactly one of expression=, aus=, reference=; "
                             f"got {given or 'none'}")
        if expression is not None:
            return self.from_label(expression)
        if aus is not None:
            return self.from_aus(aus)
        return self.from_image(reference)

    def _check_code(self, code: torch.Tensor) -> None:
        if code.dim() != 2 or code.shape[1] != self.code_dim:
            raise ValueError(f"expected a code [B, {self.code_dim}], got shape {tuple(code.shape)}")
