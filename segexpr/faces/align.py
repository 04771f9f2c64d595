"""Face alignment: a similarity transform from photo landmarks to the square crop the models are trained on.

The target framing is the FFHQ / CelebA-HQ one (Karras et al.): eyes level at ~47% of the height, eye centres
~25% of the width apart, mouth at ~75%. With 68 landmarks the FFHQ recipe is applied as published (eye
centres and mouth corners define an oriented square). With dlib's 5 landmarks (eye corners, base of the nose)
the transform is the least-squares similarity (Umeyama) onto ``FIVE_POINT_TEMPLATE``, a template placed where
the FFHQ recipe puts those points on an average face, so both landmark models give nearly the same crop.

Conventions: matrices are 2x3 float64 affine maps of pixel coordinates (x, y), pixel centres at integer
positions (OpenCV's convention, also dlib's); ``matrix`` always maps photo -> crop.
"""
from __future__ import annotations

import cv2
import numpy as np

# dlib's 5-point order, in normalised crop coordinates (x, y) in [0, 1]:
# 0/1 outer/inner corner of the eye on the image's right, 2/3 outer/inner corner of the image-left eye,
# 4 base of the nose (subnasale). Values: FFHQ recipe on an average face (interocular distance 0.25 of the crop,
# eye line at 0.4725, eye width 0.42 of the interocular distance, inner corners ~5 degrees of canthal tilt below
# the outer ones, nose base 0.75 interocular distances below the eye line). On the astronaut portrait the 5-point
# fit and the 68-point FFHQ recipe agree within 2% in scale, 0.2 degrees in angle, 0.01 of the crop in position.
FIVE_POINT_TEMPLATE = np.array([
    [0.6775, 0.4680],
    [0.5725, 0.4770],
    [0.3225, 0.4680],
    [0.4275, 0.4770],
    [0.5000, 0.6600],
], dtype=np.float64)

# Border handling when the crop reaches past the photo: mirrored content looks like a photo to the model,
# black bars do not (FFHQ pads by reflection for the same reason).
CROP_BORDER = cv2.BORDER_REFLECT


def _to_crop_pixels(normalised: np.ndarray, size: int) -> np.ndarray:
    """[0, 1] crop coordinates -> pixel coordinates of a size x size crop (pixel centres at integers)."""
    return normalised * size - 0.5


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src onto dst.

    src, dst: [K, 2] point sets (K >= 2). Returns a 2x3 float64 matrix. Umeyama (1991), closed form.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s ** 2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("landmarks are degenerate (all at one point); cannot align")
    u, sigma, vt = np.linalg.svd(d.T @ s / len(src))
    fix = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])  # forbid a mirror image
    rotation = u @ fix @ vt
    scale = np.trace(np.diag(sigma) @ fix) / var_s
    return np.hstack([scale * rotation, (mu_d - scale * rotation @ mu_s)[:, None]])


def ffhq_matrix(landmarks68: np.ndarray, size: int) -> np.ndarray:
    """The FFHQ alignment recipe (68 iBUG landmarks [68, 2] -> 2x3 photo -> crop matrix), without its blur/pad.

    An oriented square is centred slightly below the eyes; its side is max(4 x eye distance, 3.6 x eye-to-mouth)
    and its axis blends the eye line with the perpendicular of the eye-to-mouth line.
    """
    lm = np.asarray(landmarks68, np.float64)
    eye_left, eye_right = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg, eye_to_eye = (eye_left + eye_right) / 2, eye_right - eye_left
    eye_to_mouth = (lm[48] + lm[54]) / 2 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    centre = eye_avg + eye_to_mouth * 0.1
    quad = np.stack([centre - x - y, centre - x + y, centre + x + y])  # top-left, bottom-left, bottom-right
    corners = _to_crop_pixels(np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), size)
    return cv2.getAffineTransform(quad.astype(np.float32), corners.astype(np.float32)).astype(np.float64)


def alignment_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """Similarity transform photo -> aligned crop, 2x3 float64.

    landmarks: [5, 2] (dlib 5-point: fitted to ``FIVE_POINT_TEMPLATE``) or [68, 2] (iBUG: FFHQ recipe),
    (x, y) photo pixels. size: crop side in pixels.
    """
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape == (68, 2):
        return ffhq_matrix(landmarks, size)
    if landmarks.shape == (5, 2):
        return similarity_fit(landmarks, _to_crop_pixels(FIVE_POINT_TEMPLATE, size))
    raise ValueError(f"expected landmarks [5, 2] or [68, 2], got shape {landmarks.shape}")


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to points [K, 2]; returns float64 [K, 2]."""
    points = np.asarray(points, np.float64)
    return points @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (crop -> photo for an alignment matrix)."""
    return cv2.invertAffineTransform(np.asarray(matrix, np.float64))


