"""``ExpressionEditor``: the inference API -- edit by label or AU vector, transfer from a reference, regions.

One small class used by ``JointModule.edit``/``transfer``/``regions``, the ``segexpr edit``/``transfer``
commands (through :mod:`segexpr.inference.photo`), evaluation and the demo. It holds the networks (no optimisers, no Lightning) and works at any input
size: images are resized to the model's ``image_size``, edited, and only the *change* is upsampled back onto
the full-resolution input, so unedited detail is kept.

>>> editor = ExpressionEditor.from_checkpoint("last.ckpt")              # doctest: +SKIP
>>> happy = editor.edit(images, expression="happy")                     # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from segexpr.labels import EXPRESSIONS, NUM_AUS, NUM_EXPRESSIONS, ALL_REGION_GROUPS
from segexpr.ops.regions import box_masks, region_inputs, soft_regions

__all__ = ["FACE_CLASSES", "MIN_IMAGE_SIZE", "ExpressionEditor", "as_expression_labels", "check_aus", "check_images"]

#: Smallest image side (pixels) the editor accepts: below it there is no face to edit.
MIN_IMAGE_SIZE = 16
#: Slack on the ``[-1, 1]`` range (resampling and float rounding).
RANGE_SLACK = 1e-3
#: Parsing classes (order A) that make up the face for :meth:`ExpressionEditor.face_mask`: skin, brows, eyes,
#: nose, mouth and lips (not glasses, ears, hair, neck, cloth).
FACE_CLASSES = ("skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip")


def check_images(images: Any, name: str = "images") -> torch.Tensor:
    """Check a batch of images for the editor; returns it unchanged, or raises ``ValueError`` saying what is wrong.

    Required: a floating-point tensor ``[B, 3, H, W]`` with values in ``[-1, 1]`` (1e-3 slack), finite, sides of at
    least :data:`MIN_IMAGE_SIZE` pixels. uint8 images and 0-255 ranges are refused with the conversion to use.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{name} must be a float tensor [B, 3, H, W] in [-1, 1], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be a float tensor [B, 3, H, W] in [-1, 1], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [-1, 1], got dtype {images.dtype}; for 0-255 pixel "
                         "values divide by 127.5 and subtract 1 (images.float() / 127.5 - 1)")
    height, width = images.shape[-2:]
    if min(height, width) < MIN_IMAGE_SIZE:
        raise ValueError(f"{name} are {height}x{width} px; at least {MIN_IMAGE_SIZE} px per side is needed")
    if images.numel() == 0:
        return images
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name} contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < -1 - RANGE_SLACK or high > 1 + RANGE_SLACK:
        hint = ("; these look like 0-255 pixel values: divide by 127.5 and subtract 1" if high > 2
                else "; values in [0, 1]? use images * 2 - 1" if low >= 0 else "")
        raise ValueError(f"{name} must be in [-1, 1], got values in [{low:.4g}, {high:.4g}]{hint}")
    return images


