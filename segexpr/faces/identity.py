"""Identity preservation, measured offline with dlib's 128-d face descriptor (ResNet, ~99.4% on LFW).

This is *not* ArcFace: dlib's network was trained with a metric loss that puts photos of one person within a
Euclidean distance of 0.6 of each other (dlib's usual same-person threshold), so the distance is the
calibrated figure; cosine similarity is offered as well because it reads like the usual ArcFace-style score
(1 = same direction), but dlib descriptors all sit in one cone, so unrelated faces still score ~0.8-0.9 and
the cosine has no standard threshold. ``identity_similarity`` returns the cosine, ``identity_distance`` the
Euclidean distance; report the distance when a threshold matters.

How a crop reaches the network: dlib expects a 150x150 chip cut by ``dlib.get_face_chip`` around a 5-point
shape (eye corners, nose base). For each aligned crop we (1) resize it to ``WORK_SIZE`` px (small 64-128 px
crops are upscaled: the HOG detector misses faces under ~80 px), (2) find the face with the HOG detector,
(3) if that fails (tiny, blurry or heavily edited crops), fall back to ``TEMPLATE_FACE_BOX``, the rectangle
where the HOG detector puts the face in a crop aligned by ``segexpr.faces.align``, and let the 5-point
predictor place the landmarks inside it, (4) cut the 150 px chip (padding 0.25, dlib's default for this model)
and run the network. ``face_descriptors(..., return_fallback=True)`` says which crops used the fallback.

Why not the whole crop as the fallback rectangle: the shape predictor was trained on HOG boxes, which are
tighter than an FFHQ-framed crop; given the full crop it misplaces the points and the descriptor of the very
same face moves by 0.55-0.67 (astronaut, 256/512 px), against <= 0.04 with the template box. Crops framed
differently from segexpr's alignment (e.g. loose crops) should be re-aligned first if detection fails.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from segexpr.ops.pixels import images_to_uint8

from .detect import hog_detector, import_dlib, model_path, shape_predictor

WORK_SIZE = 256
CHIP_SIZE = 150  # the descriptor network's input size
CHIP_PADDING = 0.25
SAME_PERSON_DISTANCE = 0.6  # dlib's threshold on the Euclidean distance between descriptors
# Where dlib's HOG detector boxes the face in an aligned crop, (x0, y0, x1, y1) as fractions of the crop side
# (measured on the astronaut portrait aligned with the 5-point template).
TEMPLATE_FACE_BOX = (0.254, 0.363, 0.742, 0.852)


@functools.lru_cache(maxsize=None)
def descriptor_model() -> Any:
    """dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, 22 MB), loaded once."""
    return import_dlib().face_recognition_model_v1(model_path("descriptor"))


def _to_uint8_hwc(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Crops -> uint8 [N, H, W, 3].

    torch: [N, 3, H, W] or [3, H, W], float in [-1, 1] (segexpr's convention) or uint8.
    numpy: [N, H, W, 3] or [H, W, 3], pixel values in [0, 255] (uint8 or float).
    """
    if isinstance(images, torch.Tensor):
        x = images.detach().cpu()
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a tensor [N, 3, H, W], got shape {tuple(images.shape)}")
        if x.dtype != torch.uint8:
            x = images_to_uint8(x)
        return x.permute(0, 2, 3, 1).contiguous().numpy()
    x = np.asarray(images)
    x = x[None] if x.ndim == 3 else x
    if x.ndim != 4 or x.shape[3] != 3:
        raise ValueError(f"expected an array [N, H, W, 3], got shape {np.shape(images)}")
    if x.dtype != np.uint8:
        x = np.clip(np.round(x), 0, 255).astype(np.uint8)
    return x


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if image.shape[0] == size and image.shape[1] == size:
        return np.ascontiguousarray(image)
    grow = size > max(image.shape[:2])
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_CUBIC if grow else cv2.INTER_AREA)


def _face_shape(image: np.ndarray) -> tuple[Any, bool]:
    """5-point dlib shape of the face in an aligned crop [S, S, 3] uint8; returns (shape, used_fallback)."""
    dlib = import_dlib()
    rects, scores, _ = hog_detector().run(image, 0, 0.0)
    height, width = image.shape[:2]
    if len(rects):
        # the aligned face is the one nearest the centre (a crop can include part of a neighbour)
        centre = np.array([width / 2, height / 2])
        rect = min(rects, key=lambda r: np.hypot(*(np.array([r.center().x, r.center().y]) - centre)))
        return shape_predictor("5")(image, rect), False
    x0, y0, x1, y1 = (round(v * s) for v, s in zip(TEMPLATE_FACE_BOX, (width, height, width, height)))
    return shape_predictor("5")(image, dlib.rectangle(x0, y0, x1 - 1, y1 - 1)), True


def face_descriptors(images: np.ndarray | torch.Tensor, *, return_fallback: bool = False
                     ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """dlib face descriptors of aligned face crops.

    images: torch [N, 3, H, W] float in [-1, 1] (or uint8), or numpy [N, H, W, 3] in [0, 255]; single images
    without the batch axis are accepted. Any square-ish size works; 64-1024 px tested.
    Returns float32 [N, 128] (and, with return_fallback, bool [N]: True where no face was detected in the crop
    and ``TEMPLATE_FACE_BOX`` was used as the face rectangle).
    """
    crops = _to_uint8_hwc(images)
    model = descriptor_model()
    out = np.zeros((len(crops), 128), np.float32)
    fallback = np.zeros(len(crops), bool)
    for i, crop in enumerate(crops):
        work = _resize(crop, WORK_SIZE)
        shape, fallback[i] = _face_shape(work)
        chip = import_dlib().get_face_chip(work, shape, size=CHIP_SIZE, padding=CHIP_PADDING)
        out[i] = np.asarray(model.compute_face_descriptor(chip), np.float32)
    return (out, fallback) if return_fallback else out


def _pair_descriptors(original, edited) -> tuple[np.ndarray, np.ndarray]:
    a, b = face_descriptors(original), face_descriptors(edited)
    if a.shape != b.shape:
        raise ValueError(f"original and edited must hold the same number of faces, got {len(a)} and {len(b)}")
    return a, b


def identity_similarity(original: np.ndarray | torch.Tensor, edited: np.ndarray | torch.Tensor) -> np.ndarray:
    """Cosine similarity of dlib descriptors, pair by pair: float32 [N] in [-1, 1], 1 = identical.

    original, edited: aligned crops, same layout as ``face_descriptors``. Unrelated faces typically still score
    0.8-0.9 (see module doc): use ``identity_distance`` when a same-person decision is needed.
    """
    a, b = _pair_descriptors(original, edited)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return ((a * b).sum(1) / np.maximum(norms, 1e-12)).astype(np.float32)


def identity_distance(original: np.ndarray | torch.Tensor, edited: np.ndarray | torch.Tensor) -> np.ndarray:
    """Euclidean distance of dlib descriptors, pair by pair: float32 [N] >= 0; below 0.6 = same person (dlib)."""
    a, b = _pair_descriptors(original, edited)
    return np.linalg.norm(a - b, axis=1).astype(np.float32)