def _compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 matrix of ``outer(inner(p))``."""
    linear = outer[:, :2] @ inner[:, :2]
    return np.hstack([linear, (outer[:, :2] @ inner[:, 2] + outer[:, 2])[:, None]])


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def _bounds(matrix_dst_to_src: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bounding box (x0, y0, x1, y1) in source pixels of a width x height destination, via its corners."""
    corners = np.array([[-0.5, -0.5], [width - 0.5, -0.5], [width - 0.5, height - 0.5], [-0.5, height - 0.5]])
    pts = transform_points(corners, matrix_dst_to_src)
    return np.concatenate([pts.min(0), pts.max(0)])


def _warp(src: np.ndarray, matrix: np.ndarray, width: int, height: int, border: int) -> np.ndarray:
    """Bicubic cv2.warpAffine with anti-aliasing: a shrinking map first area-resizes the region it needs.

    Plain bilinear warping of a 600 px face into a 128 px crop (or a 512 px edit into an 80 px face) aliases;
    shrinking with INTER_AREA first and then warping at scale ~1 does not. matrix maps src -> dst pixels.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.8:
        x0, y0, x1, y1 = _bounds(invert(matrix), width, height)
        # only the source region this output needs (+ margin for the interpolation footprint) is resized
        margin = 2.0 / scale + 2
        x0, y0 = (max(0, int(np.floor(v - margin))) for v in (x0, y0))
        x1, y1 = min(src.shape[1], int(np.ceil(x1 + margin))), min(src.shape[0], int(np.ceil(y1 + margin)))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            region = src[y0:y1, x0:x1]
            new_w, new_h = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
            small = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
            rx, ry = new_w / (x1 - x0), new_h / (y1 - y0)
            # small pixel q sits at region pixel (q + 0.5) / r - 0.5 (cv2.resize's centre alignment)
            small_to_src = np.array([[1 / rx, 0.0, 0.5 / rx - 0.5 + x0], [0.0, 1 / ry, 0.5 / ry - 0.5 + y0]])
            src, matrix = small, _compose(matrix, small_to_src)
    # bicubic: a photo -> crop -> photo round trip keeps ~39 dB at the face where bilinear keeps ~34 dB
    return cv2.warpAffine(src, matrix, (int(width), int(height)), flags=cv2.INTER_CUBIC, borderMode=border,
                          borderValue=0)


def warp_to_crop(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Cut the aligned face out of a photo.

    image: [H, W, 3] uint8 or float (dtype kept). matrix: 2x3 photo -> crop. Returns [size, size, 3]; the part
    of the crop outside the photo is filled by reflecting the photo at its border.
    """
    return _warp(np.ascontiguousarray(image), np.asarray(matrix, np.float64), size, size, CROP_BORDER)


def photo_window(matrix: np.ndarray, size: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Photo pixels (x0, y0, x1, y1, exclusive, clipped to ``shape`` = (H, W)) that the crop square covers."""
    x0, y0, x1, y1 = _bounds(invert(matrix), size, size)
    height, width = shape[:2]
    return (max(0, int(np.floor(x0))), max(0, int(np.floor(y0))),
            min(width, int(np.ceil(x1)) + 1), min(height, int(np.ceil(y1)) + 1))


def warp_to_photo_window(crop: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]
                         ) -> tuple[tuple[int, int, int, int], np.ndarray]:
    """Inverse-warp a crop into the photo frame, computed only where the crop lands.

    crop: [size, size, C] (or [size, size]) any real dtype. Returns (window (x0, y0, x1, y1), float32 values
    [y1 - y0, x1 - x0, C]); outside the crop square the values are 0. Memory stays proportional to the face,
    not to the photo, so many faces in a 12 MP photo stay cheap.
    """
    crop = np.ascontiguousarray(crop, dtype=np.float32)
    window = photo_window(matrix, crop.shape[0], shape)
    x0, y0, x1, y1 = window
    if x1 <= x0 or y1 <= y0:  # the crop lies entirely outside the photo
        return window, np.zeros((max(0, y1 - y0), max(0, x1 - x0)) + crop.shape[2:], np.float32)
    crop_to_window = _compose(_translation(-x0, -y0), invert(matrix))
    values = _warp(crop, crop_to_window, x1 - x0, y1 - y0, cv2.BORDER_CONSTANT)
    return window, values.reshape((y1 - y0, x1 - x0) + crop.shape[2:])


def warp_to_photo(crop: np.ndarray, matrix: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Inverse-warp a crop [size, size, C] into the full photo frame ``shape`` = (H, W): float32 [H, W, C].

    Pixels the crop does not cover are 0, so warping a *difference* (edited - crop) and adding it changes the
    photo only under the face.
    """
    crop = np.asarray(crop)
    out = np.zeros(tuple(shape[:2]) + crop.shape[2:], np.float32)
    (x0, y0, x1, y1), values = warp_to_photo_window(crop, matrix, shape)
    if values.size:
        out[y0:y1, x0:x1] = values
    return out
