"""SynthFACS: the embedded procedural face dataset (no download, deterministic, exact ground truth).

:func:`render` draws a face of any integer identity with any 17-AU vector (``AU_NAMES`` order, values in
``[0, 1]``) with OpenCV polygons: the same polygons go anti-aliased into the RGB image and aliased
(``LINE_8``) into the order-A parsing mask, so the mask matches the pixels. Landmarks (68, iBUG order,
continuous pixel coordinates, ``l_*`` = image left) come from the same geometry.

Identities (:func:`identity_params`) vary face shape, skin tone, hair style/colour, eye colour, brows, nose,
lips, ears, glasses, clothes, background, a few degrees of roll, a small yaw shift and a lighting gradient;
everything is derived from ``numpy.random.default_rng([identity, salt])``.

Action units deform the brows, eyes, nose, mouth, cheeks and chin. Contempt is unilateral: AU12/AU14 act on
the image-left side only, by the factor ``u = clip(2.5 * (AU14 - AU6), 0, 1)`` by which the image-right
side's AU12/AU14 are suppressed (so a smile with cheek raise stays symmetric, a dimpler-dominated smirk is
one-sided). This rule is a function of the AU vector alone, so ``render(id, aus)`` is fully determined.

*Only expression regions change*: the AU-dependent drawing is composited into the AU-independent face
through :func:`changeable_area` (a fixed per-identity area: convex hulls of every AU-dependent shape over
the AU cube, dilated by a few pixels), and AU-independent layers (hair, glasses) are drawn after. Two renders
of one identity are therefore byte-identical outside ``changeable_area(identity, size)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Callable, Literal, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from segexpr.data.base import FaceDataModule
from segexpr.labels import (AU_INDEX, CLASS_INDEX, NUM_AUS, NUM_EXPRESSIONS,
                                 expression_prototype)
from segexpr.data.transforms import (FaceTransform, build_transforms, check_augment, derive_seed, split_transforms,
                                     to_batch_tensors)

__all__ = [
    "HAIR_STYLES", "IdentityParams", "MAX_IDENTITY", "SPLIT_IDENTITY_OFFSET", "SyntheticFaces",
    "SyntheticFacesDataModule", "changeable_area", "identity_params", "nearest_expression", "render", "sample_aus",
]

#: Identities are integers in ``[0, MAX_IDENTITY)``.
MAX_IDENTITY = 2**31 - 1
#: Splits draw identities from disjoint ranges ``[offset, offset + pool)`` (pools must stay below 10**6).
SPLIT_IDENTITY_OFFSET: dict[str, int] = {"train": 0, "val": 1_000_000, "test": 2_000_000, "predict": 3_000_000}
_SPLIT_CODE = {"train": 0, "val": 1, "test": 2, "predict": 3}
_MAX_POOL = 1_000_000
_IDENTITY_SALT = 0x5F4C3  # keeps identity streams independent of any other use of the same integers
HAIR_STYLES: tuple[str, ...] = ("short", "long", "bald", "bun", "fringe", "afro")
_PROTOTYPES = np.stack([expression_prototype(i) for i in range(NUM_EXPRESSIONS)])
_MIN_SIZE, _MAX_SIZE = 16, 1024
_SHIFT = 4  # cv2 subpixel bits: coordinates are drawn with 1/16 px precision

Color = tuple[float, float, float]


# ------------------------------------------------------------------------------------------------ identities
@dataclass(frozen=True)
class IdentityParams:
    """Every AU-independent property of a SynthFACS face. Lengths are fractions of the image side (``face_*``,
    ``center``) or of the face half-width/half-height (features); colours are RGB 0-255."""

    identity: int
    center: tuple[float, float]
    face_w: float
    face_h: float
    jaw_taper: float
    skin: Color
    hair_style: str
    hair_color: Color
    brow_color: Color
    eye_color: Color
    lip_color: Color
    brow_thickness: float
    brow_arch: float
    brow_height: float
    eye_x: float
    eye_y: float
    eye_w: float
    eye_h: float
    eye_tilt: float
    nose_w: float
    nose_len: float
    mouth_w: float
    mouth_y: float
    upper_lip: float
    lower_lip: float
    bg_top: Color
    bg_bottom: Color
    cloth_color: Color
    neck_w: float
    roll_deg: float
    yaw: float
    light_angle: float
    light_strength: float
    glasses: bool
    glasses_color: Color


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> Color:
    return tuple(float(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _scale(c: Sequence[float], f: float) -> Color:
    return tuple(float(min(255.0, max(0.0, x * f))) for x in c)  # type: ignore[return-value]


_SKIN_LIGHT, _SKIN_MID, _SKIN_DARK = (250, 222, 200), (205, 150, 110), (95, 60, 42)
_HAIR_COLORS = [(28, 24, 22), (58, 38, 26), (100, 66, 40), (140, 70, 36), (205, 172, 110), (165, 162, 158)]
_EYE_COLORS = [(70, 45, 25), (110, 75, 40), (60, 110, 170), (70, 125, 80), (125, 105, 55), (110, 120, 130)]
_BG_COLORS = [(70, 90, 140), (150, 170, 190), (200, 200, 190), (120, 150, 110), (170, 120, 130), (60, 60, 70),
              (210, 190, 150), (100, 140, 160)]
_CLOTH_COLORS = [(40, 60, 120), (150, 30, 40), (30, 30, 35), (220, 220, 215), (60, 110, 60), (200, 150, 40),
                 (110, 70, 130), (90, 90, 100)]


def _check_identity(identity: Any) -> int:
    if isinstance(identity, (bool, np.bool_)) or not isinstance(identity, (int, np.integer)):
        raise ValueError(f"identity must be an integer in [0, {MAX_IDENTITY}), got {identity!r}")
    if not 0 <= int(identity) < MAX_IDENTITY:
        raise ValueError(f"identity {int(identity)} is out of range [0, {MAX_IDENTITY})")
    return int(identity)


@lru_cache(maxsize=4096)
def identity_params(identity: int) -> IdentityParams:
    """Derive all parameters of ``identity`` (an integer in ``[0, MAX_IDENTITY)``) deterministically.

    Uses ``numpy.random.default_rng([identity, salt])``: the result never depends on global random state.
    """
    identity = _check_identity(identity)
    rng = np.random.default_rng([identity, _IDENTITY_SALT])
    u = rng.uniform
    tone = u(0, 1)  # light (0) to dark (1)
    skin = _mix(_SKIN_LIGHT, _SKIN_MID, tone * 2) if tone < 0.5 else _mix(_SKIN_MID, _SKIN_DARK, tone * 2 - 1)
    skin = _scale(skin, u(0.95, 1.05))
    hair_style = HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))]
    hair = _scale(_HAIR_COLORS[int(rng.integers(len(_HAIR_COLORS)))], u(0.85, 1.15))
    # brows follow the hair colour but stay clearly darker than the skin (light hair on dark skin)
    brow = tuple(min(h, k) for h, k in zip(_scale(hair, 0.6), _scale(skin, 0.4)))
    lip_tint = u(0, 1)
    lip = _mix(_scale(skin, 0.8), (185, 70, 80), 0.35 + 0.35 * lip_tint)
    bg_a = _BG_COLORS[int(rng.integers(len(_BG_COLORS)))]
    bg_b = _scale(_BG_COLORS[int(rng.integers(len(_BG_COLORS)))], u(0.6, 1.0))
    return IdentityParams(
        identity=identity,
        center=(0.5 + u(-0.015, 0.015), 0.47 + u(-0.015, 0.015)),
        face_w=u(0.27, 0.32), face_h=u(0.35, 0.39), jaw_taper=u(0.1, 0.38),
        skin=skin, hair_style=hair_style, hair_color=hair, brow_color=brow,
        eye_color=_scale(_EYE_COLORS[int(rng.integers(len(_EYE_COLORS)))], u(0.85, 1.15)), lip_color=lip,
        brow_thickness=u(0.07, 0.11), brow_arch=u(0.02, 0.07), brow_height=u(-0.33, -0.28),
        eye_x=u(0.38, 0.44), eye_y=u(-0.1, -0.05), eye_w=u(0.2, 0.24), eye_h=u(0.06, 0.08), eye_tilt=u(-0.02, 0.03),
        nose_w=u(0.15, 0.22), nose_len=u(0.26, 0.34),
        mouth_w=u(0.3, 0.38), mouth_y=u(0.54, 0.6), upper_lip=u(0.045, 0.07), lower_lip=u(0.06, 0.09),
        bg_top=bg_a, bg_bottom=bg_b,
        cloth_color=_scale(_CLOTH_COLORS[int(rng.integers(len(_CLOTH_COLORS)))], u(0.8, 1.1)),
        neck_w=u(0.42, 0.55), roll_deg=u(-4.0, 4.0), yaw=u(-0.06, 0.06),
        light_angle=u(0, 2 * math.pi), light_strength=u(0.05, 0.22),
        glasses=bool(u(0, 1) < 0.2), glasses_color=_scale((40, 35, 30) if u(0, 1) < 0.7 else (150, 40, 40), u(0.8, 1.2)),
    )


# ------------------------------------------------------------------------------------------------ AU geometry
def _flat(x: Any) -> np.ndarray:
    """An AU value (float or [B, 1]) as a [B] array or a scalar."""
    return np.asarray(x, np.float64).reshape(-1)


def _check_aus(aus: Any) -> np.ndarray:
    arr = np.asarray(aus, dtype=np.float64)
    if arr.shape != (NUM_AUS,):
        raise ValueError(f"aus must be a vector of {NUM_AUS} intensities (AU_NAMES order), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"aus must be finite and in [0, 1], got range [{arr.min()}, {arr.max()}]")
    return arr


def _bump(t: np.ndarray, power: float = 0.8) -> np.ndarray:
    return np.sin(np.pi * np.clip(t, 0, 1)) ** power


@lru_cache(maxsize=None)
def _unit_circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.cos(ang), np.sin(ang)


def _ellipse(cu: Any, cv: Any, ru: Any, rv: Any, n: int = 20) -> np.ndarray:
    """Ellipse polygon [..., n, 2] in face coordinates (batched when any argument is [B, 1])."""
    cos, sin = _unit_circle(n)
    return _curve(cu + ru * cos, cv + rv * sin)


def _curve(u: Any, v: Any) -> np.ndarray:
    """Stack broadcast u and v into points [..., N, 2] (a cheaper np.stack(np.broadcast_arrays(u, v), -1))."""
    u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
    out = np.empty((*np.broadcast_shapes(u.shape, v.shape), 2))
    out[..., 0] = u
    out[..., 1] = v
    return out


_T11 = np.linspace(0, 1, 11)
_T6 = np.linspace(0, 1, 6)
_T17 = np.linspace(-1, 1, 17)
_CHIN_DEG = np.linspace(50, 130, 13)
_CHIN_COS, _CHIN_SIN = np.cos(np.radians(_CHIN_DEG)), np.sin(np.radians(_CHIN_DEG))
_YAW4, _YAW5 = np.linspace(1, 1.3, 4), np.linspace(1, 1.3, 5)
_CHIN_CREASE_U = np.linspace(-0.18, 0.18, 7)


def _geometry(p: IdentityParams, aus: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """AU-dependent shapes in face coordinates (u: face half-widths, image-left negative; v: face half-heights,
    down positive), batched over AU vectors ``aus`` [B, 17].

    Returns ``(shapes, intensity)``: shapes name -> [B, N, 2]; intensity name -> [B] in [0, 1] (line darkness).
    Every AU's contribution is (displacement) * (AU) * (a factor in [0, 1]), which keeps each point inside the
    box that :func:`changeable_area` computes from the per-AU extremes.
    """
    if len(aus) == 1:  # one render: Python floats are much cheaper than [1, 1] arrays in scalar algebra
        a: dict[str, Any] = {name: float(aus[0, i]) for name, i in AU_INDEX.items()}
    else:
        a = {name: aus[:, i:i + 1] for name, i in AU_INDEX.items()}  # each [B, 1]
    uni = np.clip(2.5 * (a["AU14"] - a["AU6"]), 0, 1)  # float or [B, 1]: unilateral (contempt) factor for the image-right side
    side_aus = {-1: (a["AU12"], a["AU14"]), 1: (a["AU12"] * (1 - uni), a["AU14"] * (1 - uni))}
    yaw = p.yaw
    shapes: dict[str, np.ndarray] = {}
    inten: dict[str, np.ndarray] = {}
    t = _T11  # along brows / eyelids

    # ---- chin outline (AU26 jaw drop lowers it; only the chin segment moves)
    cu, sv = _CHIN_COS, _CHIN_SIN
    drop = 0.13 * a["AU26"] * np.clip((sv - 0.8) / 0.2, 0, 1) ** 1.2
    shapes["chin"] = _curve(cu * (1 - p.jaw_taper * sv**2), sv + drop)
    shapes["chin_neutral"] = _curve(cu * (1 - p.jaw_taper * sv**2), sv + 0 * drop)
    for side, name in ((-1, "l"), (1, "r")):
        s = side
        # ---- brows: t=0 inner end, t=1 outer end
        inner, outer = 0.12, 0.74
        bu = s * (inner + t * (outer - inner) - 0.08 * a["AU4"] * (1 - t) ** 1.5) + yaw
        bv = (p.brow_height - p.brow_arch * _bump(t ** 0.9, 1.0) + 0.02 * t
              - 0.17 * a["AU1"] * (1 - t) ** 1.3 - 0.15 * a["AU2"] * t ** 0.7
              + 0.09 * a["AU4"] * (1 - 0.5 * t))
        half = p.brow_thickness * (1.15 - 0.55 * t) * 0.5
        top, bottom = _curve(bu, bv - half), _curve(bu, bv + half)
        shapes[f"{name}_brow"] = np.concatenate([top, bottom[..., ::-1, :]], -2)
        shapes[f"{name}_brow_line"] = _curve(bu, bv)[..., [0, 2, 5, 8, 10], :]  # t = 0, .2, .5, .8, 1
        # ---- eyes: t=0 outer corner, t=1 inner corner
        eu = s * (p.eye_x + p.eye_w * (1 - 2 * t)) + yaw
        corner_v = p.eye_y - p.eye_tilt * (1 - 2 * t) * 0.5
        h_low = p.eye_h * 0.7 * (1 - 0.45 * a["AU6"] - 0.35 * a["AU7"] + 0.15 * a["AU5"])
        h_up = p.eye_h * (1 + 0.9 * a["AU5"]) * (1 - 0.3 * a["AU7"]) * (1 - 0.25 * a["AU6"])
        h_up = h_up * (1 - a["AU43"]) - 0.85 * h_low * a["AU43"]
        shapes[f"{name}_eye_top"] = _curve(eu, corner_v - h_up * _bump(t))
        shapes[f"{name}_eye_bot"] = _curve(eu, corner_v + h_low * _bump(t))
        crease_h = np.maximum(h_up, 0) + p.eye_h * (0.55 - 0.3 * a["AU5"])
        shapes[f"{name}_crease"] = _curve(eu, corner_v - crease_h * _bump(t, 0.6))[..., 1:-1, :]
        shapes[f"{name}_bag"] = _curve(eu, corner_v + (h_low + p.eye_h * 0.55) * _bump(t, 0.7))[..., 2:-2, :]
        inten[f"{name}_bag"] = 0.15 + 0.6 * _flat(a["AU6"])
        # cheek (AU6 raises it)
        shapes[f"{name}_cheek"] = _ellipse(s * 0.5 + yaw, 0.22 - 0.07 * a["AU6"], 0.15, 0.09, 16)
        inten[f"{name}_cheek"] = _flat(a["AU6"])
        # ---- mouth corners (per-side AU12/AU14 for contempt)
        a12, a14 = side_aus[side]
        # saturating sums (tanh) keep combinations of AUs from pulling the corners off the face
        out = 0.13 * np.tanh((0.12 * a12 + 0.13 * a["AU20"] + 0.05 * a14 - 0.08 * a["AU23"] - 0.09 * a["AU26"]
                              - 0.03 * a["AU15"]) / 0.13)
        rise = 0.13 * np.tanh((-0.14 * a12 + 0.02 * a["AU20"] + 0.12 * a["AU15"] - 0.04 * a14 + 0.05 * a["AU26"]
                               + 0.03 * a["AU17"] - 0.02 * a["AU10"]) / 0.13)
        shapes[f"{name}_corner"] = _curve(s * (p.mouth_w + out) + yaw, p.mouth_y + rise)
        # dimple (AU14) and depressor line (AU15) just outside the corner
        cu_, cv_ = shapes[f"{name}_corner"][..., 0], shapes[f"{name}_corner"][..., 1]
        shapes[f"{name}_dimple"] = _curve(cu_ + s * np.array([0.06, 0.09, 0.08]), cv_ + np.array([-0.05, 0.0, 0.05]))
        inten[f"{name}_dimple"] = 0.85 * _flat(a14)
        shapes[f"{name}_depressor"] = _curve(cu_ + s * np.array([0.02, 0.05]), cv_ + np.array([0.03, 0.13]))
        inten[f"{name}_depressor"] = 0.7 * _flat(a["AU15"])
        # nasolabial fold: from the nose wing to just outside the mouth corner
        wing_u = s * (p.nose_w + 0.05 + 0.03 * a["AU9"]) + yaw
        wing_v = p.nose_len - 0.04 - 0.05 * a["AU9"] - 0.03 * a["AU10"]
        end_u, end_v = cu_ + s * 0.07, cv_ + 0.02
        ft = _T6
        shapes[f"{name}_fold"] = _curve(wing_u + (end_u - wing_u) * ft + s * 0.06 * np.sin(np.pi * ft),
                                        wing_v + (end_v - wing_v) * ft)
        inten[f"{name}_fold"] = np.clip(0.2 + 0.55 * _flat(a12) + 0.5 * _flat(a["AU10"]) + 0.35 * _flat(a["AU9"]), 0, 1)
        # nostrils
        shapes[f"{name}_nostril"] = _ellipse(s * p.nose_w * 0.45 + yaw * 1.3,
                                             p.nose_len + 0.01 - 0.05 * a["AU9"] - 0.02 * a["AU10"],
                                             p.nose_w * 0.26 + 0.015 * a["AU9"], 0.022, 12)
        shapes[f"{name}_alar"] = _curve(
            s * (p.nose_w * np.array([0.55, 0.95, 1.0, 0.8]) + 0.03 * a["AU9"]) + yaw * 1.2,
            p.nose_len + np.array([-0.1, -0.06, -0.01, 0.025]) - 0.05 * a["AU9"] - 0.02 * a["AU10"])

    # ---- glabella (AU4) and forehead lines (AU1/AU2)
    for k, s in enumerate((-1, 1)):
        shapes[f"glabella{k}"] = _curve(s * 0.045 + yaw + 0 * a["AU4"], p.brow_height + np.array([0.0, 0.12]))
        inten[f"glabella{k}"] = 0.85 * _flat(a["AU4"])
    inten["jaw_drop"] = _flat(a["AU26"])

    # ---- nose (AU9 wrinkles/lifts, AU10 lifts the wings slightly)
    lift = 0.05 * a["AU9"] + 0.02 * a["AU10"]
    nv = np.array([-0.06, 0.1, p.nose_len - 0.1, p.nose_len - 0.02, p.nose_len + 0.045])
    nw = np.array([0.07, 0.09, p.nose_w * 0.85, p.nose_w, p.nose_w * 0.55])
    lift_w = np.array([0.0, 0.2, 0.7, 1.0, 1.0])
    left = _curve(-nw - 0.03 * a["AU9"] * lift_w + yaw * _YAW5, nv - lift * lift_w)
    right = _curve(nw + 0.03 * a["AU9"] * lift_w + yaw * _YAW5, nv - lift * lift_w)
    shapes["nose"] = np.concatenate([left, right[..., ::-1, :]], -2)
    shapes["nose_bridge"] = _curve(yaw * _YAW4 + 0 * a["AU9"],
                                   np.linspace(-0.03, p.nose_len - 0.03, 4) - lift * np.array([0, 0.3, 0.7, 1.0]))
    shapes["nose_base"] = _curve(p.nose_w * np.array([-0.75, -0.4, 0, 0.4, 0.75]) + yaw * 1.3,
                                 p.nose_len + np.array([0.03, 0.04, 0.045, 0.04, 0.03]) - lift)
    shapes["nose_tip"] = _ellipse(yaw * 1.3, p.nose_len - 0.035 - lift, p.nose_w * 0.35, 0.045, 12)
    for k, dv in enumerate((0.0, 0.05, 0.1)):
        shapes[f"nose_wrinkle{k}"] = _curve(yaw + np.array([-0.1, -0.03, 0.03, 0.1]),
                                            0.06 + dv + np.array([0.01, 0, 0, 0.01]) - 0.02 * a["AU9"])
        inten[f"nose_wrinkle{k}"] = 0.9 * _flat(a["AU9"])

    # ---- lips (t: -1 image-left corner .. 1 image-right corner)
    lt = _T17
    cl, cr = shapes["l_corner"], shapes["r_corner"]  # [B, 1, 2]
    w = (lt + 1) / 2
    mu = cl[..., 0] * (1 - w) + cr[..., 0] * w + 0 * lt
    centre_v = p.mouth_y - 0.04 * a["AU17"] - 0.03 * a["AU10"] + 0.02 * a["AU26"]
    base = cl[..., 1] * (1 - w) + cr[..., 1] * w
    base = base + (centre_v - (cl[..., 1] + cr[..., 1]) / 2) * (1 - lt**2)
    taper = (1 - lt**2) ** 0.6
    open_up = 0.03 * a["AU25"] + 0.035 * a["AU10"] + 0.03 * a["AU26"]
    open_down = 0.045 * a["AU25"] + 0.2 * a["AU26"]
    inner_up = base - open_up * taper
    inner_low = base + open_down * taper
    up_th = p.upper_lip * (1 - 0.6 * a["AU23"])
    low_th = p.lower_lip * (1 - 0.55 * a["AU23"]) * (1 + 0.25 * a["AU17"])
    bow = 1 - 0.3 * np.exp(-(lt / 0.13) ** 2)
    outer_up = inner_up - up_th * (1 - lt**2) ** 0.45 * bow - 0.012 * (1 - lt**2)
    outer_low = inner_low + low_th * (1 - lt**2) ** 0.5
    for key, v in (("lip_outer_up", outer_up), ("lip_inner_up", inner_up), ("lip_inner_low", inner_low),
                   ("lip_outer_low", outer_low)):
        shapes[key] = _curve(mu, v)
    # mentolabial crease and chin boss (AU17)
    chin_v = outer_low[..., 8:9] + 0.07
    cu2 = _CHIN_CREASE_U
    shapes["chin_crease"] = _curve(cu2 + yaw, chin_v + 0.03 * (cu2 / 0.18) ** 2)
    inten["chin_crease"] = 0.25 + 0.6 * _flat(a["AU17"])
    shapes["chin_boss"] = _ellipse(yaw, chin_v + 0.11 + 0.13 * a["AU26"] - 0.02 * a["AU17"], 0.16, 0.07, 14)
    inten["chin_boss"] = _flat(a["AU17"])
    batch = len(aus)  # AU-independent shapes (and all shapes of a single render) get the batch axis too
    shapes = {k: v if v.ndim == 3 else np.broadcast_to(v, (batch, *v.shape)) for k, v in shapes.items()}
    inten = {k: np.broadcast_to(v, (batch,)) for k, v in inten.items()}
    return shapes, inten


# ------------------------------------------------------------------------------------------------ drawing
class _Canvas:
    """An RGB image and its label map drawn with the same polygons (continuous pixel coordinates)."""

    def __init__(self, image: np.ndarray, mask: np.ndarray, thickness: int) -> None:
        self.image, self.mask, self.thickness = image, mask, thickness

    @staticmethod
    def _fixed(points: np.ndarray) -> np.ndarray:
        # continuous coordinate x -> cv2 pixel-centre coordinate x - 0.5, in 1/16 px fixed point
        return np.rint((np.asarray(points, np.float64) - 0.5) * (1 << _SHIFT)).astype(np.int32)

    def fill(self, points: np.ndarray, color: Color, label: int | None = None) -> None:
        pts = [self._fixed(points)]
        cv2.fillPoly(self.image, pts, color, cv2.LINE_AA, _SHIFT)
        if label is not None:
            cv2.fillPoly(self.mask, pts, label, cv2.LINE_8, _SHIFT)

    def line(self, points: np.ndarray, color: Color, thickness: int | None = None, label: int | None = None,
             closed: bool = False) -> None:
        pts = [self._fixed(points)]
        th = self.thickness if thickness is None else thickness
        cv2.polylines(self.image, pts, closed, color, th, cv2.LINE_AA, _SHIFT)
        if label is not None:
            cv2.polylines(self.mask, pts, closed, label, th, cv2.LINE_8, _SHIFT)


class _Frame:
    """Face coordinates (u, v) -> continuous pixel coordinates (x, y), with the identity's roll."""

    def __init__(self, p: IdentityParams, size: int) -> None:
        self.cx, self.cy = p.center[0] * size, p.center[1] * size
        self.w, self.h = p.face_w * size, p.face_h * size
        r = math.radians(p.roll_deg)
        self.cos, self.sin = math.cos(r), math.sin(r)

        # x = cx + cos*w*u - sin*h*v, y = cy + sin*w*u + cos*h*v, as one matrix product
        self.matrix = np.array([[self.cos * self.w, self.sin * self.w], [-self.sin * self.h, self.cos * self.h]])
        self.offset = np.array([self.cx, self.cy])

    def __call__(self, uv: Any) -> np.ndarray:
        return np.asarray(uv, np.float64) @ self.matrix + self.offset


