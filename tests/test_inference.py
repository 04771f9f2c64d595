"""The inference wing (issue #29): one JointModule checkpoint reader behind every loader, and one photo path that
``segexpr edit`` and the demo share (so they give the same photo)."""
from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segexpr.inference import checkpoints as loader
from tiny import save_tiny_checkpoint

SIZE = 64
LOADER_FILE = Path(loader.__file__).resolve()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("inference") / "tiny64.ckpt", SIZE)


def _entry_points():
    from segexpr.cli.edit import load_photo_editor as cli_loader
    from segexpr.editor import ExpressionEditor as OldPathEditor
    from segexpr.evaluation import load_joint
    from segexpr.inference import ExpressionEditor
    from segexpr.modules.joint import load_joint_module

    return {"ExpressionEditor.from_checkpoint": ExpressionEditor.from_checkpoint,
            "segexpr.editor (old path)": OldPathEditor.from_checkpoint,
            "segexpr edit / demo": cli_loader, "load_joint_module": load_joint_module, "evaluation.load_joint": load_joint}


def test_every_loader_reads_the_file_once_through_the_one_reader(ckpt, monkeypatch):
    """torch.load is watched: each way of loading a JointModule checkpoint reads the file exactly once, from
    inside segexpr.inference.checkpoints."""
    reads: list[bool] = []
    real_load = torch.load

    def watched(*args, **kwargs):
        files = [Path(frame.filename).resolve() for frame in traceback.extract_stack()]
        reads.append(LOADER_FILE in files)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", watched)
    for name, load in _entry_points().items():
        reads.clear()
        load(ckpt)
        assert reads == [True], f"{name}: {len(reads)} read(s), through the loader: {reads}"


def test_the_reader_refuses_other_checkpoints(tmp_path):
    from segexpr.io.checkpoints import CheckpointError

    path = tmp_path / "segmenter.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"arch": "unet"}}, path)
    for load in _entry_points().values():
        with pytest.raises(CheckpointError, match="does not hold a JointModule"):
            load(path)


def test_the_editor_from_a_checkpoint_is_the_modules_editor(ckpt):
    from segexpr.inference import ExpressionEditor, load_editing_networks
    from segexpr.modules.joint import load_joint_module

    module = load_joint_module(ckpt)
    nets = load_editing_networks(ckpt)
    assert (nets.image_size, nets.region_source) == (SIZE, "segmenter") and nets.segmenter is not None
    images = torch.rand(2, 3, 80, 72) * 2 - 1
    editor = ExpressionEditor.from_checkpoint(ckpt)
    assert torch.equal(editor.edit(images, expression="happy"), module.edit(images, expression="happy"))
    assert torch.equal(editor.face_mask(images), module.editor.face_mask(images))


# ------------------------------------------------------------------------------------------------ one photo path
def _astronaut(path: Path) -> Path:
    skimage_data = pytest.importorskip("skimage.data")
    Image.fromarray(skimage_data.astronaut()).save(path)
    return path


@pytest.mark.parametrize("align", [True, False], ids=["faces", "whole-image"])
def test_the_demo_edits_like_segexpr_edit(ckpt, tmp_path, align):
    """The same photo, checkpoint and expression give the same pixels in ``segexpr edit`` and in the demo; with
    face detection the paste mask is the segmenter's face mask."""
    if align:
        pytest.importorskip("dlib")
    from segexpr import demo
    from segexpr.cli import main
    from segexpr.inference.photo import load_photo_editor

    photo = _astronaut(tmp_path / "astronaut.png")
    args = ["edit", str(photo), "--ckpt", str(ckpt), "--expression", "happy", "--out", str(tmp_path / "out")]
    assert main(args + ([] if align else ["--no-align"])) == 0
    by_cli = np.asarray(Image.open(tmp_path / "out" / "astronaut_happy.png"))

    editor = load_photo_editor(ckpt)
    masks = []
    face_mask = editor.face_mask
    editor.face_mask = lambda crops: masks.append(crops.shape) or face_mask(crops)
    shown = demo.edit_with_expression(editor, Image.open(photo), "happy", detect_faces=align)
    by_demo = np.asarray(shown.result)
    original = np.asarray(Image.open(photo))
    assert by_demo.shape == original.shape  # the uploaded photo's own resolution
    assert np.abs(by_demo.astype(int) - original).mean() > 0.01  # the model changed something...
    assert np.array_equal(by_demo, by_cli)  # ...and the demo shows what segexpr edit writes
    assert masks == ([(1, 3, SIZE, SIZE)] if align else [])  # the face mask pastes detected faces only
    if align:
        unchanged = (by_demo == original).all(-1)
        assert unchanged.mean() > 0.7  # outside the face the photo is untouched
    assert shown.parsing is not None and "happy" in shown.message
