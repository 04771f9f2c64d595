"""Issue 15: ``segexpr edit my_photo.jpg`` on real photos (detect, align, edit, paste back), the segmenter's face
mask, and the dlib identity metric in real-data evaluation."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

pytest.importorskip("dlib")
skimage_data = pytest.importorskip("skimage.data")

from segexpr.cli import main  # noqa: E402
from segexpr.data import SyntheticFacesDataModule  # noqa: E402
from segexpr.editor import ExpressionEditor  # noqa: E402
from segexpr.evaluation.real_data import evaluate_datamodule  # noqa: E402
from segexpr.evaluation.report import METRIC_DESCRIPTIONS  # noqa: E402
from tiny import save_tiny_checkpoint, tiny_joint_module  # noqa: E402

SIZE = 64


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photo_ckpt")
    return save_tiny_checkpoint(root / "tiny64.ckpt", SIZE)


def _photo(path: Path) -> Path:
    """The astronaut portrait (face ~90 px) on a larger grey canvas, so most of the photo is far from the face."""
    face = Image.fromarray(skimage_data.astronaut()).resize((256, 256), Image.LANCZOS)
    canvas = Image.new("RGB", (384, 320), (120, 130, 140))
    canvas.paste(face, (96, 32))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def test_edit_detects_aligns_and_pastes_back_only_the_face(ckpt, tmp_path, capsys):
    photo = _photo(tmp_path / "in" / "photo.png")
    Image.new("RGB", (96, 96), (90, 90, 90)).save(tmp_path / "in" / "blank.png")  # no face
    out = tmp_path / "out"
    code = main(["edit", str(tmp_path / "in"), "--ckpt", str(ckpt), "--expression", "happy", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1  # one input failed...
    assert "blank.png: no face found" in err and "--no-align" in err and "1 of 2 input image(s) failed" in err
    edited = np.asarray(Image.open(out / "photo_happy.png")).astype(int)  # ...the other was written
    before = np.asarray(Image.open(photo)).astype(int)
    assert edited.shape == before.shape
    changed = np.abs(edited - before).sum(-1) > 0
    assert changed.any()
    ys, xs = np.nonzero(changed)
    # only around the face (the astronaut's face sits near x 190-290, y 60-200 of the canvas)
    assert xs.min() > 96 and ys.max() < 290 and changed.mean() < 0.25
    assert not (out / "blank_happy.png").exists()


def test_transfer_and_too_small_faces(ckpt, tmp_path, capsys):
    photo = _photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    assert main(["transfer", str(photo), "--reference", str(photo), "--ckpt", str(ckpt), "--out", str(out)]) == 0
    assert Image.open(out / "photo_from_photo.png").size == (384, 320)
    capsys.readouterr()
    assert main(["edit", str(photo), "--ckpt", str(ckpt), "--expression", "sad", "--out", str(out),
                 "--min-face-size", "300"]) == 1
    assert "too small" in capsys.readouterr().err


def test_missing_dlib_is_one_clear_line(ckpt, tmp_path, monkeypatch, capsys):
    photo = _photo(tmp_path / "photo.png")
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib -> ImportError
    assert main(["edit", str(photo), "--ckpt", str(ckpt), "--expression", "sad", "--out", str(tmp_path / "o")]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("segexpr edit: face detection needs dlib: pip install 'segexpr[photo]'")
    assert "--no-align" in line and "\n" not in line
    assert not (tmp_path / "o").exists()


def test_face_mask_from_the_segmenter(ckpt):
    editor = ExpressionEditor.from_checkpoint(ckpt)
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mask = editor.face_mask(images)
    assert mask.shape == (2, 1, 48, 48) and float(mask.min()) >= 0 and float(mask.max()) <= 1
    torch.manual_seed(0)
    no_segmenter = ExpressionEditor.from_module(tiny_joint_module(SIZE, segmenter=False, region_source="none"))
    assert no_segmenter.face_mask(images) is None


def test_real_data_evaluation_reports_dlib_identity_distance(monkeypatch):
    torch.manual_seed(0)
    module = tiny_joint_module(SIZE).eval()
    data = SyntheticFacesDataModule(size=SIZE, train_length=4, val_length=2, test_length=2, batch_size=2)
    # default: on with dlib; measured on the first identity_count sources (1 here: 8 source/edit pairs)
    result = evaluate_datamodule(module, data, count=2, fid_features="none", identity_count=1)
    distance = result.metrics["identity_distance"]
    assert math.isfinite(distance) and distance >= 0
    assert any("dlib face descriptor distance (not ArcFace)" in note and "mean over 8 pairs" in note
               for note in result.notes)
    assert "not ArcFace" in METRIC_DESCRIPTIONS["identity_distance"]
    monkeypatch.setitem(sys.modules, "dlib", None)  # without dlib: skipped with a note, the rest unchanged
    skipped = evaluate_datamodule(module, data, count=2, fid_features="none")
    assert any("needs dlib" in n for n in skipped.notes)
    assert skipped.metrics == {k: v for k, v in result.metrics.items() if k != "identity_distance"}
    with pytest.raises(ImportError, match="segexpr\\[photo\\]"):
        evaluate_datamodule(module, data, count=1, fid_features="none", identity=True)


def test_readme_before_after_script(ckpt, tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / "edit_photo_demo.py"
    spec = importlib.util.spec_from_file_location("edit_photo_demo", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = script.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "before_after.png")])
    picture = Image.open(out)
    assert picture.size == (2 * 640 + 8, 480 + 22)
    halves = np.asarray(picture)[22:]
    assert not np.array_equal(halves[:, :640], halves[:, 648:])  # the edit changed the face
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="before_after.png.*--overwrite"):  # an existing picture stays
        script.main(["--ckpt", str(ckpt), "--out", str(out)])
    assert out.read_bytes() == before
