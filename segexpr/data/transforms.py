"""Augmentation pipelines shared by every segexpr DataModule (SynthFACS, CelebAMask-HQ, AffectNet, RaFD).

A *numpy sample* is a dict ``{"image": uint8 [H, W, 3] RGB, "mask": int [H, W] (order A, optional),
"landmarks": float [68, 2] (x, y) (optional), ...}``; :class:`FaceTransform` turns it into the batch-contract
tensors (``image`` float32 ``[3, S, S]`` in ``[-1, 1]``, ``mask`` int64 ``[S, S]``, ``landmarks`` float32
``[68, 2]``) and passes every other key through (numbers and numpy arrays become tensors).

Keypoint convention: landmarks are *continuous* pixel coordinates — pixel (row i, col j) covers
``[j, j+1) x [i, i+1)`` — so a horizontal flip maps ``x -> W - x`` and a resize scales by the factor.
Albumentations 2.x mixes conventions (its ``HorizontalFlip`` and ``Affine`` use pixel-index coordinates,
``x -> W - 1 - x``, while ``Resize`` scales continuously), so :class:`FaceHorizontalFlip` and the affine step
used here convert explicitly; every step of :func:`build_transforms` is exact in the continuous convention.

Determinism: ``transform(sample, seed=s)`` reseeds every random step from ``s`` before applying it, so the
augmentation is a pure function of ``(sample, s)``. Datasets derive ``s`` from ``(base seed, epoch, index)``
(see :func:`derive_seed`), which makes augmentation independent of worker count and iteration order.
With ``seed=None`` the pipeline's own (unseeded) generators are used.
"""
from __future__ import annotations

from typing import Any, Mapping

import albumentations as A
import cv2
import numpy as np
import torch

from segexpr.labels import FLIP_CLASS_PERMUTATION, IBUG_FLIP_PERMUTATION
from segexpr.ops.pixels import uint8_to_images

__all__ = ["AUGMENT_CHOICES", "FaceHorizontalFlip", "FaceTransform", "build_transforms", "check_augment", "derive_seed",
           "split_transforms", "to_batch_tensors"]

#: Keys that hold RGB images rendered with the same geometry as ``image`` (they get the same augmentation).
ALIGNED_IMAGE_KEYS: tuple[str, ...] = ("transfer_target", "edit_target")
#: Prefix of the keys of a paired sample's reference; the reference gets its own augmentation.
REFERENCE_PREFIX = "reference_"


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that is a pure function of non-negative integer ``parts`` (e.g. base seed, epoch, index).

    Uses :class:`numpy.random.SeedSequence`, so nearby tuples give statistically independent seeds.
    """
    if any(int(p) < 0 for p in parts):
        raise ValueError(f"seed parts must be non-negative integers, got {parts}")
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


class FaceHorizontalFlip(A.HorizontalFlip):
    """Horizontal flip that keeps face semantics: left/right parts swap labels and landmarks swap indices.

    * image: mirrored.
    * mask (order A class map): mirrored, then ``FLIP_CLASS_PERMUTATION`` swaps ``l_brow/r_brow``,
      ``l_eye/r_eye``, ``l_ear/r_ear`` (``l_*`` means the image's left, so after mirroring the labels swap).
    * keypoints: ``x -> W - x`` (continuous pixel coordinates, see module docstring), then reordered with
      ``IBUG_FLIP_PERMUTATION`` so point 36 is again the image-left eye corner. Requires 0 or 68 points; use
      ``KeypointParams(remove_invisible=False)`` so no point is dropped and the order stays valid.
    """

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        flipped = super().apply_to_mask(mask, **params)
        if flipped.ndim == 3 and flipped.shape[-1] == 1:  # albumentations may carry a channel axis
            return FLIP_CLASS_PERMUTATION.astype(flipped.dtype)[flipped[..., 0]][..., None]
        return FLIP_CLASS_PERMUTATION.astype(flipped.dtype)[flipped]

    def apply_to_keypoints(self, keypoints: np.ndarray, **params: Any) -> np.ndarray:
        if len(keypoints) not in (0, len(IBUG_FLIP_PERMUTATION)):
            raise ValueError(
                f"FaceHorizontalFlip needs the 68 iBUG landmarks (to swap left/right indices), got {len(keypoints)}; "
                "set remove_invisible=False in KeypointParams so none are dropped")
        flipped = super().apply_to_keypoints(keypoints, **params)
        flipped[:, 0] += 1.0  # albumentations flips pixel indices (W - 1 - x); the contract is W - x
        return flipped[IBUG_FLIP_PERMUTATION] if len(flipped) else flipped


class _ContinuousAffine(A.Affine):
    """``A.Affine`` whose keypoints are continuous coordinates (shifted by half a pixel around the warp)."""

    def apply_to_keypoints(self, keypoints: np.ndarray, *args: Any, **params: Any) -> np.ndarray:
        shifted = keypoints.copy()
        shifted[:, :2] -= 0.5
        out = super().apply_to_keypoints(shifted, *args, **params)
        out[:, :2] += 0.5
        return out


def _to_tensor(value: Any) -> Any:
    """Numbers/numpy arrays -> tensors (floats -> float32, ints/bools -> int64); anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (bool, np.bool_, int, np.integer)):
        return torch.tensor(int(value), dtype=torch.int64)
    if isinstance(value, (float, np.floating)):
        return torch.tensor(float(value), dtype=torch.float32)
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        dtype = torch.float32 if value.dtype.kind == "f" else torch.int64
        return torch.from_numpy(np.ascontiguousarray(value)).to(dtype)
    return value


