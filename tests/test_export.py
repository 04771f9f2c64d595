"""``segexpr export-synthetic``: the trees it writes follow the real release layouts."""
import csv

import numpy as np
import pytest
from PIL import Image

from segexpr.cli import main as cli_main
from segexpr.data.export import load_ground_truth
from segexpr.data.labels import CELEBAMASK_HQ_PARTS, CLASS_INDEX
from segexpr.data.rafd import parse_rafd_name


def _export(tmp_path, fmt, count, size=32, seed=0, extra=()):
    out = tmp_path / fmt
    rc = cli_main(["export-synthetic", "--format", fmt, "--out", str(out), "--count", str(count),
                   "--size", str(size), "--seed", str(seed), *extra])
    assert rc == 0
    return out


def test_celebamask_hq_layout(tmp_path):
    out = _export(tmp_path, "celebamask-hq", 6, size=64)
    gt = load_ground_truth(out)
    for k in range(6):
        with Image.open(out / "CelebA-HQ-img" / f"{k}.jpg") as im:
            assert im.size == (64, 64) and im.format == "JPEG"
        mask = gt["masks"][k]
        assert mask.shape == (32, 32)
        for part in CELEBAMASK_HQ_PARTS:
            path = out / "CelebAMask-HQ-mask-anno" / str(k // 2000) / f"{k:05d}_{part}.png"
            present = (mask == CLASS_INDEX[part]).any()
            assert path.exists() == (present or (part == "skin" and path.exists()))
            if present:
                with Image.open(path) as im:
                    assert im.mode == "RGB" and im.size == (32, 32)
                    white = np.asarray(im.convert("L")) > 127
                assert white[mask == CLASS_INDEX[part]].all()
    lines = (out / "CelebA-HQ-to-CelebA-mapping.txt").read_text().split("\n")
    assert lines[0].split() == ["idx", "orig_idx", "orig_file"]
    assert {"train", "val", "test"} == set(gt["split"])  # every split gets an image


def test_affectnet_csv_layout(tmp_path):
    out = _export(tmp_path, "affectnet", 20, size=32)
    gt = load_ground_truth(out)
    with open(out / "Manually_Annotated_file_lists" / "training.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                       "facial_landmarks", "expression", "valence", "arousal"]
    for row in rows[1:]:
        with Image.open(out / "Manually_Annotated_Images" / row[0]) as im:
            w, h = im.size
        x, y, bw, bh = map(int, row[1:5])
        assert w > 32 and h > 32 and 0 <= x and x + bw <= w and y + bh <= h  # face on a larger canvas
        assert len(row[5].split(";")) == 136
        code, v, a = int(row[6]), float(row[7]), float(row[8])
        assert (v, a) == (-2.0, -2.0) if code >= 8 else -1 <= v <= 1 and -1 <= a <= 1
    codes = gt["expression"]
    assert set(codes[codes >= 8]) and (out / "Manually_Annotated_file_lists" / "validation.csv").exists()
    va = {e: gt["valence"][codes == e] for e in (1, 2)}  # happy is pleasant, sad is not
    if len(va[1]) and len(va[2]):
        assert va[1].min() > 0 > va[2].max()


def test_affectnet_npy_and_rafd_layouts(tmp_path):
    out = _export(tmp_path, "affectnet-npy", 5)
    exp = np.load(out / "train_set" / "annotations" / "0_exp.npy")
    assert exp.dtype.kind == "U" and 0 <= int(exp) < 8
    assert np.load(out / "train_set" / "annotations" / "0_lnd.npy").shape == (136,)
    out = _export(tmp_path, "rafd", 2, extra=["--aus", "openface"])
    names = [parse_rafd_name(p.name) for p in out.glob("*.jpg")]
    assert len(names) == 2 * 8 * 3 and {n.angle for n in names} == {"090"}
    for subject in {n.subject for n in names}:
        mine = [n for n in names if n.subject == subject]
        assert len({n.expression for n in mine}) == 8 and len({(n.group, n.gender) for n in mine}) == 1
    assert len(list((out / "openface").glob("*.csv"))) == len(names)


def test_deterministic(tmp_path):
    a = _export(tmp_path / "a", "affectnet", 3, seed=4)
    b = _export(tmp_path / "b", "affectnet", 3, seed=4)
    c = _export(tmp_path / "c", "affectnet", 3, seed=5)
    ta = (a / "Manually_Annotated_file_lists" / "training.csv").read_bytes()
    assert ta == (b / "Manually_Annotated_file_lists" / "training.csv").read_bytes()
    assert ta != (c / "Manually_Annotated_file_lists" / "training.csv").read_bytes()


def test_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli_main(["export-synthetic", "--format", "lfw", "--out", str(tmp_path), "--count", "1", "--size", "32"])
    # a user error is one line naming the problem and a non-zero exit code (the CLI's contract)
    assert cli_main(["export-synthetic", "--format", "celebamask-hq", "--out", str(tmp_path), "--count", "1",
                     "--size", "33"]) == 1
    assert "--size must be even" in capsys.readouterr().err


def _segexpr(cwd, *args):
    """The installed console command, run the way a user runs it: a subprocess in the user's folder."""
    import subprocess
    import sys
    from pathlib import Path

    command = Path(sys.executable).with_name("segexpr")
    return subprocess.run([str(command), *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_export_never_replaces_a_users_files_without_overwrite(tmp_path):
    """Pointed at a folder that holds a real CelebAMask-HQ copy, the export refuses and names it; --overwrite
    replaces the same-named files and leaves the others."""
    real = tmp_path / "CelebAMask-HQ"
    (real / "CelebA-HQ-img").mkdir(parents=True)
    (real / "CelebA-HQ-img" / "0.jpg").write_bytes(b"the user's photo")
    (real / "CelebA-HQ-to-CelebA-mapping.txt").write_text("the user's mapping")
    (real / "README.txt").write_text("the user's notes")
    args = ["export-synthetic", "--format", "celebamask-hq", "--out", "CelebAMask-HQ", "--count", "2", "--size", "32"]

    refused = _segexpr(tmp_path, *args)
    assert refused.returncode == 1, refused.stderr
    assert "CelebAMask-HQ" in refused.stderr and "--overwrite" in refused.stderr
    assert (real / "CelebA-HQ-img" / "0.jpg").read_bytes() == b"the user's photo"
    assert (real / "CelebA-HQ-to-CelebA-mapping.txt").read_text() == "the user's mapping"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CelebAMask-HQ"]  # no staging folder left behind

    replaced = _segexpr(tmp_path, *args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert (real / "CelebA-HQ-to-CelebA-mapping.txt").read_text().startswith("idx orig_idx orig_file")
    with Image.open(real / "CelebA-HQ-img" / "0.jpg") as im:
        assert im.size == (32, 32)
    assert (real / "README.txt").read_text() == "the user's notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CelebAMask-HQ"]


def test_export_into_an_empty_folder_needs_no_overwrite(tmp_path):
    (tmp_path / "empty").mkdir()
    assert cli_main(["export-synthetic", "--format", "rafd", "--out", str(tmp_path / "empty"), "--count", "1",
                     "--size", "32"]) == 0
    assert len(list((tmp_path / "empty").glob("*.jpg"))) == 24