def _outline(p: IdentityParams, n: int = 72) -> np.ndarray:
    """Neutral face outline [n, 2] in face coordinates (top of the skull to the chin)."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    cu, sv = np.cos(theta), np.sin(theta)
    lower = np.clip(sv, 0, 1)
    u = cu * (1 - p.jaw_taper * lower**2) * (1 + 0.04 * np.clip(-sv, 0, 1))
    return np.stack([u, sv], -1)


def _hair_shapes(p: IdentityParams) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(back shapes drawn behind the head, front shapes drawn over the face), in face coordinates."""
    back, front = [], []
    theta = np.linspace(np.pi, 2 * np.pi, 25)  # image-left, over the top, image-right
    cap_outer = np.stack([1.1 * np.cos(theta), -0.08 + 1.02 * np.sin(theta)], -1)
    hair_v = {"fringe": -0.5, "short": -0.6, "bun": -0.62, "long": -0.58, "afro": -0.6, "bald": -0.85}[p.hair_style]
    hu = np.linspace(0.97, -0.97, 25)  # hairline from image-right temple to image-left temple
    hairline = np.stack([hu, hair_v + (0.08 if p.hair_style == "fringe" else 0.42) * np.abs(hu) ** 2.2
                         - 0.03 * np.cos(hu * 9) * (p.hair_style != "fringe")], -1)
    if p.hair_style == "bald":
        for s in (-1, 1):  # short hair above the ears only
            front.append(np.array([[s * 1.06, -0.35], [s * 0.93, -0.42], [s * 0.9, -0.05], [s * 1.05, 0.02]]))
        return back, front
    if p.hair_style == "long":
        back.append(np.array([[-1.25, -0.3], [-1.3, 1.35], [1.3, 1.35], [1.25, -0.3]]))
        for s in (-1, 1):  # locks in front of the ears
            front.append(np.array([[s * 1.14, -0.5], [s * 0.9, -0.35], [s * 0.93, 0.3], [s * 1.05, 1.3],
                                   [s * 1.3, 1.35], [s * 1.22, 0.2]]))
    if p.hair_style == "bun":
        back.append(_ellipse(0.0, -1.15, 0.42, 0.28, 24))
    if p.hair_style == "afro":
        back.append(_ellipse(0.0, -0.25, 1.5, 1.05, 32))
    if p.hair_style == "short":
        for s in (-1, 1):  # sideburns
            front.append(np.array([[s * 1.0, -0.45], [s * 0.9, -0.4], [s * 0.92, 0.05], [s * 1.0, 0.08]]))
    front.append(np.concatenate([cap_outer, hairline], 0))
    return back, front


