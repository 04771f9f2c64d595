"""Edit every face in a real photo: detect, align, edit at the model's size, warp back, paste seamlessly.

Only the *change* is pasted: ``out = photo + warp_back(mask * (edited - crop))``. Pixels outside the (feathered)
face mask keep their original values exactly, and inside it the photo keeps its own resolution and detail,
with the model's low-resolution change added on top. Nothing of the model's reconstruction error of unedited
content reaches the photo, which is why an identity edit returns the input unchanged.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from segexpr.ops.pixels import uint8_to_images

from .align import alignment_matrix, warp_to_crop, warp_to_photo_window
from .detect import DEFAULT_MAX_DETECT_SIDE, DEFAULT_MIN_SCORE, DetectedFace, detect_faces

# Gaussian sigma of the mask's soft edge, as a fraction of the crop side (0.03 -> ~8 px at 256 px).
DEFAULT_FEATHER = 0.03
# Default face region in an aligned crop (FFHQ framing): an ellipse from mid-forehead to just below the chin,
# cheek to cheek; centre (x, y) and semi-axes as fractions of the crop side.
FACE_ELLIPSE_CENTRE = (0.5, 0.58)
FACE_ELLIPSE_AXES = (0.24, 0.33)
# Mask values below this are set to 0 so that the pasted region has a compact support.
MASK_CUTOFF = 1e-3


class NoFaceFound(ValueError):
    """No usable face in a photo (none detected, or all smaller than ``min_face_size``)."""


@dataclass
class PhotoEditResult:
    """Output of ``edit_photo``.

    image: the edited photo, same size (after EXIF orientation) and mode as the input; alpha kept unchanged.
    faces: the faces edited, largest first (align=False: one pseudo-face covering the image, no landmarks,
        score NaN).
    crops: float [N, 3, size, size] in [-1, 1], the aligned inputs given to ``edit_fn``.
    edited_crops: float [N, 3, size, size] in [-1, 1], what ``edit_fn`` returned (clamped).
    masks: float [N, 1, size, size] in [0, 1], the feathered paste masks in crop space.
    matrices: float64 [N, 2, 3], photo -> crop alignment matrices (align=False: a plain rescale).
    """

    image: Image.Image
    faces: list[DetectedFace]
    crops: torch.Tensor
    edited_crops: torch.Tensor
    masks: torch.Tensor | None = None
    matrices: np.ndarray | None = None


# ----------------------------------------------------------------------------------------------- image modes
def _split_mode(image: Image.Image) -> tuple[np.ndarray, Callable[[np.ndarray], Image.Image]]:
    """PIL image -> (uint8 RGB [H, W, 3], restore): ``restore(rgb)`` rebuilds an image in the input's mode.

    Grey is edited as RGB (3 equal channels) and converted back with the ITU-R 601 luma, which returns the
    original value wherever the three channels are unchanged. Alpha is set aside and put back untouched.
    Palette images keep their palette: unchanged pixels keep their index, changed ones take the nearest colour.
    Other modes (CMYK, I, F, ...) go through RGB and back with PIL's conversions.
    """
    mode = image.mode
    alpha = image.getchannel("A") if mode in ("RGBA", "LA") else None
    rgb = np.asarray(image.convert("RGB"))

    def restore(out: np.ndarray) -> Image.Image:
        edited = Image.fromarray(out, "RGB")
        if mode in ("RGB", "RGBA", "L", "LA"):
            result = edited.convert(mode[0] if mode in ("L", "LA") else "RGB")
            if alpha is not None:
                result = result.convert(mode)
                result.putalpha(alpha)
            return result
        if mode == "P":
            return _requantise(edited, image, unchanged=(out == rgb).all(-1))
        try:
            return edited.convert(mode)
        except (ValueError, OSError):
            warnings.warn(f"cannot convert the edited photo back to mode {mode}; returning RGB")
            return edited

    return rgb, restore


def _requantise(edited: Image.Image, original: Image.Image, unchanged: np.ndarray) -> Image.Image:
    """Map an edited RGB image back onto ``original``'s palette (mode P), keeping unchanged pixels' indices."""
    result = edited.quantize(palette=original, dither=Image.Dither.NONE)
    indices = np.array(result)
    indices[unchanged] = np.asarray(original)[unchanged]  # also keeps a transparency index where it was
    out = Image.fromarray(indices, "P")
    out.putpalette(original.getpalette())
    return out


# ----------------------------------------------------------------------------------------------- tensors
def _to_tensor(crops: list[np.ndarray]) -> torch.Tensor:
    """uint8 crops [size, size, 3] -> float [N, 3, size, size] in [-1, 1]."""
    return uint8_to_images(torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2))


def _run_edit(edit_fn: Callable[[torch.Tensor], torch.Tensor], crops: torch.Tensor) -> torch.Tensor:
    """One ``edit_fn`` call on all crops (no autograd: an editor that needs it can use torch.enable_grad())."""
    with torch.no_grad():
        edited = edit_fn(crops.clone())  # clone: an in-place editor must not alter the reference crops
    if not isinstance(edited, torch.Tensor) or tuple(edited.shape) != tuple(crops.shape):
        got = tuple(edited.shape) if isinstance(edited, torch.Tensor) else type(edited).__name__
        raise ValueError(f"edit_fn must return a tensor of shape {tuple(crops.shape)}, got {got}")
    edited = edited.detach().float().cpu()
    if not torch.isfinite(edited).all():  # NaN would turn into arbitrary pixel values in the photo
        raise ValueError("edit_fn returned NaN or infinite values")
    return edited.clamp(-1, 1)


def _run_mask(face_mask_fn: Callable[[torch.Tensor], torch.Tensor] | None, crops: torch.Tensor) -> np.ndarray:
    """Face masks float [N, size, size] in [0, 1]: ``face_mask_fn(crops)`` or the template ellipse."""
    n, _, size, _ = crops.shape
    if face_mask_fn is None:
        return np.repeat(ellipse_mask(size)[None], n, axis=0)
    with torch.no_grad():
        masks = face_mask_fn(crops.clone())
    masks = torch.as_tensor(masks).detach().float().cpu()
    if masks.ndim == 3:
        masks = masks[:, None]
    if tuple(masks.shape) != (n, 1, size, size):
        raise ValueError(f"face_mask_fn must return masks of shape {(n, 1, size, size)}, got {tuple(masks.shape)}")
    return masks[:, 0].clamp(0, 1).numpy()


# ----------------------------------------------------------------------------------------------- masks
def ellipse_mask(size: int) -> np.ndarray:
    """Template face region of an aligned crop: float32 [size, size], 1 inside the ellipse, 0 outside."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cx, cy = (c * size - 0.5 for c in FACE_ELLIPSE_CENTRE)
    ax, ay = (a * size for a in FACE_ELLIPSE_AXES)
    return (((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1.0).astype(np.float32)


def feather_mask(mask: np.ndarray, sigma: float, *, taper_border: bool = True) -> np.ndarray:
    """Soften a face mask [S, S] in [0, 1]: dilate by ~sigma, Gaussian-blur by sigma (pixels), cut tiny values.

    The dilation keeps the whole face region at (nearly) full strength, the blur spreads the transition over
    the surrounding ~2 sigma. taper_border: fade to 0 within 2 sigma of the crop's edges, so that the square
    outline of the crop never shows in the photo.
    """
    mask = np.clip(np.asarray(mask, np.float32), 0, 1)
    if sigma > 0:
        radius = max(1, int(round(sigma)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.GaussianBlur(cv2.dilate(mask, kernel), (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    if taper_border:
        size = mask.shape[0]
        idx = np.arange(size, dtype=np.float32)
        ramp = np.clip(np.minimum(idx, size - 1 - idx) / max(2.0 * sigma, 1.0), 0, 1)
        mask = mask * ramp[:, None] * ramp[None, :]
    mask[mask < MASK_CUTOFF] = 0
    return mask


# ----------------------------------------------------------------------------------------------- paste
def _paste_change(photo: np.ndarray, delta: np.ndarray, matrix: np.ndarray) -> None:
    """Add a crop-space change [size, size, 3] (pixel units) to ``photo`` (uint8 [H, W, 3]) in place."""
    (x0, y0, x1, y1), values = warp_to_photo_window(delta, matrix, photo.shape[:2])
    if values.size == 0:
        return
    region = photo[y0:y1, x0:x1].astype(np.float32) + values
    photo[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)


def _crop_change(crop: torch.Tensor, edited: torch.Tensor, mask: np.ndarray) -> np.ndarray:
    """mask * (edited - crop) for one face, as float32 [size, size, 3] in pixel units (x 127.5)."""
    delta = ((edited - crop) * 127.5).permute(1, 2, 0).numpy()
    return delta * mask[..., None]


# ----------------------------------------------------------------------------------------------- detection
def _usable_faces(rgb: np.ndarray, *, landmarks: str, min_face_size: int, max_faces: int | None,
                  upsample: int, min_score: float, max_detect_side: int | None) -> list[DetectedFace]:
    """Detect, drop small faces, keep the largest ``max_faces``; raise NoFaceFound with the reason."""
    found = detect_faces(rgb, landmarks=landmarks, upsample=upsample, min_face_size=0, min_score=min_score,
                         max_detect_side=max_detect_side)
    height, width = rgb.shape[:2]
    if not found:
        raise NoFaceFound(
            f"no face found in the {width}x{height} image (dlib HOG detector: frontal faces, about 40 px and up "
            f"with upsample=1); if the image is already an aligned face crop, use align=False")
    faces = [f for f in found if f.size >= min_face_size]
    if not faces:
        sizes = ", ".join(str(f.size) for f in found)
        raise NoFaceFound(
            f"{len(found)} face(s) found in the {width}x{height} image but all too small (sizes: {sizes} px, "
            f"min_face_size={min_face_size} px); lower min_face_size to edit them")
    return faces if max_faces is None else faces[:max_faces]


# ----------------------------------------------------------------------------------------------- entry point
def edit_photo(image: Image.Image, edit_fn: Callable[[torch.Tensor], torch.Tensor], *, size: int,
               face_mask_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, align: bool = True,
               landmarks: str = "5", max_faces: int | None = 8, min_face_size: int = 32,
               feather: float = DEFAULT_FEATHER, upsample: int = 1, min_score: float = DEFAULT_MIN_SCORE,
               max_detect_side: int | None = DEFAULT_MAX_DETECT_SIDE) -> PhotoEditResult:
    """Edit every face of a photo with a model that edits aligned square face crops.

    image: any PIL image; EXIF orientation is applied first (the output is upright and has the transposed
        size); grey (L/LA) and palette images are edited as RGB and converted back; alpha is kept unchanged.
    edit_fn: aligned crops float [N, 3, size, size] in [-1, 1] (all faces, one call) -> same shape and range.
        Runs under torch.no_grad(); move the tensor to the model's device inside edit_fn.
    size: the crop side the model works at.
    face_mask_fn: crops -> float [N, 1, size, size] in [0, 1], the face region (e.g. skin, brows, eyes, nose,
        mouth of a face parser). None: a template ellipse of the aligned face.
    align: False when the whole image is already one aligned face: it is resized to size x size, edited, and
        the change is resized back (face_mask_fn, when given, restricts the change as usual).
    landmarks: "5" (default, CC0 model) or "68" (iBUG 300-W model: non-commercial licence, opt-in).
    max_faces: edit at most this many faces, the largest. min_face_size: smaller faces (box side, px) are
        skipped: the model's change would be upscaled from a few pixels.
    feather: Gaussian sigma of the mask's edge as a fraction of ``size``.
    upsample, min_score, max_detect_side: passed to ``detect_faces``.

    Raises NoFaceFound when no face is detected or all are smaller than min_face_size.
    Faces whose crops overlap receive both changes (each face's change is added in turn).
    """
    upright = ImageOps.exif_transpose(image)
    rgb, restore = _split_mode(upright)
    if align:
        faces = _usable_faces(rgb, landmarks=landmarks, min_face_size=min_face_size, max_faces=max_faces,
                              upsample=upsample, min_score=min_score, max_detect_side=max_detect_side)
        matrices = np.stack([alignment_matrix(f.landmarks, size) for f in faces])
        crops = _to_tensor([warp_to_crop(rgb, m, size) for m in matrices])
    else:
        faces, matrices = _whole_image_face(rgb, size)
        crops = _to_tensor([_resize(rgb, size, size)])
    edited = _run_edit(edit_fn, crops)
    masks = _paste_masks(face_mask_fn, crops, feather * size, align)
    out = rgb.copy()
    for crop, new, mask, matrix in zip(crops, edited, masks, matrices):
        change = _crop_change(crop, new, mask)
        if align:
            _paste_change(out, change, matrix)
        else:
            out[:] = np.clip(np.rint(out + _resize(change, *out.shape[1::-1])), 0, 255).astype(np.uint8)
    result = restore(out)
    result.info.update({k: v for k, v in upright.info.items() if k not in result.info})
    return PhotoEditResult(image=result, faces=faces, crops=crops, edited_crops=edited,
                           masks=torch.from_numpy(masks)[:, None], matrices=matrices)


def _whole_image_face(rgb: np.ndarray, size: int) -> tuple[list[DetectedFace], np.ndarray]:
    """align=False: one pseudo-face covering the image, and the matrix of the plain rescale to size x size."""
    height, width = rgb.shape[:2]
    face = DetectedFace(box=(0, 0, width, height), landmarks=np.zeros((0, 2), np.float32), score=math.nan)
    sx, sy = size / width, size / height
    # pixel-centre aligned, the same map as cv2.resize
    return [face], np.array([[[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]]])


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize [H, W, C]: area averaging when shrinking (no aliasing), bilinear when enlarging (no overshoot,
    so a change of exactly 0 stays 0 between changed pixels)."""
    shrink = width < image.shape[1] or height < image.shape[0]
    return cv2.resize(image, (int(width), int(height)), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _paste_masks(face_mask_fn, crops: torch.Tensor, sigma: float, align: bool) -> np.ndarray:
    """Feathered paste masks float32 [N, size, size] in [0, 1].

    align=False without face_mask_fn: all ones (the whole change is pasted). Without alignment there is no crop
    outline to hide, so the border taper is off.
    """
    n, _, size, _ = crops.shape
    if not align and face_mask_fn is None:
        return np.ones((n, size, size), np.float32)
    return np.stack([feather_mask(m, sigma, taper_border=align) for m in _run_mask(face_mask_fn, crops)])