def check_aus(aus: Any, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
    """AU intensities ``[17]`` or ``[batch, 17]`` in ``[0, 1]``, finite -> float32 ``[batch, 17]``; else ValueError."""
    aus_t = torch.as_tensor(aus, dtype=torch.float32, device=device)
    aus_t = aus_t.unsqueeze(0).expand(batch, -1) if aus_t.dim() == 1 else aus_t
    if tuple(aus_t.shape) != (batch, NUM_AUS):
        raise ValueError(f"aus must be [{NUM_AUS}] or [{batch}, {NUM_AUS}], got {tuple(aus_t.shape)}")
    if aus_t.numel() and not bool(torch.isfinite(aus_t).all()):
        raise ValueError("aus contain NaN or infinite values")
    if aus_t.numel() and (float(aus_t.min()) < 0 or float(aus_t.max()) > 1):
        raise ValueError(f"aus must be intensities in [0, 1] (OpenFace intensity / 5), got values in "
                         f"[{float(aus_t.min()):.4g}, {float(aus_t.max()):.4g}]")
    return aus_t


def as_expression_labels(expression: int | str | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """An expression given as index, name or int tensor -> int64 ``[batch]`` labels in ``[0, 8)``."""
    if isinstance(expression, str):
        if expression not in EXPRESSIONS:
            raise ValueError(f"unknown expression {expression!r}; expected one of {EXPRESSIONS}")
        expression = EXPRESSIONS.index(expression)
    if isinstance(expression, torch.Tensor):
        labels = expression.to(device=device, dtype=torch.long).reshape(-1)
        if labels.numel() == 1:
            labels = labels.expand(batch)
        if labels.numel() != batch:
            raise ValueError(f"expression tensor has {labels.numel()} labels for a batch of {batch}")
    else:
        labels = torch.full((batch,), int(expression), dtype=torch.long, device=device)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= NUM_EXPRESSIONS):
        raise ValueError(f"expression labels must be in [0, {NUM_EXPRESSIONS}), got {labels.tolist()}")
    return labels


@contextlib.contextmanager
def _eval_mode(*networks: nn.Module | None) -> Iterator[None]:
    """Eval mode and no gradients for ``networks``; their previous train/eval modes are restored."""
    present = [n for n in networks if n is not None]
    modes = [n.training for n in present]
    for network in present:
        network.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for network, mode in zip(present, modes):
            network.train(mode)


class ExpressionEditor:
    """Edit expressions with a trained generator + coder (+ segmenter for segmentation-conditioned regions).

    Args:
        generator: a :class:`~segexpr.models.generators.HierarchicalGenerator`.
        coder: its :class:`~segexpr.models.generators.ExpressionCoder`.
        image_size: the square size the model was trained at; inputs are resized to it.
        segmenter: parsing network (logits ``[B, 19, H, W]``, order A); needed for ``region_source="segmenter"``.
        region_groups: region name -> parsing classes (default: the generator's regions in ``ALL_REGION_GROUPS``).
    """

    def __init__(self, generator: nn.Module, coder: nn.Module, *, image_size: int, segmenter: nn.Module | None = None,
                 region_groups: Mapping[str, Any] | None = None) -> None:
        self.generator, self.coder, self.segmenter = generator, coder, segmenter
        self.image_size = int(image_size)
        self.region_source = generator.region_source
        if self.region_source == "segmenter" and segmenter is None:
            raise ValueError("region_source='segmenter' needs a segmenter")
        self.region_groups = dict(region_groups) if region_groups is not None else {
            r: ALL_REGION_GROUPS[r] for r in generator.regions if r in ALL_REGION_GROUPS}

    @classmethod
    def from_module(cls, module: nn.Module) -> "ExpressionEditor":
        """The editor of a :class:`~segexpr.modules.JointModule` (its EMA weights once they hold an average)."""
        generator, coder = module.eval_networks()
        return cls(generator, coder, image_size=module.image_size, segmenter=module.segmenter,
                   region_groups=module.region_groups)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu") -> "ExpressionEditor":
        """The editor of a JointModule checkpoint, read safely (``weights_only=True``), on ``device``.

        Builds only the networks inference needs (no LightningModule, no optimiser state); the generator and
        coder take the EMA weights when the checkpoint's EMA holds an average. segexpr 0.1 checkpoints are
        upgraded in memory. Errors name the file.
        """
        from segexpr.inference.checkpoints import load_editing_networks  # I/O at the edge: imported on use

        nets = load_editing_networks(path, device)
        return cls(nets.generator, nets.coder, image_size=nets.image_size, segmenter=nets.segmenter)

    @property
    def device(self) -> torch.device:
        return next(self.generator.parameters()).device

    @property
    def region_names(self) -> tuple[str, ...]:
        """Names of the ``R`` channels of :meth:`regions` (empty for ``region_source="none"``)."""
        return tuple(self.generator.regions) if self.region_source != "none" else ()

    # ------------------------------------------------------------------ resizing
    def _prepare(self, images: torch.Tensor, landmarks: torch.Tensor | None, name: str = "images"
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Resize to ``image_size`` (and scale landmarks accordingly)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"{name} must be a float tensor [B, 3, H, W] in [-1, 1], got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        device, size = self.device, self.image_size
        images = images.to(device=device, dtype=torch.float32)
        height, width = images.shape[-2:]
        if landmarks is not None:
            landmarks = landmarks.to(device=device, dtype=torch.float32)
            if landmarks.dim() == 2:
                landmarks = landmarks.unsqueeze(0).expand(images.shape[0], -1, -1)
            landmarks = landmarks * torch.tensor([size / width, size / height], device=device)
        if (height, width) != (size, size):
            images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return images, landmarks

    @staticmethod
    def _restore(original: torch.Tensor, small_in: torch.Tensor, small_out: torch.Tensor) -> torch.Tensor:
        """Back to the input size: add the upsampled *change* to the full-resolution input (keeps its detail)."""
        if original.shape[-2:] == small_out.shape[-2:]:
            return small_out.clamp(-1, 1)
        delta = F.interpolate(small_out - small_in, size=original.shape[-2:], mode="bilinear", align_corners=False)
        return (original.to(small_out) + delta).clamp(-1, 1)

    def region_kwargs(self, images: torch.Tensor, landmarks: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
        """The generator's ``region_masks``/``landmarks`` arguments for images already at ``image_size``."""
        logits = self.segmenter(images) if self.region_source == "segmenter" else None
        return region_inputs(self.region_source, images, logits=logits, landmarks=landmarks, groups=self.region_groups)

    def _generate(self, images: torch.Tensor, code_fn: Callable[[nn.Module], torch.Tensor],
                  landmarks: torch.Tensor | None) -> torch.Tensor:
        with _eval_mode(self.generator, self.coder, self.segmenter):
            small, small_landmarks = self._prepare(images, landmarks)
            out = self.generator(small, code_fn(self.coder), **self.region_kwargs(small, small_landmarks)).image
            return self._restore(images.to(self.device, torch.float32), small, out)

    # ------------------------------------------------------------------ the API
    def edit(self, images: torch.Tensor, expression: int | str | torch.Tensor | None = None,
             aus: torch.Tensor | None = None, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """Set the expression of ``images`` by label or AU vector.

        Args:
            images: float ``[B, 3, H, W]`` in ``[-1, 1]``, any size (processed at ``image_size``; the change is
                upsampled onto the original, so unedited detail is kept).
            expression: an index in ``[0, 8)``, a name from :data:`segexpr.labels.EXPRESSIONS`, or an int64
                tensor ``[B]``. Exactly one of ``expression`` / ``aus``.
            aus: float ``[B, 17]`` or ``[17]`` AU intensities (trained range ``[0, 1]``).
            landmarks: float ``[B, 68, 2]`` pixel coordinates of ``images``; required for
                ``region_source="landmarks"`` only.

        Returns:
            float ``[B, 3, H, W]`` in ``[-1, 1]``; eval mode without gradients, previous modes restored.
        """
        if (expression is None) == (aus is None):
            raise ValueError("edit needs exactly one of expression= or aus=")
        check_images(images)
        batch = images.shape[0]
        if expression is not None:
            labels = as_expression_labels(expression, batch, self.device)
            return self._generate(images, lambda coder: coder.from_label(labels), landmarks)
        aus_t = check_aus(aus, batch, self.device)
        return self._generate(images, lambda coder: coder.from_aus(aus_t), landmarks)

    def transfer(self, images: torch.Tensor, references: torch.Tensor, landmarks: torch.Tensor | None = None
                 ) -> torch.Tensor:
        """Copy the expression of ``references`` onto ``images`` (A's AU-free feature + B's AU-related code).

        Args:
            images: float ``[B, 3, H, W]`` in ``[-1, 1]``, any size.
            references: float ``[B, 3, H', W']`` in ``[-1, 1]`` (or ``[1, 3, H', W']``, broadcast), any size.
            landmarks: landmarks of ``images`` for ``region_source="landmarks"``.

        Returns:
            float ``[B, 3, H, W]`` in ``[-1, 1]`` (eval mode, no gradients).
        """
        check_images(images)
        check_images(references, "references")
        refs, _ = self._prepare(references, None, "references")
        if refs.shape[0] == 1 and images.shape[0] > 1:
            refs = refs.expand(images.shape[0], -1, -1, -1)
        if refs.shape[0] != images.shape[0]:
            raise ValueError(f"got {images.shape[0]} images but {refs.shape[0]} references")
        return self._generate(images, lambda coder: coder.from_image(refs), landmarks)

    def regions(self, images: torch.Tensor, landmarks: torch.Tensor | None = None) -> torch.Tensor:
        """The region masks the generator uses, float ``[B, R, H, W]`` in ``[0, 1]`` at the input size.

        * ``"segmenter"``: the soft masks ``soft_regions(segmenter(images))`` that the crop boxes come from.
        * ``"landmarks"``: the soft box masks the generator fuses with; requires ``landmarks`` ``[B, 68, 2]``.
        * ``"none"``: an empty tensor ``[B, 0, H, W]`` (global generator only).

        Channel order is :attr:`region_names`. Eval mode, no gradients.
        """
        check_images(images)
        height, width = images.shape[-2:]
        with _eval_mode(self.generator, self.segmenter):
            small, small_landmarks = self._prepare(images, landmarks)
            if self.region_source == "none":
                return small.new_zeros(images.shape[0], 0, height, width)
            if self.region_source == "segmenter":
                masks = soft_regions(self.segmenter(small), self.region_groups)
            else:
                if small_landmarks is None:
                    raise ValueError("region_source='landmarks': regions() needs landmarks [B, 68, 2]")
                boxes = self.generator.region_boxes(tuple(small.shape[-2:]), landmarks=small_landmarks)
                masks = box_masks(boxes, tuple(small.shape[-2:]), self.generator.box_feather)[:, :, 0]
            if masks.shape[-2:] != (height, width):
                masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
            return masks.clamp(0, 1)

    def face_mask(self, images: torch.Tensor) -> torch.Tensor | None:
        """Where the face is, float ``[B, 1, H, W]`` in ``[0, 1]`` at the input size, or ``None`` without a segmenter.

        The segmenter's softmax probability summed over :data:`FACE_CLASSES` (skin, brows, eyes, nose, mouth, lips;
        order A). Used by the photo pipeline as the paste mask (``segexpr.faces.edit_photo(face_mask_fn=...)``).
        Eval mode, no gradients.
        """
        if self.segmenter is None:
            return None
        from segexpr.labels import CLASS_INDEX

        check_images(images)
        height, width = images.shape[-2:]
        classes = [CLASS_INDEX[name] for name in FACE_CLASSES]
        with _eval_mode(self.segmenter):
            small, _ = self._prepare(images, None)
            probs = self.segmenter(small).float().softmax(dim=1)[:, classes].sum(dim=1, keepdim=True)
            if probs.shape[-2:] != (height, width):
                probs = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)
            return probs.clamp(0, 1)
