"""segexpr.files: the one existence check and the atomic writes every writer uses."""
from __future__ import annotations

import os

import pytest

from segexpr.files import atomic_path, refuse_existing, staged_folder, write_text


def test_refuse_existing_names_files_and_non_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    refuse_existing([tmp_path / "missing", tmp_path / "empty"])  # nothing to lose: no error
    (tmp_path / "mine.txt").write_text("hand-written")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="mine.txt.*full.*--overwrite"):
        refuse_existing([tmp_path / "mine.txt", tmp_path / "full", tmp_path / "missing"])
    refuse_existing([tmp_path / "mine.txt", tmp_path / "full"], overwrite=True)


def test_write_text_refuses_then_replaces_with_overwrite(tmp_path):
    path = tmp_path / "sub" / "table.md"
    write_text(path, "first")
    with pytest.raises(FileExistsError, match="table.md"):
        write_text(path, "second")
    assert path.read_text() == "first"
    write_text(path, "second", overwrite=True)
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.md"]  # no temporary left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["weights.bin"]


def test_written_files_get_the_umask_permissions_not_mkstemps_private_ones(tmp_path):
    mask = os.umask(0o022)
    try:
        path = write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_staged_folder_fills_a_new_folder_and_refuses_a_full_one(tmp_path):
    out = tmp_path / "data"
    with staged_folder(out) as staging:
        (staging / "a").mkdir()
        (staging / "a" / "1.txt").write_text("new")
    assert (out / "a" / "1.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # the staging folder is gone
    with pytest.raises(FileExistsError, match="data"):
        with staged_folder(out):
            pytest.fail("the block must not run when the folder holds files")
    (out / "keep.txt").write_text("the user's")
    with staged_folder(out, overwrite=True) as staging:
        (staging / "a").mkdir()
        (staging / "a" / "1.txt").write_text("newer")
    assert (out / "a" / "1.txt").read_text() == "newer" and (out / "keep.txt").read_text() == "the user's"


def test_a_failed_staged_folder_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "data") as staging:
            (staging / "half.txt").write_text("x")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_the_gallery_example_refuses_an_existing_picture(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "synthfacs_gallery.py"
    spec = importlib.util.spec_from_file_location("synthfacs_gallery", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "gallery.png"
    out.write_bytes(b"someone's picture")
    args = ["--out", str(out), "--size", "32", "--identities", "1"]
    with pytest.raises(SystemExit, match="gallery.png.*--overwrite"):
        script.main(args)
    assert out.read_bytes() == b"someone's picture"
    script.main([*args, "--overwrite"])
    assert out.read_bytes().startswith(b"\x89PNG")


def test_the_training_example_refuses_an_earlier_runs_results_before_training(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "train_joint_synthetic.py"
    spec = importlib.util.spec_from_file_location("train_joint_synthetic", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "joint.ckpt").write_bytes(b"an earlier run")
    with pytest.raises(SystemExit, match="joint.ckpt.*--overwrite"):
        script.main(["--out", str(tmp_path), "--minutes", "0.01"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["joint.ckpt"]  # nothing trained, nothing written
