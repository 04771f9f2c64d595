"""Export SynthFACS in the real datasets' release layouts (``segexpr export-synthetic``).

The exported trees are read by the same loaders as the real downloads, so every loader (and its bad-input
handling) is tested against data laid out exactly like the releases, with exact ground truth:

* ``celebamask-hq``: ``CelebA-HQ-img/{k}.jpg`` (``S`` px), ``CelebAMask-HQ-mask-anno/{k//2000}/{k:05d}_{part}.png``
  (``S/2`` px, white-on-black **RGB**, one per present part; the ``skin`` part also covers the brows, eyes,
  nose and lips, as on the real data, so the painting order matters), ``CelebA-HQ-to-CelebA-mapping.txt``
  whose ``orig_idx`` values put images into CelebA's train/val/test in the real 24183:2993:2824 proportions
  (at least one image each), and ``CelebAMask-HQ-attribute-anno.txt`` (a ``Smiling`` column).
* ``affectnet``: the original CSV release: ``Manually_Annotated_file_lists/{training,validation}.csv`` (with
  header) and ``Manually_Annotated_Images/<subdir>/<hash>.jpg``. Each face (``S`` px) is pasted at a random
  offset on a larger canvas with a random background; box and landmarks are in canvas pixels. The face box is
  the render shrunk by the loaders' default margin, so their default crop is the render as SynthFACS frames it
  (the ground truth keeps the render's square as ``render_box``). Every 10th row
  is a code 8-10 (None/Uncertain/Non-Face, valence/arousal -2) that loaders must drop.
* ``affectnet-npy``: the 8-class release ``{train_set,val_set}/images/<id>.jpg`` + ``annotations/<id>_{exp,
  val,aro,lnd}.npy`` (``exp``/``val``/``aro`` numpy strings).
* ``rafd``: ``Rafd090_{id:02d}_{group}_{gender}_{expression}_{gaze}.jpg``: ``count`` subjects (ids with gaps),
  each one SynthFACS identity in all 8 expressions x 3 gazes (gaze is not rendered: the three are the same
  picture). Photos are portrait (``S x round(1.5 S)``) with the face centred, so the centred square crop is
  the face render.

Optional AUs (``aus=``): ``"openface"`` writes ``openface/<image id>.csv`` per image in OpenFace 2's CSV format
(leading spaces in column names, a ``success`` column); ``"ganimation"`` writes ``aus_openface.pkl``
(``{image id: float64[17]}`` intensities 0-5, pickle protocol 2 as from Python 2).

The output folder must be missing or empty unless ``overwrite`` (``--overwrite``): the file names are the real
releases', so a folder holding a user's download would otherwise lose files. The export is written to a staging
folder beside it and moved into place when complete (:func:`segexpr.files.staged_folder`).

Every export also writes ``SynthFACS-ground-truth.npz`` at the root (not part of any release; loaders ignore
it): per image ``ids``, ``split``, ``identity``, ``expression``, ``aus`` (float32 [N, 17] in [0, 1]),
``landmarks`` (float32 [N, 68, 2], in the exported image's pixels) and, for CelebAMask-HQ, ``masks``
(uint8 [N, S/2, S/2], order A, at mask resolution).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from ..files import staged_folder
from .affectnet import DEFAULT_MARGIN
from segexpr.labels import (
    CELEBAMASK_HQ_PARTS,
    CLASS_INDEX,
    EXPRESSIONS,
    NUM_AUS,
    OPENFACE_AU_COLUMNS,
    expression_prototype,
)
from segexpr.ops.pixels import images_to_uint8

FORMATS = ("celebamask-hq", "affectnet", "affectnet-npy", "rafd", "ganimation")
AU_FORMATS = ("none", "openface", "ganimation")
GROUND_TRUTH_FILE = "SynthFACS-ground-truth.npz"
#: Real CelebA-HQ split sizes (train, val, test): the exported mapping reproduces these proportions.
CELEBA_HQ_SPLIT_SIZES = (24183, 2993, 2824)
#: Mean (valence, arousal) per expression (AffectNet code order), from the circumplex model of affect.
VALENCE_AROUSAL = {
    "neutral": (0.0, 0.0), "happy": (0.7, 0.35), "sad": (-0.6, -0.3), "surprise": (0.2, 0.75),
    "fear": (-0.6, 0.7), "disgust": (-0.65, 0.4), "anger": (-0.55, 0.7), "contempt": (-0.45, 0.3),
}
#: RaFD expression word of each segexpr expression.
RAFD_WORDS = {"neutral": "neutral", "happy": "happy", "sad": "sad", "surprise": "surprised", "fear": "fearful",
              "disgust": "disgusted", "anger": "angry", "contempt": "contemptuous"}
_SKIN_COVERS = ("l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth", "u_lip", "l_lip")


# ------------------------------------------------------------------------------------------ rendering
def _as_numpy_image(image: Any) -> np.ndarray:
    """uint8 [H, W, 3] from a uint8 HWC array or a float [3, H, W] tensor/array in [-1, 1]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        if image.ndim == 3 and image.shape[0] == 3:
            image = image.transpose(1, 2, 0)
        image = images_to_uint8(torch.from_numpy(image.astype(np.float32))).numpy()
    return image