#: Memory the cache of each render size's AU-independent layers may fill (at least 512 identities are kept, as
#: before this budget): 64 MiB holds 2,048 identities at 64 px, the main job's whole pool of 2,000, where 512 of
#: them (a quarter) were held and three renders in four drew their identity's layers again.
_STATIC_CACHE_BYTES = 64 << 20


@lru_cache(maxsize=None)
def _static_layers_cache(size: int) -> Callable[[IdentityParams], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The LRU cache of :func:`_static_layers` at ``size``, sized by :data:`_STATIC_CACHE_BYTES`."""
    entry_bytes = size * size * (3 + 1 + 4)  # image uint8 x3, mask uint8, gain float32
    return lru_cache(maxsize=max(512, _STATIC_CACHE_BYTES // entry_bytes))(partial(_draw_static_layers, size=size))


def _static_layers(p: IdentityParams, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AU-independent base (image uint8 [S,S,3], mask uint8 [S,S]) and lighting gain (float32 [S,S,1]), cached
    per identity (read them, never write to them)."""
    return _static_layers_cache(size)(p)


def _draw_static_layers(p: IdentityParams, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_static_layers` without the cache."""
    frame = _Frame(p, size)
    ys = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    image = (np.array(p.bg_top, np.float32) * (1 - ys) + np.array(p.bg_bottom, np.float32) * ys)
    image = np.ascontiguousarray(np.broadcast_to(image, (size, size, 3))).round().astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    canvas = _Canvas(image, mask, max(1, round(size / 80)))
    skin = p.skin
    back, _ = _hair_shapes(p)
    for shape in back:
        canvas.fill(frame(shape), p.hair_color, CLASS_INDEX["hair"])
    # neck and clothes
    nw = p.neck_w
    canvas.fill(frame([[-nw, 0.3], [nw, 0.3], [nw * 1.05, 1.6], [-nw * 1.05, 1.6]]), _scale(skin, 0.85),
                CLASS_INDEX["neck"])
    canvas.fill(frame([[-nw * 0.9, 0.95], [nw * 0.9, 0.95], [nw * 0.7, 1.25], [-nw * 0.7, 1.25]]),
                _scale(skin, 0.72), CLASS_INDEX["neck"])  # shadow under the chin
    cloth_u = np.linspace(-1, 1, 21)
    collar = np.stack([cloth_u * 2.2, 1.3 + 0.25 * cloth_u**2 - 0.12 * np.exp(-(cloth_u / 0.25) ** 2)], -1)
    canvas.fill(frame(np.concatenate([collar, [[2.4, 2.2], [-2.4, 2.2]]], 0)), p.cloth_color, CLASS_INDEX["cloth"])
    # ears (hidden by long hair locks, drawn later)
    for s, label in ((-1, "l_ear"), (1, "r_ear")):
        canvas.fill(frame(_ellipse(s * 0.98, 0.02, 0.14, 0.22, 18)), _scale(skin, 0.93), CLASS_INDEX[label])
        canvas.line(frame(_ellipse(s * 1.0, 0.02, 0.07, 0.13, 12)[[9, 10, 11, 0, 1, 2, 3]] if s < 0 else
                          _ellipse(s * 1.0, 0.02, 0.07, 0.13, 12)[[3, 4, 5, 6, 7, 8, 9]]),
                    _scale(skin, 0.7))
    # face and static cheeks
    canvas.fill(frame(_outline(p)), skin, CLASS_INDEX["skin"])
    for s in (-1, 1):
        canvas.fill(frame(_ellipse(s * 0.62 + p.yaw, 0.2, 0.2, 0.1, 16)), _mix(skin, (215, 110, 110), 0.08))
    # lighting: a linear gain across the image, brighter towards the light
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    gain = 1 + p.light_strength * (np.cos(p.light_angle) * xx + np.sin(p.light_angle) * yy) * 2
    return image, mask, gain[..., None].astype(np.float32)


#: Filled AU-dependent shapes, as (name, parts joined into one polygon); their swept convex hulls are changeable.
_ZONE_POLYGONS: tuple[tuple[str, tuple[tuple[str, bool], ...]], ...] = (
    *((f"{s}_eye", ((f"{s}_eye_top", False), (f"{s}_eye_bot", True))) for s in "lr"),
    *((f"{s}_{part}", ((f"{s}_{part}", False),)) for s in "lr" for part in ("brow", "cheek", "nostril")),
    ("nose", (("nose", False),)), ("nose_tip", (("nose_tip", False),)), ("chin_boss", (("chin_boss", False),)),
    ("upper_lip", (("lip_outer_up", False), ("lip_inner_up", True))),
    ("lower_lip", (("lip_inner_low", False), ("lip_outer_low", True))),
    ("inner_mouth", (("lip_inner_up", False), ("lip_inner_low", True))),
)
#: Stroked AU-dependent curves: every segment's swept convex hull is changeable.
_ZONE_CURVES: tuple[str, ...] = (
    "chin", "chin_neutral", "chin_crease", "glabella0", "glabella1",
    "nose_bridge", "nose_wrinkle0", "nose_wrinkle1", "nose_wrinkle2",
    *(f"{s}_{part}" for s in "lr" for part in ("eye_top", "eye_bot", "crease", "bag",
                                               "fold", "dimple", "depressor", "alar")),
)


def _zone_samples() -> np.ndarray:
    """AU vectors whose shapes bound every AU setting: 0, 1, each AU alone, the prototypes and 256 random cube
    vertices (the geometry is monotone or saturating in each AU, so its extremes sit at cube vertices)."""
    vertices = np.random.default_rng(12345).integers(0, 2, (256, NUM_AUS)).astype(np.float64)
    return np.vstack([np.zeros(NUM_AUS), np.ones(NUM_AUS), np.eye(NUM_AUS), _PROTOTYPES, vertices])


_ZONE_SAMPLES = _zone_samples()


@lru_cache(maxsize=2048)
def _changeable_area_cached(p: IdentityParams, size: int) -> np.ndarray:
    shapes, _ = _geometry(p, _ZONE_SAMPLES)
    frame = _Frame(p, size)
    area = np.zeros((size, size), np.uint8)

    def fixed_keys(points: np.ndarray) -> np.ndarray:
        """Face coordinates ``[..., 2]`` -> cv2 fixed-point pixels packed as ``x << 32 | y`` (int64 ``[...]``)."""
        xy = _Canvas._fixed(frame(points.reshape(-1, 2))).astype(np.int64)
        return (xy[:, 0] << 32 | (xy[:, 1] & 0xFFFFFFFF)).reshape(points.shape[:-1])

    def fill_hulls(keys: np.ndarray) -> None:
        """Fill the convex hull of each row of packed points ``[H, M]``. The hull of a row's *distinct* points
        is the hull of the row; most of the zone samples repeat a point, so deduplicating first (one sort for
        all rows) makes the hulls several times cheaper."""
        keys = np.sort(keys, axis=1)
        distinct = np.ones(keys.shape, bool)
        distinct[:, 1:] = keys[:, 1:] != keys[:, :-1]
        for row, keep in zip(keys, distinct):
            row = row[keep]
            points = np.empty((len(row), 2), np.int32)
            points[:, 0] = row >> 32
            points[:, 1] = (row & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
            cv2.fillConvexPoly(area, cv2.convexHull(points), 1, cv2.LINE_8, _SHIFT)

    for _, parts in _ZONE_POLYGONS:
        fill_hulls(fixed_keys(np.concatenate([shapes[k][:, ::-1] if rev else shapes[k] for k, rev in parts], 1)
                              ).reshape(1, -1))
    for name in _ZONE_CURVES:
        keys = fixed_keys(shapes[name])  # [samples, N]; segment i sweeps points i and i + 1 over every sample
        fill_hulls(np.concatenate([keys[:, :-1], keys[:, 1:]], 0).T)
    # margin: anti-aliasing and line thickness spill up to ~thickness/2 + 1 px outside the shapes
    margin = max(2, round(size / 64))
    area = cv2.dilate(area, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1)))
    area = area.astype(bool)
    area.setflags(write=False)
    return area


def changeable_area(identity: int | IdentityParams, size: int = 128) -> np.ndarray:
    """Pixels that any AU setting can change for ``identity`` at ``size``: bool ``[size, size]``.

    It is the union of the areas swept by every AU-dependent shape (brows, eyes and lids, lid creases and
    bags, crow's feet, cheeks, nose and its wrinkles, nasolabial folds, lips and inner mouth, dimples, chin):
    for filled shapes the convex hull of the shape over a fixed set of AU vectors that spans the AU cube
    (0, 1, each AU alone, the prototypes and 256 cube vertices), for strokes the same per segment, dilated by
    ``max(2, round(size / 64))`` px for anti-aliasing and line width. Renders are
    composited through this area, so pixels outside it never depend on the AUs.
    """
    p = identity if isinstance(identity, IdentityParams) else identity_params(_check_identity(identity))
    return _changeable_area_cached(p, _check_size(size))


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not _MIN_SIZE <= size <= _MAX_SIZE:
        raise ValueError(f"size must be an integer in [{_MIN_SIZE}, {_MAX_SIZE}], got {size!r}")
    return int(size)


def _clip_ellipse(cu: float, cv: float, ru: float, rv: float, lid_u: np.ndarray, lid_top: np.ndarray,
                  lid_bot: np.ndarray, n: int = 14) -> np.ndarray | None:
    """Polygon of an ellipse clipped to the eye aperture between two lid curves (face coordinates)."""
    order = np.argsort(lid_u)
    xs = cu + ru * np.cos(np.linspace(np.pi, 0, n))
    half = rv * np.sqrt(np.clip(1 - ((xs - cu) / ru) ** 2, 0, 1))
    top = np.maximum(cv - half, np.interp(xs, lid_u[order], lid_top[order]))
    bot = np.minimum(cv + half, np.interp(xs, lid_u[order], lid_bot[order]))
    keep = bot - top > 1e-4
    if keep.sum() < 2:
        return None
    xs, top, bot = xs[keep], top[keep], bot[keep]
    return np.concatenate([np.stack([xs, top], -1), np.stack([xs, bot], -1)[::-1]], 0)


def nearest_expression(aus: Any) -> int:
    """Index of the expression prototype nearest (Euclidean) to an AU vector [17] in [0, 1]."""
    return int(np.argmin(((_PROTOTYPES - _check_aus(aus)[None]) ** 2).sum(1)))


def render(identity: int | IdentityParams, aus: Any, size: int = 128) -> dict[str, Any]:
    """Render one SynthFACS face.

    Args:
        identity: integer identity in ``[0, MAX_IDENTITY)`` or its :class:`IdentityParams`.
        aus: 17 AU intensities in ``[0, 1]`` (``AU_NAMES`` order; array-like).
        size: image side in pixels, ``16..1024``.

    Returns a numpy sample: ``image`` uint8 ``[size, size, 3]`` RGB; ``mask`` uint8 ``[size, size]`` (order A);
    ``landmarks`` float32 ``[68, 2]`` (x, y) continuous pixel coordinates; ``aus`` float32 ``[17]``;
    ``expression`` int (the prototype nearest to ``aus``, :func:`nearest_expression`); ``identity`` int.
    Use :func:`segexpr.data.transforms.to_batch_tensors` for tensors.
    """
    p = identity if isinstance(identity, IdentityParams) else identity_params(_check_identity(identity))
    size = _check_size(size)
    aus_vec = _check_aus(aus)
    base_image, base_mask, gain = _static_layers(p, size)
    image, mask = base_image.copy(), base_mask.copy()
    thick = max(1, round(size / 80))
    canvas = _Canvas(image, mask, thick)
    frame = _Frame(p, size)
    shapes_b, inten_b = _geometry(p, aus_vec[None])
    shapes = {k: v[0].reshape(-1, 2) for k, v in shapes_b.items()}
    inten = {k: float(v[0]) for k, v in inten_b.items()}
    skin = p.skin
    dark = _scale(skin, 0.55)

    def stroke(name: str, width: int | None = None, color: Color = dark) -> None:
        level = inten.get(name, 1.0)
        if level > 0.02:
            canvas.line(frame(shapes[name]), _mix(skin, color, level), width)

    # ---- AU-dependent layer (composited through changeable_area below)
    if inten["jaw_drop"] > 0:  # the band between the neutral and the lowered chin
        canvas.fill(frame(np.concatenate([shapes["chin"], shapes["chin_neutral"][::-1]])), skin, CLASS_INDEX["skin"])
    for s in ("l", "r"):
        level = inten[f"{s}_cheek"]
        if level > 0.02:
            canvas.fill(frame(shapes[f"{s}_cheek"]), _mix(skin, _scale(skin, 1.12), level))
    canvas.fill(frame(shapes["chin_boss"]), _mix(skin, _scale(skin, 1.08), inten["chin_boss"]))
    for name in ("glabella0", "glabella1", "l_fold", "r_fold", "l_bag", "r_bag",
                 "chin_crease", "l_dimple", "r_dimple", "l_depressor", "r_depressor",
                 ):
        stroke(name)
    # nose
    canvas.fill(frame(shapes["nose"]), _scale(skin, 0.93), CLASS_INDEX["nose"])
    canvas.fill(frame(shapes["nose_tip"]), _scale(skin, 1.0), CLASS_INDEX["nose"])
    canvas.line(frame(shapes["nose_bridge"][1:]), _scale(skin, 0.86))
    for s in ("l", "r"):
        canvas.line(frame(shapes[f"{s}_alar"]), _scale(skin, 0.68))
        canvas.fill(frame(shapes[f"{s}_nostril"]), _scale(skin, 0.3), CLASS_INDEX["nose"])
    for k in range(3):
        stroke(f"nose_wrinkle{k}")
    # eyes
    for s, label in (("l", "l_eye"), ("r", "r_eye")):
        top, bot = shapes[f"{s}_eye_top"], shapes[f"{s}_eye_bot"]
        stroke(f"{s}_crease", color=_scale(skin, 0.7))
        canvas.fill(frame(np.concatenate([top, bot[::-1]])), (238, 236, 230), CLASS_INDEX[label])
        centre_u = float(top[[0, -1], 0].mean())
        centre_v = float(top[[0, -1], 1].mean())
        iris_r = p.eye_h * 0.95 * frame.h  # pixels; a circle on screen
        for radius, color in ((iris_r, p.eye_color), (iris_r * 0.45, (15, 12, 12))):
            poly = _clip_ellipse(centre_u, centre_v + 0.005, radius / frame.w, radius / frame.h,
                                 top[:, 0], top[:, 1], bot[:, 1])
            if poly is not None:
                canvas.fill(frame(poly), color, CLASS_INDEX[label])
        glint = _clip_ellipse(centre_u + 0.3 * iris_r / frame.w, centre_v - 0.3 * iris_r / frame.h,
                              0.22 * iris_r / frame.w, 0.22 * iris_r / frame.h, top[:, 0], top[:, 1], bot[:, 1])
        if glint is not None:
            canvas.fill(frame(glint), (250, 250, 250), CLASS_INDEX[label])
        canvas.line(frame(top), (25, 20, 20), thick + (size >= 96))
        canvas.line(frame(bot[1:-1]), _scale(skin, 0.7))
    # brows
    for s, label in (("l", "l_brow"), ("r", "r_brow")):
        canvas.fill(frame(shapes[f"{s}_brow"]), p.brow_color, CLASS_INDEX[label])
    # mouth: inner mouth, teeth, lips
    up, low = shapes["lip_inner_up"], shapes["lip_inner_low"]
    gap = low[:, 1] - up[:, 1]
    if gap.max() > 0.008:
        canvas.fill(frame(np.concatenate([up, low[::-1]])), (70, 20, 28), CLASS_INDEX["mouth"])
        tooth = np.minimum(up[:, 1] + 0.06, low[:, 1])
        teeth = np.concatenate([up[3:-3], np.stack([up[3:-3, 0], tooth[3:-3]], -1)[::-1]])
        canvas.fill(frame(teeth), (240, 238, 228), CLASS_INDEX["mouth"])
        if gap.max() > 0.12:  # lower teeth and tongue when the jaw drops
            tongue = np.stack([low[4:-4, 0], np.maximum(low[4:-4, 1] - 0.05, up[4:-4, 1] + 0.06)], -1)
            canvas.fill(frame(np.concatenate([low[4:-4], tongue[::-1]])), (170, 70, 80), CLASS_INDEX["mouth"])
    canvas.fill(frame(np.concatenate([shapes["lip_outer_up"], up[::-1]])), _scale(p.lip_color, 0.93),
                CLASS_INDEX["u_lip"])
    canvas.fill(frame(np.concatenate([low, shapes["lip_outer_low"][::-1]])), p.lip_color, CLASS_INDEX["l_lip"])
    canvas.line(frame(np.concatenate([shapes["l_corner"], up[1:-1], shapes["r_corner"]])), _scale(p.lip_color, 0.45),
                1, None)

    # ---- composite: outside changeable_area nothing depends on the AUs
    area = _changeable_area_cached(p, size)
    np.copyto(image, base_image, where=~area[..., None])
    np.copyto(mask, base_mask, where=~area)

    # ---- AU-independent layers drawn over the face
    _, front = _hair_shapes(p)
    for shape in front:
        canvas.fill(frame(shape), p.hair_color, CLASS_INDEX["hair"])
        canvas.line(frame(shape), _scale(p.hair_color, 0.75), closed=True)
    if p.glasses:
        ring_r = (p.eye_w + 0.07)
        for s in (-1, 1):
            ring = _ellipse(s * p.eye_x + p.yaw, p.eye_y + 0.01, ring_r, ring_r * 0.9 * frame.w / frame.h * 0.75, 24)
            canvas.line(frame(ring), p.glasses_color, thick, CLASS_INDEX["eye_g"], closed=True)
        bridge = np.array([[-(p.eye_x - ring_r), p.eye_y - 0.03], [0, p.eye_y - 0.06], [p.eye_x - ring_r, p.eye_y - 0.03]])
        canvas.line(frame(bridge + [p.yaw, 0]), p.glasses_color, thick, CLASS_INDEX["eye_g"])
    image = np.clip(image * gain, 0, 255).astype(np.uint8)
    return {"image": image, "mask": mask, "landmarks": _landmarks(p, shapes, frame), "aus": aus_vec.astype(np.float32),
            "expression": nearest_expression(aus_vec), "identity": p.identity}


def _landmarks(p: IdentityParams, shapes: Mapping[str, np.ndarray], frame: _Frame) -> np.ndarray:
    """68 iBUG landmarks (continuous pixel coordinates) from the geometry of one render."""
    theta = np.radians(np.linspace(172, 8, 17))
    sv = np.sin(theta)
    jaw = np.stack([np.cos(theta) * (1 - p.jaw_taper * np.clip(sv, 0, 1) ** 2), sv], -1)
    chin = shapes["chin"]  # 45..135 degrees, AU26 moves it: interpolate the drop onto the jaw points
    chin_deg = _CHIN_DEG
    neutral_chin_v = np.sin(np.radians(chin_deg))
    drop = np.interp(np.degrees(theta), chin_deg, chin[:, 1] - neutral_chin_v, left=0, right=0)
    jaw[:, 1] += drop
    l_brow = shapes["l_brow_line"][::-1]  # 17-21: outer -> inner
    r_brow = shapes["r_brow_line"]        # 22-26: inner -> outer
    eyes = []
    for s in ("l", "r"):
        top, bot = shapes[f"{s}_eye_top"], shapes[f"{s}_eye_bot"]  # t: 0 outer .. 10 inner
        if s == "l":  # 36 outer, 37, 38 upper, 39 inner, 40, 41 lower
            eyes.append(np.stack([top[0], top[3], top[7], top[10], bot[7], bot[3]]))
        else:         # 42 inner, 43, 44 upper, 45 outer, 46, 47 lower
            eyes.append(np.stack([top[10], top[7], top[3], top[0], bot[3], bot[7]]))
    ou, iu, il, ol = (shapes[k] for k in ("lip_outer_up", "lip_inner_up", "lip_inner_low", "lip_outer_low"))
    outer = np.stack([ou[0], ou[3], ou[6], ou[8], ou[10], ou[13], ou[16], ol[13], ol[10], ol[8], ol[6], ol[3]])
    inner = np.stack([(iu[1] + il[1]) / 2, iu[5], iu[8], iu[11], (iu[15] + il[15]) / 2, il[11], il[8], il[5]])
    points = np.concatenate([jaw, l_brow, r_brow, shapes["nose_bridge"], shapes["nose_base"], *eyes, outer, inner])
    assert points.shape == (68, 2)
    return frame(points).astype(np.float32)


# ------------------------------------------------------------------------------------------------ dataset
def sample_aus(rng: np.random.Generator, expression: int) -> np.ndarray:
    """AUs [17] of one SynthFACS face showing ``expression``, as the dataset draws them: the prototype times a
    per-AU intensity U(0.6, 1.0), plus U(0, 0.15) on two AUs the prototype leaves at 0, clipped to [0, 1]."""
    proto = _PROTOTYPES[expression]
    aus = proto * rng.uniform(0.6, 1.0, NUM_AUS)
    free = np.flatnonzero(proto == 0)
    noisy = rng.choice(free, size=min(2, len(free)), replace=False)
    aus[noisy] += rng.uniform(0.0, 0.15, len(noisy))
    return np.clip(aus, 0, 1).astype(np.float32)


class SyntheticFaces(Dataset):
    """SynthFACS as a map-style dataset.

    Item ``i`` (a pure function of ``(seed, split, i)`` — and of the epoch set by :meth:`set_epoch` for the
    augmentation only — never of global random state, worker count or order):

    * identity ``SPLIT_IDENTITY_OFFSET[split] + (i % identities)``: every identity of the split's pool
      appears ``length / identities`` times; splits use disjoint identity ranges;
    * expression uniform over the 8 classes (i.i.d. per item), AUs = prototype * U(0.6, 1.0) per AU plus
      U(0, 0.15) on two AUs the prototype leaves at 0, clipped to [0, 1]; ``expression`` is the drawn class;
    * ``pairs=True`` adds the ``reference_*`` fields of a different identity of the pool with its own
      expression, ``transfer_target`` = ``render(identity, reference AUs)["image"]``, and a label edit with
      its answer: ``edit_expression`` (uniform over the 8 classes) and ``edit_target`` =
      ``render(identity, expression_prototype(edit_expression))["image"]`` (the prototype at full intensity:
      what ``JointModule.edit(image, expression=edit_expression)`` should produce).

    With ``transform=None`` items are batch-contract tensors at ``size``: ``image`` float32 [3, S, S] in [-1, 1],
    ``mask`` int64 [S, S], ``landmarks`` float32 [68, 2], ``aus`` float32 [17], ``expression``/``identity``
    int64. With a :class:`FaceTransform` the numpy render is passed through it with the per-item seed
    ``derive_seed(seed, split code, epoch, i)``. Every item also carries that seed as ``sample_seed`` (int64
    scalar), the per-sample key of :class:`~segexpr.modules.JointModule`'s training randomness.

    Args:
        size: render side (16..1024).
        length: number of items.
        seed: base seed of expressions, AU jitter, pairing and augmentation.
        split: "train", "val", "test" or "predict".
        identities: identity pool size (default ``max(1, length // 10)``; at least 2 with ``pairs``).
        pairs: add a reference, the transfer ground truth, and an edit label with its ground truth.
        transform: optional :class:`FaceTransform` (or any callable ``(sample, seed=...) -> dict``).
        answers: with ``pairs``, render the answers ``transfer_target`` and ``edit_target`` (half an item's
            rendering time); ``False`` leaves them out and changes nothing else of the item.
    """

    render = staticmethod(render)

    def __init__(self, size: int = 128, length: int = 10000, seed: int = 0, split: str = "train",
                 identities: int | None = None, pairs: bool = False,
                 transform: FaceTransform | Callable[..., dict] | None = None, answers: bool = True) -> None:
        self.size = _check_size(size)
        if split not in SPLIT_IDENTITY_OFFSET:
            raise ValueError(f"unknown split {split!r}; expected one of {tuple(SPLIT_IDENTITY_OFFSET)}")
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise ValueError(f"length must be a positive integer, got {length!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        pool = max(2 if pairs else 1, int(length) // 10) if identities is None else identities
        if isinstance(pool, bool) or not isinstance(pool, (int, np.integer)) or not 1 <= pool < _MAX_POOL:
            raise ValueError(f"identities must be an integer in [1, {_MAX_POOL}), got {identities!r}")
        if pairs and pool < 2:
            raise ValueError(f"pairs=True needs at least 2 identities (the reference is another identity), got {pool}")
        self.length, self.seed, self.split = int(length), int(seed), split
        self.identities, self.pairs, self.transform = int(pool), bool(pairs), transform
        self.answers = bool(answers)
        # shared memory so that persistent DataLoader workers see set_epoch from the main process
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation of ``epoch`` (called by the DataModule's sampler; renders do not change)."""
        self._epoch[0] = int(epoch)

    def identity_of(self, index: int) -> int:
        return SPLIT_IDENTITY_OFFSET[self.split] + index % self.identities

    def sample_numpy(self, index: int) -> dict[str, Any]:
        """Item ``index`` as numpy arrays at ``size`` (before any transform)."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.length:
            raise IndexError(f"index {index!r} out of range for SyntheticFaces of length {self.length}")
        index = int(index)
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[self.split], index])
        expression = int(rng.integers(NUM_EXPRESSIONS))
        identity = self.identity_of(index)
        sample = render(identity, sample_aus(rng, expression), self.size)
        sample["expression"] = expression
        if self.pairs:
            offset = int(rng.integers(1, self.identities))  # never 0: a different identity
            ref_identity = SPLIT_IDENTITY_OFFSET[self.split] + (index + offset) % self.identities
            ref_expression = int(rng.integers(NUM_EXPRESSIONS))
            reference = render(ref_identity, sample_aus(rng, ref_expression), self.size)
            reference["expression"] = ref_expression
            for key in ("image", "mask", "aus", "expression", "identity", "landmarks"):
                sample[f"reference_{key}"] = reference[key]
            # Drawn after everything above, so adding it left the other fields of every item unchanged.
            edit_expression = int(rng.integers(NUM_EXPRESSIONS))
            sample["edit_expression"] = edit_expression
            if self.answers:  # two of an item's four renders: skipped where nothing reads them (unpaired training)
                sample["transfer_target"] = render(identity, reference["aus"], self.size)["image"]
                sample["edit_target"] = render(identity, _PROTOTYPES[edit_expression], self.size)["image"]
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.sample_numpy(index)
        seed = derive_seed(self.seed, _SPLIT_CODE[self.split], int(self._epoch[0]), int(index))
        item = to_batch_tensors(sample) if self.transform is None else self.transform(sample, seed=seed)
        # Per-item key for training-time randomness (JointModule's targets, GP weights): a property of the
        # sample, not of the rank or batch position it lands in, so DDP and resumed runs draw the same numbers.
        item["sample_seed"] = torch.tensor(seed, dtype=torch.int64)
        return item


class SyntheticFacesDataModule(FaceDataModule):
    """SynthFACS train/val/test/predict loaders.

    Args:
        size: render side; ``image_size`` (default: ``size``) is what the loaders yield.
        train_length, val_length, test_length: items per split (predict uses the test length).
        seed: base seed (items, shuffling, augmentation).
        pairs: yield paired items (``reference_*``, ``transfer_target``, ``edit_expression``, ``edit_target``).
        augment: the train split's augmentation: ``true`` flip + small affine + colour jitter, ``"flip"`` flips
            only, ``false`` none (:func:`~segexpr.data.transforms.split_transforms`); val/test/predict use the
            eval transform (resize only), or none when ``size == image_size``.
        identities: identity pool size per split (default ``length // 10`` of each split).
        train_answers: with ``pairs``, the train split renders the edits' answers too (``transfer_target``,
            ``edit_target``): only a paired loss (``JointModule(lambda_paired > 0)``) and the training diagnostics
            ``*_l1_gt`` read them. ``False`` halves the training split's rendering; val/test always have them.
        batch_size, num_workers, pin_memory: see :class:`~segexpr.data.base.FaceDataModule`.
    """

    def __init__(self, size: int = 128, train_length: int = 10000, val_length: int = 500, test_length: int = 500,
                 seed: int = 0, pairs: bool = False, augment: bool | Literal["flip"] = True,
                 identities: int | None = None,
                 batch_size: int = 16, num_workers: int = 0, pin_memory: bool = False,
                 image_size: int | None = None, references: bool = False, train_answers: bool = True) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory, seed=seed,
                         image_size=size if image_size is None else image_size, references=references)
        if references and pairs:
            raise ValueError("pairs=True already gives every item its (paired) reference; use references=True "
                             "with pairs=False for unpaired references")
        self.save_hyperparameters()
        # Record the size the loaders yield, not None: loggers merge these hparams with the model's (JointModule's
        # image_size) and refuse keys that disagree. An explicit dict wins over LightningCLI's given config.
        self.save_hyperparameters({**dict(self.hparams), "image_size": self.image_size})
        self.size = _check_size(size)
        for name, value in (("train_length", train_length), ("val_length", val_length), ("test_length", test_length)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.lengths = {"train": train_length, "val": val_length, "test": test_length, "predict": test_length}
        self.pairs, self.augment, self.identities = pairs, check_augment(augment), identities
        self.train_answers = bool(train_answers)

    def build_dataset(self, split: str) -> SyntheticFaces:
        if split == "train" and self.augment is not False:
            transform: FaceTransform | None = split_transforms(self.image_size, split, self.augment)
        elif self.size != self.image_size:
            transform = build_transforms(self.image_size, train=False)
        else:
            transform = None
        return SyntheticFaces(size=self.size, length=self.lengths[split], seed=self.seed, split=split,
                              identities=self.identities, pairs=self.pairs, transform=transform,
                              answers=self.train_answers or split != "train")
