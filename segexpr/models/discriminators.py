"""Multi-class AU discriminators: global PatchGAN, per-region local critics and the AU-free feature classifier.

No BatchNorm anywhere: WGAN-GP penalises per-sample input gradients, which batch statistics would mix
across samples (the same reason StarGAN/GANimation critics use none). All networks support double
backward (``create_graph=True``) for the gradient penalty.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from segexpr.labels import NUM_AUS, NUM_EXPRESSIONS, REGION_AUS, REGION_NAMES
from segexpr.models.generators.batched import can_stack, stacked_call
from segexpr.ops.regions import crop

LEAKY_SLOPE = 0.01  # StarGAN's critic slope


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, spectral: bool) -> nn.Module:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding)
    return _spectral_norm(conv) if spectral else conv


def _linear(in_features: int, out_features: int, spectral: bool) -> nn.Module:
    layer = nn.Linear(in_features, out_features)
    return _spectral_norm(layer) if spectral else layer


class _PatchTrunk(nn.Module):
    """``n_layers`` stride-2 4x4 convs with LeakyReLU(0.01); channels double each layer up to ``max_channels``."""

    def __init__(self, in_channels: int, base_channels: int, n_layers: int, max_channels: int, spectral: bool):
        super().__init__()
        if n_layers < 1 or base_channels < 1 or in_channels < 1:
            raise ValueError(f"discriminator needs n_layers, base_channels, in_channels >= 1, got "
                             f"{n_layers}, {base_channels}, {in_channels}")
        layers: list[nn.Module] = []
        channels, out = in_channels, base_channels
        for _ in range(n_layers):
            layers += [_conv(channels, out, 4, 2, 1, spectral), nn.LeakyReLU(LEAKY_SLOPE)]
            channels, out = out, min(out * 2, max_channels)
        self.layers = nn.Sequential(*layers)
        self.out_channels = channels
        self.n_layers = n_layers
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor, owner: str) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{owner} expects [N, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        min_side = 2 ** self.n_layers
        if min(x.shape[-2:]) < min_side:
            raise ValueError(f"{owner}: input {tuple(x.shape[-2:])} is too small for n_layers={self.n_layers}; "
                             f"each side must be >= {min_side}")
        return self.layers(x)


class GlobalDiscriminator(nn.Module):
    """Whole-image critic with real/fake, expression and AU heads (StarGAN-style PatchGAN).

    Args:
        image_size: nominal training size; recorded only, because the class/AU heads pool adaptively and
            any input with sides ``>= 2**n_layers`` works.
        in_channels: image channels.
        base_channels: width of the first conv (doubles per layer, capped at ``max_channels``).
        n_layers: stride-2 conv layers.
        num_expressions: expression classes.
        num_aus: AU intensities predicted.
        spectral_norm: wrap every conv/linear in spectral normalisation (for hinge / non-saturating losses).
        max_channels: channel cap of the trunk.
        head_grid: the expression / AU heads read the trunk's feature map average-pooled to ``head_grid x
            head_grid`` cells and flattened, so they know *where* a feature fires (a raised brow and an open
            mouth are told apart by position). StarGAN's and GANimation's classification heads are a conv over
            the whole final map, i.e. ``head_grid`` = the map's side (4 at 128 px / 5 layers and 64 px / 4
            layers). ``1`` is a global mean (segexpr <= 0.3; measured here: expression accuracy 0.42 vs 0.85
            after 400 steps of the same trunk, ``docs/training.md``). Checkpoints with mean-pool heads load into
            a ``head_grid > 1`` critic unchanged in function (the weight is spread over the cells).

    Shapes: ``x`` float ``[B, C, H, W]`` in ``[-1, 1]`` -> ``dict(adv=[B, 1, H / 2**n_layers, W / 2**n_layers]``
    (unbounded critic scores, one per patch), ``expression=[B, num_expressions]`` logits,
    ``aus=[B, num_aus]`` in ``[0, 1]``).
    """

    def __init__(
        self,
        image_size: int = 128,
        in_channels: int = 3,
        base_channels: int = 64,
        n_layers: int = 5,
        num_expressions: int = NUM_EXPRESSIONS,
        num_aus: int = NUM_AUS,
        spectral_norm: bool = False,
        max_channels: int = 1024,
        head_grid: int = 4,
    ) -> None:
        super().__init__()
        if isinstance(head_grid, bool) or not isinstance(head_grid, int) or head_grid < 1:
            raise ValueError(f"head_grid must be an integer >= 1, got {head_grid!r}")
        self.image_size = image_size
        self.num_expressions = num_expressions
        self.num_aus = num_aus
        self.head_grid = head_grid
        self.trunk = _PatchTrunk(in_channels, base_channels, n_layers, max_channels, spectral_norm)
        channels = self.trunk.out_channels
        self.adv_head = _conv(channels, 1, 3, 1, 1, spectral_norm)
        self.expression_head = _linear(channels * head_grid ** 2, num_expressions, spectral_norm)
        self.au_head = _linear(channels * head_grid ** 2, num_aus, spectral_norm)
        self._register_load_state_dict_pre_hook(self._spread_mean_pool_heads)

    def _spread_mean_pool_heads(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Load a mean-pool head ``[out, C]`` (``head_grid=1``) into this grid head ``[out, C * g * g]``.

        ``W @ mean(f)`` equals ``(W / g^2, repeated per cell) @ flatten(pool_g(f))`` whenever the map's side is a
        multiple of ``g`` (the mean of equal cell means is the mean), so old checkpoints keep their function.
        """
        cells = self.head_grid ** 2
        if cells == 1:
            return
        for head in ("expression_head", "au_head"):
            key = f"{prefix}{head}.weight"
            if key in state_dict and state_dict[key].shape[1] * cells == getattr(self, head).weight.shape[1]:
                state_dict[key] = state_dict[key].repeat_interleave(cells, dim=1) / cells
            original = state_dict.get(f"{prefix}{head}.parametrizations.weight.original")
            if original is not None and original.shape[1] * cells == getattr(self, head).weight.shape[1]:
                raise ValueError(f"{prefix}{head}: a spectral-norm mean-pool head cannot be spread over "
                                 f"{self.head_grid}x{self.head_grid} cells; build the critic with head_grid=1")

    def _pooled_grid(self, features: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(features, self.head_grid).flatten(1)

    @property
    def feature_channels(self) -> int:
        """Length ``F`` of :meth:`features` (channels of the last trunk layer)."""
        return self.trunk.out_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features ``[B, F]``, what the expression/AU heads read (e.g. for FID/KID)."""
        return self.trunk(x, type(self).__name__).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(x, type(self).__name__)
        pooled = self._pooled_grid(features)  # adaptive pooling: any input size
        return {
            "adv": self.adv_head(features),
            "expression": self.expression_head(pooled),
            "aus": torch.sigmoid(self.au_head(pooled)),
        }


class LocalDiscriminator(nn.Module):
    """Region-crop critic with real/fake and the region's AU heads.

    Args:
        num_aus: AUs of this region (``len(REGION_AUS[region])``).
        in_channels, base_channels, n_layers, spectral_norm, max_channels: as :class:`GlobalDiscriminator`.

    Shapes: ``crop`` float ``[N, C, h, w]`` in ``[-1, 1]`` -> ``dict(adv=[N, 1, h / 2**n_layers, w / 2**n_layers],
    aus=[N, num_aus] in [0, 1])``.
    """

    def __init__(
        self,
        num_aus: int,
        in_channels: int = 3,
        base_channels: int = 32,
        n_layers: int = 3,
        spectral_norm: bool = False,
        max_channels: int = 512,
    ) -> None:
        super().__init__()
        if num_aus < 1:
            raise ValueError(f"LocalDiscriminator needs num_aus >= 1, got {num_aus}")
        self.num_aus = num_aus
        self.trunk = _PatchTrunk(in_channels, base_channels, n_layers, max_channels, spectral_norm)
        channels = self.trunk.out_channels
        self.adv_head = _conv(channels, 1, 3, 1, 1, spectral_norm)
        self.au_head = _linear(channels, num_aus, spectral_norm)

    def forward(self, crop: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(crop, type(self).__name__)
        return {"adv": self.adv_head(features), "aus": torch.sigmoid(self.au_head(features.mean(dim=(2, 3))))}


class FeatureClassifier(nn.Module):
    """Multi-class adversarial classifier on the AU-free feature map.

    Trained to predict expression and AUs from the generator encoder's AU-free features; the encoder is
    trained to make those predictions uninformative (toward uniform), which removes expression information
    from the AU-free feature (Shao et al.).

    Args:
        in_channels: channels of the AU-free map (``HierarchicalGenerator.au_free_channels``).
        num_expressions, num_aus: head sizes.
        hidden: width of the two 3x3 convs.

    Shapes: ``au_free`` ``[B, in_channels, h, w]`` (any ``h, w >= 1``) -> ``dict(expression=[B, num_expressions]``
    logits, ``aus=[B, num_aus]`` in ``[0, 1]``).
    """

    def __init__(
        self, in_channels: int, num_expressions: int = NUM_EXPRESSIONS, num_aus: int = NUM_AUS, hidden: int = 128
    ) -> None:
        super().__init__()
        if in_channels < 1 or hidden < 1:
            raise ValueError(f"FeatureClassifier needs in_channels, hidden >= 1, got {in_channels}, {hidden}")
        self.in_channels = in_channels
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, 1, 1), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(hidden, hidden, 3, 2, 1), nn.LeakyReLU(LEAKY_SLOPE),
        )
        self.expression_head = nn.Linear(hidden, num_expressions)
        self.au_head = nn.Linear(hidden, num_aus)

    def forward(self, au_free: torch.Tensor) -> dict[str, torch.Tensor]:
        if au_free.dim() != 4 or au_free.shape[1] != self.in_channels:
            raise ValueError(f"FeatureClassifier expects au_free [B, {self.in_channels}, h, w], "
                             f"got shape {tuple(au_free.shape)}")
        pooled = self.body(au_free).mean(dim=(2, 3))
        return {"expression": self.expression_head(pooled), "aus": torch.sigmoid(self.au_head(pooled))}


class AUDiscriminator(nn.Module):
    """All discriminators of the model: global critic, one local critic per region, AU-free classifier.

    Args:
        image_size: nominal image size (recorded, see :class:`GlobalDiscriminator`).
        regions: region names; ``local_d`` has one critic per region.
        region_aus: region -> indices into the AU vector that region's critic predicts.
        au_free_channels: channels of the generator's AU-free map (for ``feature_classifier``).
        crop_size: side of the region crops fed to the local critics.
        base_channels, n_layers: global critic size.
        local_channels, local_n_layers: local critic size.
        num_expressions, num_aus: label sizes.
        feature_hidden: width of the feature classifier.
        spectral_norm: spectral normalisation in the global and local critics.
        head_grid: cells of the global critic's expression / AU heads (see :class:`GlobalDiscriminator`).
        batch_regions: run the local critics' trunks and real/fake heads as one batched call
            (:func:`~segexpr.models.generators.batched.stacked_call`) instead of a loop over regions (not with
            ``spectral_norm``); same function within float rounding, same state-dict keys.

    Attributes:
        region_aus: ``{region: tuple of AU indices}``; ``region_targets(aus)`` selects them, and each index set
            is also a non-persistent buffer ``au_index_<region>`` (follows ``.to(device)``).
    """

    def __init__(
        self,
        image_size: int = 128,
        regions: Sequence[str] = REGION_NAMES,
        region_aus: Mapping[str, Sequence[int]] = REGION_AUS,
        au_free_channels: int = 256,
        crop_size: int = 32,
        base_channels: int = 64,
        local_channels: int = 32,
        num_expressions: int = NUM_EXPRESSIONS,
        num_aus: int = NUM_AUS,
        n_layers: int = 5,
        local_n_layers: int = 3,
        feature_hidden: int = 128,
        spectral_norm: bool = False,
        batch_regions: bool = True,
        head_grid: int = 4,
    ) -> None:
        super().__init__()
        regions = tuple(regions)
        missing = [r for r in regions if r not in region_aus]
        if missing:
            raise ValueError(f"region_aus has no AU list for regions {missing}")
        for region in regions:
            bad = [i for i in region_aus[region] if not 0 <= int(i) < num_aus]
            if not region_aus[region] or bad:
                raise ValueError(f"region_aus[{region!r}] = {tuple(region_aus[region])} must be non-empty indices "
                                 f"in [0, {num_aus})")
        self.regions = regions
        self.batch_regions = batch_regions
        self.crop_size = crop_size
        self.num_aus = num_aus
        self.region_aus: dict[str, tuple[int, ...]] = {r: tuple(int(i) for i in region_aus[r]) for r in regions}
        for region in regions:
            self.register_buffer(f"au_index_{region}", torch.tensor(self.region_aus[region], dtype=torch.long),
                                 persistent=False)
        self.global_d = GlobalDiscriminator(image_size, 3, base_channels, n_layers, num_expressions, num_aus,
                                            spectral_norm, head_grid=head_grid)
        self.local_d = nn.ModuleDict({
            r: LocalDiscriminator(len(self.region_aus[r]), 3, local_channels, local_n_layers, spectral_norm)
            for r in regions
        })
        self.feature_classifier = FeatureClassifier(au_free_channels, num_expressions, num_aus, feature_hidden)

    def region_targets(self, aus: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-region AU targets: ``aus [B, num_aus]`` -> ``{region: aus[:, REGION_AUS[region]]}``."""
        if aus.dim() != 2 or aus.shape[1] != self.num_aus:
            raise ValueError(f"region_targets expects aus [B, {self.num_aus}], got shape {tuple(aus.shape)}")
        return {r: aus.index_select(1, getattr(self, f"au_index_{r}")) for r in self.regions}

    def local_scores(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real/fake scores ``[B, R, 1, h', w']`` and trunk features ``[B, R, C, h', w']`` of the local critics on
        crops ``[B, R, 3, h, w]`` (one batched call with ``batch_regions``, else a loop over regions)."""
        if crops.dim() != 5 or crops.shape[1] != len(self.regions):
            raise ValueError(f"the local critics expect crops [B, {len(self.regions)}, 3, h, w], "
                             f"got shape {tuple(crops.shape)}")
        critics = [self.local_d[r] for r in self.regions]
        trunks, heads = [c.trunk for c in critics], [c.adv_head for c in critics]
        if self.batch_regions and can_stack(trunks) and can_stack(heads):
            features = stacked_call(trunks, (crops, "LocalDiscriminator"), in_dims=(1, None), out_dims=1)
            return stacked_call(heads, (features,), in_dims=(1,), out_dims=1), features
        features = [c.trunk(crops[:, i], "LocalDiscriminator") for i, c in enumerate(critics)]
        return (torch.stack([c.adv_head(f) for c, f in zip(critics, features)], dim=1),
                torch.stack(features, dim=1))

    def local_aus(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each region's AU predictions ``{region: [B, n_r]}`` from :meth:`local_scores`' features."""
        pooled = features.mean(dim=(3, 4))
        return {r: torch.sigmoid(self.local_d[r].au_head(pooled[:, i])) for i, r in enumerate(self.regions)}

    def forward_local(self, crops: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """Local critics on ready-made crops ``[B, R, 3, h, w]`` (R in ``regions`` order) -> ``{region: dict}``."""
        if crops.dim() != 5 or crops.shape[1] != len(self.regions):
            raise ValueError(f"forward_local expects crops [B, {len(self.regions)}, 3, h, w], "
                             f"got shape {tuple(crops.shape)}")
        adv, features = self.local_scores(crops)
        aus = self.local_aus(features)
        return {r: {"adv": adv[:, i], "aus": aus[r]} for i, r in enumerate(self.regions)}

    def forward(
        self, images: torch.Tensor, boxes: torch.Tensor | None = None, au_free: torch.Tensor | None = None
    ) -> dict[str, object]:
        """Run the critics.

        Args:
            images: float ``[B, 3, H, W]`` in ``[-1, 1]``.
            boxes: ``[B, R, 4]`` region boxes (e.g. ``GeneratorOutput.boxes``); when given, each region is cropped
                with :func:`~segexpr.models.generators.local.crop` to ``crop_size`` and judged by its local critic.
            au_free: optional AU-free features ``[B, C, h, w]`` for the feature classifier.

        Returns:
            ``dict(global=GlobalDiscriminator output, local={region: LocalDiscriminator output} ({} without
            boxes), features=FeatureClassifier output or None)``.
        """
        out: dict[str, object] = {"global": self.global_d(images), "local": {}, "features": None}
        if boxes is not None:
            if boxes.dim() != 3 or boxes.shape[1:] != (len(self.regions), 4):
                raise ValueError(f"AUDiscriminator expects boxes [B, {len(self.regions)}, 4] for regions "
                                 f"{self.regions}, got shape {tuple(boxes.shape)}")
            out["local"] = self.forward_local(crop(images, boxes, self.crop_size))
        if au_free is not None:
            out["features"] = self.feature_classifier(au_free)
        return out


#: Names accepted by :func:`create_discriminator`.
DISCRIMINATORS: tuple[str, ...] = ("au",)


def create_discriminator(name: str = "au", **kwargs: object) -> AUDiscriminator:
    """Build a discriminator by name.

    Args:
        name: ``"au"`` -> :class:`AUDiscriminator` (global critic + local critics + AU-free feature classifier).
        **kwargs: its constructor arguments (``image_size``, ``base_channels``, ``n_layers``, ``regions``, ...).
    """
    if name not in DISCRIMINATORS:
        raise ValueError(f"unknown discriminator {name!r}; expected one of {DISCRIMINATORS}")
    return AUDiscriminator(**kwargs)
