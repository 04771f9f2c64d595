"""Label constants shared by every dataset, model and metric in segexpr.

Conventions (documented once, used everywhere):

* Parsing classes use **order A** (the face-parsing.PyTorch / BiSeNet order). The official CelebAMask-HQ
  order is **order B**; :data:`A_TO_B` and :data:`B_TO_A` convert class maps between them.
* ``l_*`` / ``r_*`` parts are the parts on the **image's** left / right (the viewer's perspective), the same
  side convention as the iBUG 68-point landmark order (points 36-41 are the image-left eye).
* Expressions use the AffectNet code order (0 neutral ... 7 contempt).
* Action units are the 17 intensities OpenFace 2 reports, in OpenFace's column order, scaled to [0, 1]
  (OpenFace intensity / 5). OpenFace measures lid closure as ``AU45_r`` (blink); segexpr stores it in the
  ``AU43`` slot (eyes closed), the same muscle action, which SynthFACS renders as lid closure.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

#: The 19 parsing classes in order A (face-parsing.PyTorch). Index 0 is background.
CELEBAMASK_HQ_CLASSES: Tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
#: The 19 parsing classes in order B (the official CelebAMask-HQ order).
CELEBAMASK_HQ_CLASSES_B: Tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)
#: The 18 per-part mask files of CelebAMask-HQ (``{k:05d}_{part}.png``), in the order they are painted
#: when merged (later parts win). This is order A without the background.
CELEBAMASK_HQ_PARTS: Tuple[str, ...] = CELEBAMASK_HQ_CLASSES[1:]
NUM_CLASSES: int = len(CELEBAMASK_HQ_CLASSES)
CLASS_INDEX: Dict[str, int] = {name: i for i, name in enumerate(CELEBAMASK_HQ_CLASSES)}

#: ``A_TO_B[a]`` is the order-B index of order-A class ``a``: ``mask_b = A_TO_B[mask_a]``.
A_TO_B: np.ndarray = np.array([CELEBAMASK_HQ_CLASSES_B.index(n) for n in CELEBAMASK_HQ_CLASSES], np.int64)
#: ``B_TO_A[b]`` is the order-A index of order-B class ``b``: ``mask_a = B_TO_A[mask_b]``.
B_TO_A: np.ndarray = np.array([CELEBAMASK_HQ_CLASSES.index(n) for n in CELEBAMASK_HQ_CLASSES_B], np.int64)

#: Class permutation applied to a mask when an image is flipped horizontally (left and right parts swap).
FLIP_CLASS_PERMUTATION: np.ndarray = np.arange(NUM_CLASSES, dtype=np.int64)
for _left, _right in (("l_brow", "r_brow"), ("l_eye", "r_eye"), ("l_ear", "r_ear")):
    FLIP_CLASS_PERMUTATION[CLASS_INDEX[_left]] = CLASS_INDEX[_right]
    FLIP_CLASS_PERMUTATION[CLASS_INDEX[_right]] = CLASS_INDEX[_left]

#: Expression regions edited by the local generators, as groups of order-A classes.
REGION_GROUPS: Dict[str, Tuple[int, ...]] = {
    "brows": (CLASS_INDEX["l_brow"], CLASS_INDEX["r_brow"]),
    "eyes": (CLASS_INDEX["l_eye"], CLASS_INDEX["r_eye"]),
    "nose": (CLASS_INDEX["nose"],),
    "mouth": (CLASS_INDEX["mouth"], CLASS_INDEX["u_lip"], CLASS_INDEX["l_lip"]),
}
REGION_NAMES: Tuple[str, ...] = tuple(REGION_GROUPS)
#: The two-sided parts split into one region per side (``l_`` = image-left, the iBUG/CelebAMask-HQ convention):
#: a single brow's mask box is about half as elongated as both brows' box (3.7:1 vs 7.9:1 on SynthFACS), so the
#: square local crop stretches it less. Pass ``regions=SIDED_REGION_NAMES`` to the generator (the critics follow it).
SIDED_REGION_NAMES: Tuple[str, ...] = ("l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth")
#: Every region name a generator accepts -> its order-A classes (:data:`REGION_GROUPS` plus the one-sided parts).
ALL_REGION_GROUPS: Dict[str, Tuple[int, ...]] = {
    **REGION_GROUPS,
    **{side: (CLASS_INDEX[side],) for side in ("l_brow", "r_brow", "l_eye", "r_eye")},
}

#: The 8 AffectNet training expressions, in AffectNet code order.
EXPRESSIONS: Tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
NUM_EXPRESSIONS: int = len(EXPRESSIONS)
#: Every code of the original AffectNet release (8-10 are not expressions and are never trained on).
AFFECTNET_CODES: Dict[int, str] = {
    **dict(enumerate(EXPRESSIONS)), 8: "none", 9: "uncertain", 10: "non-face",
}

#: The 17 action units, in OpenFace 2's column order (see module docstring for AU43/AU45).
AU_NAMES: Tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15", "AU17", "AU20",
    "AU23", "AU25", "AU26", "AU43",
)
NUM_AUS: int = len(AU_NAMES)
AU_INDEX: Dict[str, int] = {name: i for i, name in enumerate(AU_NAMES)}
#: OpenFace 2 intensity columns aligned with :data:`AU_NAMES` (GANimation's ``aus_openface.pkl`` uses
#: the same 17 in the same order).
OPENFACE_AU_COLUMNS: Tuple[str, ...] = (
    "AU01_r", "AU02_r", "AU04_r", "AU05_r", "AU06_r", "AU07_r", "AU09_r", "AU10_r", "AU12_r", "AU14_r",
    "AU15_r", "AU17_r", "AU20_r", "AU23_r", "AU25_r", "AU26_r", "AU45_r",
)
AU_DESCRIPTIONS: Dict[str, str] = {
    "AU1": "inner brow raiser", "AU2": "outer brow raiser", "AU4": "brow lowerer", "AU5": "upper lid raiser",
    "AU6": "cheek raiser", "AU7": "lid tightener", "AU9": "nose wrinkler", "AU10": "upper lip raiser",
    "AU12": "lip corner puller", "AU14": "dimpler", "AU15": "lip corner depressor", "AU17": "chin raiser",
    "AU20": "lip stretcher", "AU23": "lip tightener", "AU25": "lips part", "AU26": "jaw drop",
    "AU43": "eyes closed",
}
#: Which AUs each region's local discriminator predicts.
REGION_AUS: Dict[str, Tuple[int, ...]] = {
    "brows": tuple(AU_INDEX[a] for a in ("AU1", "AU2", "AU4")),
    "eyes": tuple(AU_INDEX[a] for a in ("AU5", "AU6", "AU7", "AU43")),
    "nose": tuple(AU_INDEX[a] for a in ("AU9", "AU10")),
    "mouth": tuple(AU_INDEX[a] for a in ("AU10", "AU12", "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26")),
}
# One side of a two-sided part shows the same (bilateral) AUs as the pair.
REGION_AUS.update({f"{side}_{part}": REGION_AUS[f"{part}s"] for side in ("l", "r") for part in ("brow", "eye")})

#: FACS prototypes of the 8 expressions: AU name -> intensity in [0, 1]. ``contempt`` is unilateral in
#: SynthFACS (rendered on one side); in the AU vector it is AU12 + AU14 at reduced intensity.
EXPRESSION_PROTOTYPES: Dict[str, Dict[str, float]] = {
    "neutral": {},
    "happy": {"AU6": 0.8, "AU12": 1.0, "AU25": 0.4},
    "sad": {"AU1": 0.9, "AU4": 0.6, "AU15": 0.9, "AU17": 0.3},
    "surprise": {"AU1": 1.0, "AU2": 1.0, "AU5": 0.9, "AU25": 0.8, "AU26": 0.9},
    "fear": {"AU1": 0.9, "AU2": 0.7, "AU4": 0.6, "AU5": 1.0, "AU20": 0.9, "AU25": 0.6, "AU26": 0.5},
    "disgust": {"AU9": 1.0, "AU10": 0.5, "AU15": 0.6, "AU17": 0.6},
    "anger": {"AU4": 1.0, "AU5": 0.6, "AU7": 0.8, "AU23": 0.9},
    "contempt": {"AU12": 0.6, "AU14": 0.7},
}


def expression_prototype(expression: int | str) -> np.ndarray:
    """Return the prototype AU vector (float32 [NUM_AUS] in [0, 1]) of an expression index or name."""
    name = EXPRESSIONS[expression] if isinstance(expression, (int, np.integer)) else str(expression)
    if name not in EXPRESSION_PROTOTYPES:
        raise ValueError(f"unknown expression {expression!r}; expected one of {EXPRESSIONS} or 0..{NUM_EXPRESSIONS - 1}")
    vec = np.zeros(NUM_AUS, np.float32)
    for au, value in EXPRESSION_PROTOTYPES[name].items():
        vec[AU_INDEX[au]] = value
    return vec


#: iBUG 68-point index permutation for a horizontal flip: ``flipped[i] = original[IBUG_FLIP_PERMUTATION[i]]``.
IBUG_FLIP_PERMUTATION: np.ndarray = np.arange(68, dtype=np.int64)


def _build_ibug_flip() -> None:
    pairs = [(i, 16 - i) for i in range(8)]                      # jaw line
    pairs += [(17 + i, 26 - i) for i in range(5)]                # brows
    pairs += [(31, 35), (32, 34)]                                # nostrils
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips
    pairs += [(60, 64), (61, 63), (65, 67)]                      # inner lips
    for a, b in pairs:
        IBUG_FLIP_PERMUTATION[a], IBUG_FLIP_PERMUTATION[b] = b, a


_build_ibug_flip()

#: Landmark index ranges of the iBUG 68 layout, by facial part.
IBUG_PARTS: Dict[str, Tuple[int, int]] = {
    "jaw": (0, 17), "l_brow": (17, 22), "r_brow": (22, 27), "nose_bridge": (27, 31), "nose_base": (31, 36),
    "l_eye": (36, 42), "r_eye": (42, 48), "outer_lips": (48, 60), "inner_lips": (60, 68),
}
#: Landmarks that outline each expression region (for ``region_source="landmarks"``).
REGION_LANDMARKS: Dict[str, Tuple[int, ...]] = {
    "brows": tuple(range(17, 27)),
    "eyes": tuple(range(36, 48)),
    "nose": tuple(range(27, 36)),
    "mouth": tuple(range(48, 68)),
    "l_brow": tuple(range(*IBUG_PARTS["l_brow"])),
    "r_brow": tuple(range(*IBUG_PARTS["r_brow"])),
    "l_eye": tuple(range(*IBUG_PARTS["l_eye"])),
    "r_eye": tuple(range(*IBUG_PARTS["r_eye"])),
}
