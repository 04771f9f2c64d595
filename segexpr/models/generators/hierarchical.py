"""Hierarchical generator: one global generator plus one local generator per expression region."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import torch
from torch import nn

from segexpr.labels import REGION_NAMES
from segexpr.models.generators.batched import can_stack, stacked_call
from segexpr.models.generators.global_generator import GlobalGenerator
from segexpr.models.generators.local import LocalGenerator
from segexpr.ops.regions import (
    box_masks,
    boxes_from_landmarks,
    boxes_from_masks,
    canonical_boxes,
    crop,
    feather_masks,
    paste_premultiplied,
    square_boxes,
)

REGION_SOURCES: tuple[str, ...] = ("segmenter", "landmarks", "none")
#: How local outputs return to the image: ``"residual"`` pastes the change of each crop onto the global
#: image; ``"resample"`` pastes the resampled crop itself (blurs by the crop's down/up-sampling; the first
#: implementation, kept to reproduce results measured with it).
PASTE_MODES: tuple[str, ...] = ("residual", "resample")
#: Crop boxes' shapes: ``"stretch"`` crops each box as it is into the square crop (a 3.6:1 brow band is
#: magnified 3.6x more vertically than horizontally); ``"square"`` grows the shorter side first (no distortion,
#: fewer crop pixels per brow). See ``docs/training.md``.
BOX_ASPECTS: tuple[str, ...] = ("stretch", "square")


@dataclass
class RegionLayout:
    """Where the local generators work, computed once from the region inputs and reusable across passes.

    Attributes:
        boxes: ``[B, R, 4]`` crop boxes ``(cx, cy, w, h)`` in normalised coordinates.
        fusion_weights: ``[B, R, 1, H, W]`` in ``[0, 1]``: each region's fusion weight before the crop's validity
            is applied (feathered masks for ``"segmenter"``, box masks for ``"landmarks"``).

    Every pass of one training step on the same source images (the edit, the self-reconstruction, the swap and,
    with the default ``regions_of``, both cycles) uses the same region inputs: building their layout once
    (:meth:`HierarchicalGenerator.region_layout`) instead of in every pass saves four of five mask dilations,
    blurs and box fits per step; gradients from all passes meet at the shared tensors.
    """

    boxes: torch.Tensor
    fusion_weights: torch.Tensor


@dataclass
class GeneratorOutput:
    """Output of :class:`HierarchicalGenerator` (``R`` = number of regions; ``R = 0`` for ``region_source="none"``).

    Attributes:
        image: fused result ``[B, 3, H, W]`` in ``[-1, 1]``.
        global_image: the global generator's result ``[B, 3, H, W]`` in ``[-1, 1]``.
        attention: global attention ``[B, 1, H, W]`` in ``[0, 1]`` (1 = keep the input pixel).
        local_images: ``[B, R, 3, H, W]`` in ``[-1, 1]``: the global result with region ``r`` replaced by its
            pasted local result (outside the box it equals ``global_image``).
        local_attention: ``[B, R, 1, H, W]`` in ``[0, 1]``: local attention pasted back; 1 (keep) outside the box.
        fusion_masks: ``[B, R, 1, H, W]`` in ``[0, 1]``: the fusion weights ``m_r`` after normalisation
            (``sum_r m_r <= 1`` at every pixel).
        boxes: ``[B, R, 4]`` crop boxes ``(cx, cy, w, h)`` (normalised coordinates), ``None`` for ``"none"``.
        au_free: AU-free feature map of the *input* image, ``[B, C, ceil(H / 2**n_down), ceil(W / 2**n_down)]``.
        local_crops: ``[B, R, 3, h, w]`` local results at crop resolution (``crop_size``), before pasting.
        local_crop_attention: ``[B, R, 1, h, w]`` local attention at crop resolution.
    """

    image: torch.Tensor
    global_image: torch.Tensor
    attention: torch.Tensor
    local_images: torch.Tensor
    local_attention: torch.Tensor
    fusion_masks: torch.Tensor
    boxes: torch.Tensor | None
    au_free: torch.Tensor
    local_crops: torch.Tensor
    local_crop_attention: torch.Tensor

    def split(self, sizes: Sequence[int]) -> list["GeneratorOutput"]:
        """The outputs of consecutive parts of the batch (``sizes`` samples each, summing to ``B``): what
        separate calls on those parts return, since every sample is computed on its own."""
        if sum(sizes) != self.image.shape[0]:
            raise ValueError(f"split sizes {list(sizes)} do not add up to the batch of {self.image.shape[0]}")
        parts = {f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).split(list(sizes)))
                 for f in fields(self)}
        return [GeneratorOutput(**{name: None if chunks is None else chunks[index] for name, chunks in parts.items()})
                for index in range(len(sizes))]


class HierarchicalGenerator(nn.Module):
    """Global generator + one local generator per region, fused with soft region masks.

    1. The global generator edits the whole face toward ``code``.
    2. For each region a box is found (``region_source``): from the moments of the segmenter's soft masks
       (``"segmenter"``, differentiable, the paper's model) or from iBUG landmarks (``"landmarks"``, the keypoint
       baseline). ``"none"`` stops here (global only).
    3. The **global result** is cropped in each box (``crop_size`` pixels) and refined by that region's local
       generator. Refining the global output rather than the input makes the hierarchy a coarse-to-fine
       refinement: the local attention can keep the global edit where it is already good, the pasted result
       agrees with the global image at the feathered seams, and the global generator also receives gradient
       from every local loss.
    4. Local results are pasted back (inverse affine; by default only their change from the crop,
       ``y_local_r = y_global + paste(local_crop_r - crop_r)``, so the crop's resampling never blurs the face)
       and fused:
       ``y = (1 - sum_r m_r) * y_global + sum_r m_r * y_local_r``, with ``m_r = feather_masks(region_masks)_r *
       validity_r`` (segmenter) or ``box_masks(boxes)_r * validity_r`` (landmarks), divided by ``sum_r m_r``
       wherever that exceeds 1 so the weights stay convex.

    In ``"segmenter"`` mode gradients reach ``region_masks`` through both the boxes (crop geometry) and the
    fusion weights, so a segmenter that produced them is trained by the GAN losses.

    Args:
        regions: region names (order of the ``R`` axis of masks, boxes and outputs).
        region_source: ``"segmenter"``, ``"landmarks"`` or ``"none"``.
        base_channels, n_down, n_res: global generator size (see :class:`GlobalGenerator`).
        code_dim: expression code size.
        local_channels, local_n_down, local_n_res: local generator size (see :class:`LocalGenerator`).
        crop_size: side of the square local crops in pixels.
        box_scale: box side per standard deviation of the mask (:func:`boxes_from_masks`).
        box_min_size: minimum box side as a fraction of the image extent.
        box_power: exponent applied to the soft masks before their moments (:func:`boxes_from_masks` ``power``):
            diffuse probability a parser leaves on distant pixels then cannot inflate the boxes (at 1, 1 % spread
            over a 128 px image makes a brow box cover 60 % of it; at 4 the box stays within 0.1 px), smoothly, so
            gradients still reach the masks. ``1`` = plain soft moments.
        batch_regions: run the local generators as one batched call (:func:`~segexpr.models.generators.batched.
            stacked_call`: stacked weights, ``vmap``, grouped convolutions) instead of a Python loop over regions;
            the same function (equal within float rounding) and the same state-dict keys.
        landmark_margin: growth per side of landmark boxes (:func:`boxes_from_landmarks`).
        feather_dilate, feather_blur: radii in pixels for :func:`feather_masks` (segmenter mode).
        box_feather: ramp fraction for :func:`box_masks` (landmarks mode).
        paste: ``"residual"`` (default: paste each local generator's change onto the global image, so an
            unchanged crop leaves it exactly as it was) or ``"resample"`` (paste the resampled crop; see
            :data:`PASTE_MODES`).
        box_aspect: ``"stretch"`` (default; what every published number used) or ``"square"``
            (:func:`~segexpr.ops.regions.square_boxes`: the square crop keeps the region's aspect ratio), for mask
            and landmark boxes alike (:data:`BOX_ASPECTS`).
    """

    def __init__(
        self,
        regions: Sequence[str] = REGION_NAMES,
        region_source: str = "segmenter",
        base_channels: int = 64,
        n_down: int = 2,
        n_res: int = 6,
        code_dim: int = 64,
        local_channels: int = 32,
        local_n_res: int = 3,
        crop_size: int = 32,
        box_scale: float = 2.5,
        feather_dilate: int = 3,
        feather_blur: int = 3,
        local_n_down: int = 2,
        box_min_size: float = 0.15,
        landmark_margin: float = 0.25,
        box_feather: float = 0.1,
        paste: str = "residual",
        box_power: float = 4.0,
        batch_regions: bool = True,
        box_aspect: str = "stretch",
    ) -> None:
        super().__init__()
        if box_aspect not in BOX_ASPECTS:
            raise ValueError(f"box_aspect must be one of {BOX_ASPECTS}, got {box_aspect!r}")
        if region_source not in REGION_SOURCES:
            raise ValueError(f"region_source must be one of {REGION_SOURCES}, got {region_source!r}")
        regions = tuple(regions)
        if len(set(regions)) != len(regions):
            raise ValueError(f"regions must be unique, got {regions}")
        if region_source != "none" and not regions:
            raise ValueError(f"region_source={region_source!r} needs at least one region")
        if paste not in PASTE_MODES:
            raise ValueError(f"paste must be one of {PASTE_MODES}, got {paste!r}")
        if box_power < 1:
            raise ValueError(f"box_power must be >= 1, got {box_power}")
        if crop_size < 2 ** local_n_down + 1:
            raise ValueError(f"crop_size {crop_size} is too small for local_n_down={local_n_down}")
        self.regions = regions
        self.region_source = region_source
        self.code_dim = code_dim
        self.crop_size = crop_size
        self.box_scale = box_scale
        self.box_min_size = box_min_size
        self.box_power = box_power
        self.landmark_margin = landmark_margin
        self.feather_dilate = feather_dilate
        self.feather_blur = feather_blur
        self.box_feather = box_feather
        self.paste = paste
        self.batch_regions = batch_regions
        self.box_aspect = box_aspect

        self.global_generator = GlobalGenerator(3, base_channels, n_down, n_res, code_dim)
        local_names = regions if region_source != "none" else ()
        self.local_generators = nn.ModuleDict(
            {name: LocalGenerator(local_channels, local_n_down, local_n_res, code_dim) for name in local_names}
        )
        self.register_buffer("default_boxes", canonical_boxes(regions).reshape(len(regions), 4), persistent=False)

    @property
    def au_free_channels(self) -> int:
        """Channels of the AU-free feature map, ``base_channels * 2**n_down``."""
        return self.global_generator.au_free_channels

    @property
    def num_regions(self) -> int:
        """``R`` of the outputs: ``len(regions)``, or 0 for ``region_source="none"``."""
        return len(self.local_generators)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """AU-free features of ``image`` ``[B, 3, H, W]`` (the global encoder's output)."""
        return self.global_generator.encode(image)

    def region_boxes(
        self,
        image_size: tuple[int, int],
        region_masks: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """The boxes ``[B, R, 4]`` this generator would crop (``None`` for ``region_source="none"``)."""
        if self.region_source == "segmenter":
            if region_masks is None:
                raise ValueError("region_source='segmenter' needs region_masks [B, R, H, W] (e.g. soft_regions of "
                                 "the segmenter's logits)")
            boxes = boxes_from_masks(region_masks, scale=self.box_scale, min_size=self.box_min_size,
                                     default_boxes=self.default_boxes, power=self.box_power)
        elif self.region_source == "landmarks":
            if landmarks is None:
                raise ValueError("region_source='landmarks' needs landmarks [B, 68, 2]")
            boxes = boxes_from_landmarks(landmarks, image_size, self.regions, margin=self.landmark_margin,
                                         min_size=self.box_min_size)
        else:
            return None
        return square_boxes(boxes, image_size) if self.box_aspect == "square" else boxes

    def region_layout(
        self,
        image_size: tuple[int, int],
        region_masks: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
    ) -> RegionLayout | None:
        """The boxes and fusion weights :meth:`forward` would build from these region inputs (``None`` for
        ``region_source="none"``); pass it as ``layout`` to every pass that uses the same inputs."""
        boxes = self.region_boxes(image_size, region_masks, landmarks)
        if boxes is None:
            return None
        if self.region_source == "segmenter":
            weights = feather_masks(region_masks, self.feather_dilate, self.feather_blur).unsqueeze(2)
        else:
            weights = box_masks(boxes, image_size, self.box_feather)
        return RegionLayout(boxes=boxes, fusion_weights=weights)

    def _local(self, crops: torch.Tensor, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Local results and attention ``[B, R, 3|1, h, w]`` of the crops ``[B, R, 3, h, w]`` (one code for all)."""
        networks = [self.local_generators[name] for name in self.regions]
        if self.batch_regions and can_stack(networks):
            color, attention = stacked_call(networks, (crops, code), in_dims=(1, None), out_dims=1)
        else:
            outputs = [networks[index](crops[:, index], code) for index in range(len(networks))]
            color = torch.stack([c for c, _ in outputs], dim=1)
            attention = torch.stack([a for _, a in outputs], dim=1)
        return attention * crops + (1 - attention) * color, attention

    def forward(
        self,
        image: torch.Tensor,
        code: torch.Tensor,
        region_masks: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
        au_free: torch.Tensor | None = None,
        layout: RegionLayout | None = None,
    ) -> GeneratorOutput:
        """Edit ``image`` toward ``code``.

        Args:
            image: float ``[B, 3, H, W]`` in ``[-1, 1]``.
            code: float ``[B, code_dim]`` (from :class:`~segexpr.models.generators.codes.ExpressionCoder`).
            region_masks: float ``[B, R, H, W]`` in ``[0, 1]``; required for ``region_source="segmenter"``.
            landmarks: float ``[B, 68, 2]`` pixel coordinates; required for ``region_source="landmarks"``.
            au_free: optional ``encode(image)`` already computed (applying several codes to the same images
                encodes them once); must be the features of ``image``.
            layout: optional :meth:`region_layout` of these region inputs, already computed (several passes
                with the same region inputs build it once); when given, the region inputs are not read again.

        Returns:
            :class:`GeneratorOutput`.
        """
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"HierarchicalGenerator expects images [B, 3, H, W], got shape {tuple(image.shape)}")
        batch, _, height, width = image.shape
        if code.dim() != 2 or code.shape != (batch, self.code_dim):
            raise ValueError(f"HierarchicalGenerator expects code [{batch}, {self.code_dim}], "
                             f"got shape {tuple(code.shape)}")
        if self.region_source == "segmenter" and region_masks is not None:
            expected = (batch, len(self.regions), height, width)
            if tuple(region_masks.shape) != expected:
                raise ValueError(f"region_masks must be [B, R, H, W] = {list(expected)} for regions {self.regions}, "
                                 f"got shape {tuple(region_masks.shape)}")
        if self.region_source == "landmarks" and landmarks is not None:
            if tuple(landmarks.shape) != (batch, 68, 2):
                raise ValueError(f"landmarks must be [{batch}, 68, 2], got shape {tuple(landmarks.shape)}")

        if layout is None:
            layout = self.region_layout((height, width), region_masks, landmarks)
        elif self.region_source == "none":
            raise ValueError("layout given to a generator with region_source='none' (it has no regions)")
        elif (layout.boxes.shape != (batch, len(self.regions), 4)
              or layout.fusion_weights.shape != (batch, len(self.regions), 1, height, width)):
            raise ValueError(f"layout does not fit images [{batch}, 3, {height}, {width}] and {len(self.regions)} "
                             f"regions: boxes {tuple(layout.boxes.shape)}, fusion_weights "
                             f"{tuple(layout.fusion_weights.shape)}")
        g = self.global_generator(image, code, au_free=au_free)
        boxes = layout.boxes if layout is not None else None
        if boxes is None:
            empty = image.new_zeros
            return GeneratorOutput(
                image=g.image, global_image=g.image, attention=g.attention,
                local_images=empty(batch, 0, 3, height, width), local_attention=empty(batch, 0, 1, height, width),
                fusion_masks=empty(batch, 0, 1, height, width), boxes=None, au_free=g.au_free,
                local_crops=empty(batch, 0, 3, self.crop_size, self.crop_size),
                local_crop_attention=empty(batch, 0, 1, self.crop_size, self.crop_size),
            )

        crops = crop(g.image, boxes, self.crop_size)  # [B, R, 3, h, w]
        local_crops_t, local_attention_t = self._local(crops, code)

        global_image = g.image.unsqueeze(1)
        # One grid_sample pastes the local image (its change, for "residual") and attention back together.
        # Residual: only the local generator's *change* goes back, so an unchanged crop (attention 1) leaves the
        # global image bit-identical instead of blurring it by the crop's down- and up-sampling.
        local_content = local_crops_t - crops if self.paste == "residual" else local_crops_t
        weighted, validity = paste_premultiplied(torch.cat([local_content, local_attention_t], dim=2), boxes,
                                                 (height, width))  # validity * pasted [B,R,4,H,W]; [B,R,1,H,W]
        if self.paste == "residual":
            local_images = (global_image + weighted[:, :, :3]).clamp(-1, 1)
        else:
            local_images = weighted[:, :, :3] + (1 - validity) * global_image
        local_attention = weighted[:, :, 3:] + (1 - validity)

        weights = layout.fusion_weights * validity
        # Overlapping regions (e.g. dilated brows and eyes) may sum past 1: rescale to a convex combination.
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        # = (1 - sum w) * global + sum w * local, written so that local == global gives global exactly
        fused = (g.image + (weights * (local_images - global_image)).sum(dim=1)).clamp(-1, 1)
        return GeneratorOutput(
            image=fused, global_image=g.image, attention=g.attention, local_images=local_images,
            local_attention=local_attention, fusion_masks=weights, boxes=boxes, au_free=g.au_free,
            local_crops=local_crops_t, local_crop_attention=local_attention_t,
        )