def _image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [3, H, W] in [-1, 1]."""
    return uint8_to_images(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))


def to_batch_tensors(sample: Mapping[str, Any]) -> dict[str, Any]:
    """Convert an (already sized) numpy sample to batch-contract tensors without any resampling.

    Image-like keys (``image``, ``transfer_target``, ``edit_target``, ``reference_image``: uint8 [H, W, 3]) become float32
    [3, H, W] in [-1, 1]; ``*mask`` keys become int64 [H, W]; ``*landmarks`` float32 [68, 2]; other numbers
    and numpy arrays become tensors (see module docstring); other values pass through.
    """
    out: dict[str, Any] = {}
    for key, value in sample.items():
        base = key[len(REFERENCE_PREFIX):] if key.startswith(REFERENCE_PREFIX) else key
        if (base == "image" or key in ALIGNED_IMAGE_KEYS) and isinstance(value, np.ndarray):
            _check_image(value, key)
            out[key] = _image_to_tensor(value)
        elif base == "mask" and isinstance(value, np.ndarray):
            out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(torch.int64)
        elif base == "landmarks" and isinstance(value, np.ndarray):
            out[key] = torch.from_numpy(np.ascontiguousarray(value)).to(torch.float32)
        else:
            out[key] = _to_tensor(value)
    return out


def _check_image(image: Any, key: str = "image") -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{type(image).__name__} {getattr(image, 'dtype', '')} {getattr(image, 'shape', '')}"
        raise ValueError(f"sample[{key!r}] must be a uint8 RGB array [H, W, 3], got {desc}")


class FaceTransform:
    """Callable that maps a numpy face sample to batch-contract tensors, with optional augmentation.

    Args:
        image_size: output side ``S``; every input (square or not) is resized to ``S x S`` (the aspect ratio is
            *not* kept: crop faces square beforehand if that matters).
        train: whether the random steps (flip, affine, colour jitter) are used.
        flip_p: probability of :class:`FaceHorizontalFlip` (train only).
        affine: small random scale/rotation/translation (train only); masks use nearest-neighbour
            interpolation and the border is constant (black image, background mask).
        color_jitter: brightness/contrast/saturation/hue jitter of the image only (train only).
        scale, rotate, translate: affine ranges (factor range, degrees, fraction of the side).
        jitter_p: probability of colour jitter.

    Call ``transform(sample, seed=None)``:

    * ``sample["image"]``: uint8 ``[H, W, 3]`` RGB (required); ``sample["mask"]``: int ``[H, W]`` order A;
      ``sample["landmarks"]``: float ``[68, 2]`` continuous (x, y) pixel coordinates.
    * ``sample["transfer_target"]`` and ``sample["edit_target"]`` (uint8 ``[H, W, 3]``, ground-truth renders of
      the same face) get exactly the same augmentation as ``image``.
    * keys prefixed ``reference_`` (a paired sample's reference) are transformed as a sample of their own
      with a seed derived from ``seed``.
    * any other key is passed through (numbers/numpy arrays converted to tensors).

    Returns ``image`` float32 ``[3, S, S]`` in ``[-1, 1]``, ``mask`` int64 ``[S, S]``, ``landmarks`` float32
    ``[68, 2]`` (may fall outside the image after the affine; never dropped), plus the passthrough keys.
    """

    def __init__(
        self,
        image_size: int,
        train: bool,
        flip_p: float = 0.5,
        affine: bool = True,
        color_jitter: bool = True,
        scale: tuple[float, float] = (0.95, 1.05),
        rotate: tuple[float, float] = (-8.0, 8.0),
        translate: tuple[float, float] = (-0.04, 0.04),
        jitter_p: float = 0.8,
    ) -> None:
        if not isinstance(image_size, (int, np.integer)) or image_size < 8:
            raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
        if not 0.0 <= flip_p <= 1.0 or not 0.0 <= jitter_p <= 1.0:
            raise ValueError(f"flip_p and jitter_p must be probabilities in [0, 1], got {flip_p}, {jitter_p}")
        self.image_size = int(image_size)
        self.train = bool(train)
        steps: list[A.BasicTransform] = [
            # INTER_AREA is the alias-free choice for the (usual) downscale; the mask stays nearest.
            A.Resize(self.image_size, self.image_size, interpolation=cv2.INTER_AREA,
                     mask_interpolation=cv2.INTER_NEAREST, p=1.0),
        ]
        if self.train:
            if flip_p > 0:
                steps.append(FaceHorizontalFlip(p=flip_p))
            if affine:
                steps.append(_ContinuousAffine(
                    scale=scale, rotate=rotate, translate_percent={"x": translate, "y": translate},
                    interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=1.0))
            if color_jitter:
                steps.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=jitter_p))
        self.compose = A.Compose(
            steps,
            keypoint_params=A.KeypointParams(format="xy", remove_invisible=False),
            additional_targets={key: "image" for key in ALIGNED_IMAGE_KEYS},
            strict=True,
        )

    def __repr__(self) -> str:
        return f"FaceTransform(image_size={self.image_size}, train={self.train}, steps={self.compose.transforms})"

    def _reseed(self, seed: int) -> None:
        # One independent child seed per step: seeding every step with the same value would correlate
        # their decisions (e.g. flip and jitter would fire together).
        children = np.random.SeedSequence(int(seed)).generate_state(len(self.compose.transforms) + 1)
        self.compose.random_generator = np.random.default_rng(int(children[0]))
        for step, child in zip(self.compose.transforms, children[1:]):
            step.set_random_seed(int(child))

    def __call__(self, sample: Mapping[str, Any], seed: int | None = None) -> dict[str, Any]:
        if "image" not in sample:
            raise ValueError(f"sample has no 'image' key (keys: {sorted(sample)})")
        reference = {k[len(REFERENCE_PREFIX):]: v for k, v in sample.items() if k.startswith(REFERENCE_PREFIX)}
        own = {k: v for k, v in sample.items() if not k.startswith(REFERENCE_PREFIX)}
        out = self._transform_one(own, seed)
        if reference:
            if "image" not in reference:
                raise ValueError(f"paired sample has reference_* keys but no 'reference_image': {sorted(reference)}")
            ref_seed = None if seed is None else derive_seed(seed, 1)
            out.update({REFERENCE_PREFIX + k: v for k, v in self._transform_one(reference, ref_seed).items()})
        return out

    def _transform_one(self, sample: Mapping[str, Any], seed: int | None) -> dict[str, Any]:
        image = sample["image"]
        _check_image(image)
        height, width = image.shape[:2]
        inputs: dict[str, Any] = {"image": image}
        for key in ALIGNED_IMAGE_KEYS:
            if key in sample:
                _check_image(sample[key], key)
                if sample[key].shape != image.shape:
                    raise ValueError(f"sample[{key!r}] shape {sample[key].shape} differs from image {image.shape}")
                inputs[key] = sample[key]
        mask = sample.get("mask")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.shape != (height, width) or mask.dtype.kind not in "iu":
                raise ValueError(f"mask must be an integer array [{height}, {width}], got {mask.dtype} {mask.shape}")
            # cv2 remaps uint8/int32 but not int64; class ids fit in uint8.
            inputs["mask"] = mask.astype(np.uint8)
        landmarks = sample.get("landmarks")
        if landmarks is not None:
            landmarks = np.asarray(landmarks, dtype=np.float32)
            if landmarks.ndim != 2 or landmarks.shape[1] != 2:
                raise ValueError(f"landmarks must be [N, 2] (x, y), got shape {landmarks.shape}")
        inputs["keypoints"] = landmarks if landmarks is not None else np.zeros((0, 2), np.float32)
        if seed is not None:
            self._reseed(seed)
        result = self.compose(**inputs)
        out: dict[str, Any] = {"image": _image_to_tensor(result["image"])}
        for key in ALIGNED_IMAGE_KEYS:
            if key in inputs:
                out[key] = _image_to_tensor(result[key])
        if mask is not None:
            out["mask"] = torch.from_numpy(np.ascontiguousarray(result["mask"])).to(torch.int64)
        if landmarks is not None:
            out["landmarks"] = torch.from_numpy(np.asarray(result["keypoints"], np.float32)[:, :2].copy())
        for key, value in sample.items():
            if key not in out and key not in ("mask", "landmarks"):
                out[key] = _to_tensor(value)
        return out


def build_transforms(
    image_size: int,
    train: bool,
    flip_p: float = 0.5,
    affine: bool = True,
    color_jitter: bool = True,
    scale: tuple[float, float] = (0.95, 1.05),
    rotate: tuple[float, float] = (-8.0, 8.0),
    translate: tuple[float, float] = (-0.04, 0.04),
    jitter_p: float = 0.8,
) -> FaceTransform:
    """The standard segexpr pipeline: train = resize + flip (with l/r swaps) + small affine + colour jitter;
    eval (``train=False``) = resize + normalise only. See :class:`FaceTransform` for the arguments and the
    input/output contract."""
    return FaceTransform(image_size, train, flip_p=flip_p, affine=affine, color_jitter=color_jitter,
                         scale=scale, rotate=rotate, translate=translate, jitter_p=jitter_p)


#: The DataModules' ``augment`` values: ``True`` the full pipeline (flip + affine + colour jitter), ``"flip"``
#: horizontal flips only (StarGAN's and GANimation's training augmentation), ``False`` none.
AUGMENT_CHOICES = (True, "flip", False)


def check_augment(augment: Any, key: str = "augment") -> bool | str:
    """``augment`` if it is one of :data:`AUGMENT_CHOICES`, else a ``ValueError`` naming ``key``."""
    if not any(augment is c if isinstance(c, bool) else augment == c for c in AUGMENT_CHOICES):
        raise ValueError(f"{key} must be true (flip + affine + colour jitter), 'flip' (flips only) or false, "
                         f"got {augment!r}")
    return augment


def split_transforms(image_size: int, split: str, augment: bool | str = True) -> FaceTransform:
    """A DataModule's transform for ``split``: the training split augmented as ``augment`` says (see
    :data:`AUGMENT_CHOICES`); every other split resized and normalised only."""
    augment = check_augment(augment)
    if split != "train" or augment is False:
        return build_transforms(image_size, train=False)
    if augment == "flip":
        return build_transforms(image_size, train=True, affine=False, color_jitter=False)
    return build_transforms(image_size, train=True)