def _np(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def sample_aus(expression: int, rng: np.random.Generator) -> np.ndarray:
    """Prototype AUs of ``expression`` with per-sample intensity jitter: float32 [17] in [0, 1]."""
    proto = expression_prototype(expression)
    return np.clip(proto * rng.uniform(0.75, 1.0, NUM_AUS), 0.0, 1.0).astype(np.float32)


def render_face(identity: int, aus: np.ndarray, size: int, expression: int | None = None) -> dict[str, np.ndarray]:
    """Render one SynthFACS face: ``image`` uint8 [S, S, 3], ``mask`` uint8 [S, S] (order A), ``landmarks``
    float32 [68, 2] (continuous pixel coordinates)."""
    from . import synthetic

    out = synthetic.render(identity, aus, size)
    return {"image": _as_numpy_image(out["image"]), "mask": _np(out["mask"]).astype(np.uint8),
            "landmarks": _np(out["landmarks"]).astype(np.float32).reshape(68, 2)}


def _save_jpeg(image: np.ndarray, path: Path, quality: int = 95) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=quality)


# ------------------------------------------------------------------------------------------ AUs
def _write_openface(out: Path, image_id: str, aus: np.ndarray) -> None:
    """One OpenFace-2 style CSV (``FeatureExtraction`` columns, leading spaces) for one image."""
    d = out / "openface"
    d.mkdir(parents=True, exist_ok=True)
    cols = ["frame", "face_id", "timestamp", "confidence", "success", *OPENFACE_AU_COLUMNS,
            *(c.replace("_r", "_c") for c in OPENFACE_AU_COLUMNS[:-1]), "AU28_c", "AU45_c"]
    vals = ["1", "0", "0.000", "0.98", "1", *(f"{5.0 * a:.5f}" for a in aus),
            *(str(int(a > 0.2)) for a in aus[:-1]), "0", str(int(aus[-1] > 0.2))]
    with open(d / f"{image_id}.csv", "w") as f:
        f.write(", ".join(cols) + "\n" + ", ".join(vals) + "\n")


def _write_aus(out: Path, fmt: str, ids: Sequence[str], aus: np.ndarray) -> None:
    if fmt == "openface":
        for image_id, a in zip(ids, aus):
            _write_openface(out, image_id, a)
    elif fmt == "ganimation":
        data = {image_id: (5.0 * a).astype(np.float64) for image_id, a in zip(ids, aus)}
        with open(out / "aus_openface.pkl", "wb") as f:
            pickle.dump(data, f, protocol=2)  # the protocol Python 2 wrote


# ------------------------------------------------------------------------------------------ formats
def _split_counts(count: int, proportions: Sequence[float]) -> list[int]:
    """Sizes per split in ``proportions`` with at least one item each (when ``count`` allows)."""
    sizes = [max(1, round(count * p)) if count >= len(proportions) else 0 for p in proportions[1:]]
    return [count - sum(sizes), *sizes]


def _export_celebamask_hq(out: Path, count: int, size: int, rng: np.random.Generator) -> dict[str, Any]:
    total = sum(CELEBA_HQ_SPLIT_SIZES)
    n_train, n_val, n_test = _split_counts(count, [s / total for s in CELEBA_HQ_SPLIT_SIZES])
    splits = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)[rng.permutation(count)]
    ranges = {"train": (0, 162770), "val": (162770, 182637), "test": (182637, 202599)}
    gt: dict[str, list] = {k: [] for k in ("ids", "split", "identity", "expression", "aus", "landmarks", "masks")}
    mapping, attributes = [], []
    half = size // 2
    for k in range(count):
        expression = int(rng.integers(len(EXPRESSIONS)))
        aus = sample_aus(expression, rng)
        identity = int(rng.integers(0, 10_000))
        face = render_face(identity, aus, size, expression)
        _save_jpeg(face["image"], out / "CelebA-HQ-img" / f"{k}.jpg")
        mask = np.asarray(Image.fromarray(face["mask"]).resize((half, half), Image.Resampling.NEAREST))
        part_dir = out / "CelebAMask-HQ-mask-anno" / str(k // 2000)
        part_dir.mkdir(parents=True, exist_ok=True)
        for part in CELEBAMASK_HQ_PARTS:
            region = mask == CLASS_INDEX[part]
            if part == "skin":  # real skin masks run under the features, which are painted later
                region = region | np.isin(mask, [CLASS_INDEX[p] for p in _SKIN_COVERS])
            if region.any():  # absent parts have no file, as in the release
                rgb = np.repeat((region * 255).astype(np.uint8)[..., None], 3, axis=2)
                Image.fromarray(rgb, "RGB").save(part_dir / f"{k:05d}_{part}.png")
        lo, hi = ranges[str(splits[k])]
        orig = int(rng.integers(lo, hi))
        mapping.append(f"{k} {orig} {orig + 1:06d}.jpg")
        attributes.append(f"{k}.jpg {1 if expression == 1 else -1}")
        for key, value in (("ids", str(k)), ("split", str(splits[k])), ("identity", identity),
                           ("expression", expression), ("aus", aus),
                           ("landmarks", face["landmarks"]), ("masks", mask)):
            gt[key].append(value)
    (out / "CelebA-HQ-to-CelebA-mapping.txt").write_text("idx orig_idx orig_file\n" + "\n".join(mapping) + "\n")
    (out / "CelebAMask-HQ-attribute-anno.txt").write_text(f"{count}\nSmiling\n" + "\n".join(attributes) + "\n")
    return gt


def _va(expression: int, rng: np.random.Generator) -> tuple[float, float]:
    v, a = VALENCE_AROUSAL[EXPRESSIONS[expression]]
    return (float(np.clip(v + rng.normal(0, 0.1), -1, 1)), float(np.clip(a + rng.normal(0, 0.1), -1, 1)))


def _export_affectnet(out: Path, count: int, size: int, rng: np.random.Generator) -> dict[str, Any]:
    n_train, n_val = _split_counts(count, [0.8, 0.2])
    gt: dict[str, list] = {k: [] for k in ("ids", "split", "identity", "expression", "aus", "landmarks",
                                          "box", "render_box", "canvas_size", "valence", "arousal")}
    rows: dict[str, list[str]] = {"training": [], "validation": []}
    for i in range(count):
        split = "training" if i < n_train else "validation"
        code = 8 + (i // 10) % 3 if i % 10 == 9 else int(rng.integers(len(EXPRESSIONS)))
        expression = code if code < len(EXPRESSIONS) else 0
        aus = sample_aus(expression, rng)
        identity = int(rng.integers(0, 10_000))
        face = render_face(identity, aus, size, expression)
        width, height = (int(size * s) for s in rng.uniform(1.3, 2.0, 2))
        ox, oy = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
        # background: a random colour gradient, so the crop has to find the face
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, width)[None, :, None]
        canvas = np.broadcast_to(c0 * (1 - t) + c1 * t, (height, width, 3)).astype(np.uint8).copy()
        canvas[oy:oy + size, ox:ox + size] = face["image"]
        subdir = str(100 + i // 50)
        name = hashlib.sha1(f"synthfacs-affectnet-{i}".encode()).hexdigest()
        _save_jpeg(canvas, out / "Manually_Annotated_Images" / subdir / f"{name}.jpg")
        landmarks = face["landmarks"] + np.array([ox, oy], np.float32)
        valence, arousal = _va(expression, rng) if code < 8 else (-2.0, -2.0)
        lm_text = ";".join(f"{v:.3f}" for v in landmarks.reshape(-1))
        # The face box a detector would give: the loaders' default crop (box + DEFAULT_MARGIN on each side)
        # is then the render itself, framed as SynthFACS frames it (to within a pixel of rounding).
        side = round(size / (1 + 2 * DEFAULT_MARGIN))
        bx, by = ox + (size - side) // 2, oy + (size - side) // 2
        rows[split].append(f"{subdir}/{name}.jpg,{bx},{by},{side},{side},{lm_text},{code},{valence:.6f},{arousal:.6f}")
        for key, value in (("ids", name), ("split", "train" if split == "training" else "val"),
                           ("identity", identity), ("expression", code), ("aus", aus), ("landmarks", landmarks),
                           ("box", (bx, by, side, side)), ("render_box", (ox, oy, size, size)),
                           ("canvas_size", (width, height)),
                           ("valence", valence), ("arousal", arousal)):
            gt[key].append(value)
    lists = out / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True, exist_ok=True)
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
    for split, lines in rows.items():
        (lists / f"{split}.csv").write_text(header + "\n" + "\n".join(lines) + ("\n" if lines else ""))
    return gt


def _export_affectnet_npy(out: Path, count: int, size: int, rng: np.random.Generator) -> dict[str, Any]:
    n_train, n_val = _split_counts(count, [0.8, 0.2])
    gt: dict[str, list] = {k: [] for k in ("ids", "split", "identity", "expression", "aus", "landmarks",
                                          "valence", "arousal")}
    for i in range(count):
        split_dir = out / ("train_set" if i < n_train else "val_set")
        expression = int(rng.integers(len(EXPRESSIONS)))
        aus = sample_aus(expression, rng)
        identity = int(rng.integers(0, 10_000))
        face = render_face(identity, aus, size, expression)
        _save_jpeg(face["image"], split_dir / "images" / f"{i}.jpg")
        ann = split_dir / "annotations"
        ann.mkdir(parents=True, exist_ok=True)
        valence, arousal = _va(expression, rng)
        np.save(ann / f"{i}_exp.npy", np.array(str(expression)))  # the release stores numpy strings
        np.save(ann / f"{i}_val.npy", np.array(f"{valence:.6f}"))
        np.save(ann / f"{i}_aro.npy", np.array(f"{arousal:.6f}"))
        np.save(ann / f"{i}_lnd.npy", face["landmarks"].reshape(-1).astype(np.float64))
        for key, value in (("ids", str(i)), ("split", "train" if i < n_train else "val"), ("identity", identity),
                           ("expression", expression), ("aus", aus), ("landmarks", face["landmarks"]),
                           ("valence", valence), ("arousal", arousal)):
            gt[key].append(value)
    return gt


def _export_rafd(out: Path, count: int, size: int, rng: np.random.Generator,
                 gazes: Sequence[str] = ("frontal", "left", "right"), angles: Sequence[str] = ("090",)) -> dict[str, Any]:
    subjects = sorted(int(s) for s in rng.choice(np.arange(1, 2 * count + 8), size=count, replace=False))
    gt: dict[str, list] = {k: [] for k in ("ids", "split", "identity", "expression", "aus", "landmarks")}
    height = round(size * 1.5)
    top = (height - size) // 2  # face centred: the loader's centred square crop is exactly the render
    out.mkdir(parents=True, exist_ok=True)
    for subject in subjects:
        group = ("Caucasian", "Moroccan", "Kid")[int(rng.integers(3))]
        gender = ("male", "female")[int(rng.integers(2))]
        for expression, name in enumerate(EXPRESSIONS):
            aus = sample_aus(expression, rng)
            face = render_face(subject, aus, size, expression)
            photo = np.empty((height, size, 3), np.uint8)
            photo[:] = face["image"][0, 0]  # extend the render's own background above and below
            photo[top:top + size] = face["image"]
            for angle in angles:
                for gaze in gazes:
                    stem = f"Rafd{angle}_{subject:02d}_{group}_{gender}_{RAFD_WORDS[name]}_{gaze}"
                    _save_jpeg(photo, out / f"{stem}.jpg")
                    landmarks = face["landmarks"] + np.array([0, top], np.float32)
                    for key, value in (("ids", stem), ("split", "all"), ("identity", subject),
                                       ("expression", expression), ("aus", aus), ("landmarks", landmarks)):
                        gt[key].append(value)
    return gt


def _export_ganimation(out: Path, count: int, size: int, rng: np.random.Generator) -> dict[str, Any]:
    """GANimation's layout: ``imgs/<id>.jpg``, ``train_ids.csv``/``test_ids.csv`` and (always) ``aus_openface.pkl``."""
    n_train, _ = _split_counts(count, [0.8, 0.2])
    gt: dict[str, list] = {k: [] for k in ("ids", "split", "identity", "expression", "aus", "landmarks")}
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for i in range(count):
        split = "train" if i < n_train else "test"
        expression = int(rng.integers(len(EXPRESSIONS)))
        aus = sample_aus(expression, rng)
        identity = int(rng.integers(0, 10_000))
        face = render_face(identity, aus, size, expression)
        image_id = f"N_{i:010d}_{identity:05d}"
        _save_jpeg(face["image"], out / "imgs" / f"{image_id}.jpg")
        lists[split].append(f"{image_id}.jpg")
        for key, value in (("ids", image_id), ("split", split), ("identity", identity), ("expression", expression),
                           ("aus", aus), ("landmarks", face["landmarks"])):
            gt[key].append(value)
    for split, names in lists.items():
        (out / f"{split}_ids.csv").write_text("\n".join(names) + "\n")
    return gt


def export_synthetic(
    format: Literal["celebamask-hq", "affectnet", "affectnet-npy", "rafd", "ganimation"],
    out: str | os.PathLike,
    count: int,
    size: int,
    seed: int = 0,
    aus: Literal["none", "openface", "ganimation"] = "none",
    overwrite: bool = False,
) -> dict[str, np.ndarray]:
    """Write ``count`` SynthFACS images (``rafd``: ``count`` subjects x 24 images) of side ``size`` to ``out``
    in the release layout of ``format``; returns the ground truth also saved as ``SynthFACS-ground-truth.npz``
    (see module docstring). Deterministic in ``seed``.

    ``out`` must be missing or empty (:class:`FileExistsError` naming it, before anything is rendered) unless
    ``overwrite``: then each exported file replaces its namesake and other files in ``out`` stay."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if aus not in AU_FORMATS:
        raise ValueError(f"aus must be one of {AU_FORMATS}, got {aus!r}")
    if count < 1 or size < 16:
        raise ValueError(f"need count >= 1 and size >= 16, got count={count}, size={size}")
    if format == "celebamask-hq" and size % 2:
        raise ValueError(f"--size must be even for celebamask-hq (masks are written at size/2), got {size}")
    rng = np.random.default_rng(seed)
    writer = {"celebamask-hq": _export_celebamask_hq, "affectnet": _export_affectnet,
              "affectnet-npy": _export_affectnet_npy, "rafd": _export_rafd, "ganimation": _export_ganimation}[format]
    with staged_folder(out, overwrite=overwrite) as staging:  # checks out before rendering anything
        gt = writer(staging, count, size, rng)
        arrays = {k: np.asarray(v) for k, v in gt.items()}
        arrays["aus"] = arrays["aus"].astype(np.float32)
        arrays["landmarks"] = arrays["landmarks"].astype(np.float32)
        # GANimation's layout includes its AU pickle by definition
        _write_aus(staging, "ganimation" if format == "ganimation" else aus, list(arrays["ids"]), arrays["aus"])
        np.savez_compressed(staging / GROUND_TRUTH_FILE, **arrays)
    return arrays


def load_ground_truth(root: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``SynthFACS-ground-truth.npz`` written by :func:`export_synthetic`."""
    with np.load(Path(root) / GROUND_TRUTH_FILE) as f:
        return {k: f[k] for k in f.files}


def main(argv: Sequence[str] | None = None) -> int:
    """``segexpr export-synthetic --format F --out DIR --count N --size S [--seed K] [--aus A] [--overwrite]``."""
    parser = argparse.ArgumentParser(
        prog="segexpr export-synthetic",
        description="Write SynthFACS in a real dataset's release layout (CelebAMask-HQ, AffectNet, RaFD).")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="output folder (created; must be missing or empty)")
    parser.add_argument("--count", required=True, type=int,
                        help="number of images (rafd: number of subjects, 24 images each)")
    parser.add_argument("--size", required=True, type=int, help="face image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--aus", choices=AU_FORMATS, default="none",
                        help="also write per-image AUs as OpenFace CSVs or GANimation's aus_openface.pkl")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a folder that is not empty, replacing files of the same names")
    args = parser.parse_args(list(argv) if argv is not None else None)
    gt = export_synthetic(args.format, args.out, args.count, args.size, seed=args.seed, aus=args.aus,
                          overwrite=args.overwrite)
    print(f"wrote {len(gt['ids'])} {args.format} images to {args.out}")
    return 0
