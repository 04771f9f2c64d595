"""Bad input: every loader reports all problems at once (file + line), or skips them with a logged count.

The trees are written by the exporter and then damaged by hand, one problem of each kind.
"""
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from segexpr.data.affectnet import AffectNet
from segexpr.data.celebamask_hq import CelebAMaskHQ
from segexpr.data.export import export_synthetic
from segexpr.data.rafd import RaFD
from segexpr.data.validation import CorruptImageError, DatasetValidationError, safe_join


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    base = tmp_path_factory.mktemp("exports")
    export_synthetic("celebamask-hq", base / "celeba", count=8, size=32, seed=0)
    export_synthetic("affectnet", base / "affectnet", count=20, size=32, seed=0)
    export_synthetic("affectnet-npy", base / "npy", count=6, size=32, seed=0)
    export_synthetic("rafd", base / "rafd", count=3, size=32, seed=0)
    return base


def _copy(exports, name, tmp_path):
    shutil.copytree(exports / name, tmp_path / name)
    return tmp_path / name


def _problems(err):
    return "\n".join(str(p) for p in err.value.problems)


def test_safe_join_rejects_escapes(tmp_path):
    assert safe_join(tmp_path, "a/b.jpg") == tmp_path / "a" / "b.jpg"
    assert safe_join(tmp_path, "a/../b.jpg") == tmp_path / "b.jpg"
    for bad in ("../x.jpg", "a/../../x.jpg", "/etc/passwd", "C:\\x.jpg", "", ".."):
        assert safe_join(tmp_path, bad) is None


def test_celebamask_hq_every_problem_listed_then_skipped(exports, tmp_path, caplog):
    root = _copy(exports, "celeba", tmp_path)
    anno = root / "CelebAMask-HQ-mask-anno" / "0"
    (root / "CelebA-HQ-img" / "1.jpg").unlink()                                  # missing image
    (root / "CelebA-HQ-img" / "2.jpg").write_bytes(b"not a jpeg at all")        # corrupt image bytes
    for p in anno.glob("00003_*.png"):                                           # no mask parts at all
        p.unlink()
    next(anno.glob("00004_*.png")).write_bytes(b"\x89PNG broken")               # corrupt part file
    shutil.copy(next(anno.glob("00005_*.png")), anno / "00005_beard.png")      # unknown part name
    (anno / "00006_hat.png").unlink(missing_ok=True)                            # a missing part is fine
    lst = tmp_path / "ids.txt"
    lst.write_text("".join(f"{k}\n" for k in range(8)) + "banana\n")            # malformed list line
    with pytest.raises(DatasetValidationError) as err:
        CelebAMaskHQ(root, list_file=str(lst), cache_dir=tmp_path / "cache")
    text = _problems(err)
    assert len(err.value.problems) == 6, text
    for needle in ("CelebA-HQ-img/1.jpg: missing file", "CelebA-HQ-img/2.jpg: unreadable image",
                   "00003_*.png: no mask part files for image 3", "mask part: unreadable image",
                   "00005_beard.png: unknown part name 'beard'", "ids.txt:9: not an image id: 'banana'"):
        assert needle in text
    assert "skip_invalid=True" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="segexpr.data"):
        ds = CelebAMaskHQ(root, list_file=str(lst), cache_dir=tmp_path / "cache", skip_invalid=True)
    assert ds.ids == ["0", "6", "7"]
    assert "skipping 6 invalid entries" in caplog.text
    ds[1]  # image 6 without its hat part still loads
    lst.write_text("1\n2\n")
    with pytest.raises(DatasetValidationError, match="empty after filtering"):
        CelebAMaskHQ(root, list_file=str(lst), cache_dir=tmp_path / "cache", skip_invalid=True)


def test_celebamask_hq_bad_mapping_lines(exports, tmp_path):
    root = _copy(exports, "celeba", tmp_path)
    mapping = root / "CelebA-HQ-to-CelebA-mapping.txt"
    mapping.write_text(mapping.read_text() + "8\nnine 12 000013.jpg\n")
    with pytest.raises(DatasetValidationError) as err:
        CelebAMaskHQ(root, "train", cache_dir=tmp_path / "cache")
    text = _problems(err)
    assert "mapping.txt:10: truncated line" in text and "mapping.txt:11: non-numeric" in text
    mapping.unlink()
    with pytest.raises(DatasetValidationError, match="mapping file not found"):
        CelebAMaskHQ(root, "train", cache_dir=tmp_path / "cache")


def _edit_csv(path, edits):
    lines = path.read_text().splitlines()
    for line_no, fn in edits.items():
        fields = lines[line_no - 1].split(",")
        lines[line_no - 1] = ",".join(fn(fields))
    path.write_text("\n".join(lines) + "\n")


def _set(i, value):
    def fn(fields):
        fields[i] = value
        return fields
    return fn


def test_affectnet_every_problem_listed_then_skipped(exports, tmp_path, caplog):
    root = _copy(exports, "affectnet", tmp_path)
    csv_path = root / "Manually_Annotated_file_lists" / "training.csv"
    rows = csv_path.read_text().splitlines()
    images = root / "Manually_Annotated_Images"
    (images / rows[1].split(",")[0]).unlink()                                   # line 2: missing image
    (images / rows[2].split(",")[0]).write_bytes(b"\xff\xd8garbage")           # line 3: corrupt bytes
    _edit_csv(csv_path, {
        4: lambda f: f[:6],                                                      # truncated row
        5: _set(1, "abc"),                                                       # non-numeric face_x
        6: _set(6, "12"),                                                        # unknown code
        7: _set(3, "0"),                                                         # zero-size box
        8: _set(1, "10000"),                                                     # box outside the image
        9: _set(0, "../../escape.jpg"),                                          # escapes the root
        10: _set(0, "/etc/passwd"),                                              # absolute path
        12: _set(5, "1;2;3;4"),                                                  # 4 landmark values
    })
    with pytest.raises(DatasetValidationError) as err:
        AffectNet(root, "train")
    text = _problems(err)
    expected = {2: "missing file", 3: "unreadable image", 4: "truncated row", 5: "non-numeric face box",
                6: "unknown expression code 12", 7: "face box of zero size", 8: "lies outside",
                9: "escapes the image folder", 10: "escapes the image folder", 12: "has 4 values, expected 136"}
    for line_no, needle in expected.items():
        assert any(p.line == line_no and needle in p.message and p.file.endswith("training.csv")
                   for p in err.value.problems), (line_no, text)
    assert len(err.value.problems) == len(expected)
    full = AffectNet(exports / "affectnet", "train")
    with caplog.at_level(logging.WARNING, logger="segexpr.data"):
        ds = AffectNet(root, "train", skip_invalid=True)
    assert len(ds) == len(full) - len(expected)
    assert f"skipping {len(expected)} invalid entries" in caplog.text
    ds[0]


def test_affectnet_empty_after_filtering_and_missing_csv(exports, tmp_path):
    root = _copy(exports, "affectnet", tmp_path)
    csv_path = root / "Manually_Annotated_file_lists" / "validation.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join([lines[0]] + [",".join(l.split(",")[:6] + ["9", "-2", "-2"]) for l in lines[1:]]))
    with pytest.raises(DatasetValidationError, match="empty after filtering"):
        AffectNet(root, "val")  # only "Uncertain" rows are left
    with pytest.raises(DatasetValidationError, match="training.csv not found"):
        AffectNet(root / "Manually_Annotated_Images", "train", release="csv")


def test_truncated_jpeg_caught_by_full_verify_and_at_load(exports, tmp_path):
    root = _copy(exports, "affectnet", tmp_path)
    first = root / "Manually_Annotated_file_lists" / "training.csv"
    path = root / "Manually_Annotated_Images" / first.read_text().splitlines()[1].split(",")[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = AffectNet(root, "train")  # the header is intact: "header" verification cannot see it
    with pytest.raises(CorruptImageError, match=path.name):
        ds[ds.ids.index(path.stem)]
    with pytest.raises(DatasetValidationError, match="training.csv:2: unreadable image"):
        AffectNet(root, "train", verify="full")


def test_affectnet_npy_missing_annotation_and_image(exports, tmp_path):
    root = _copy(exports, "npy", tmp_path)
    (root / "train_set" / "annotations" / "0_aro.npy").unlink()
    (root / "train_set" / "images" / "1.jpg").unlink()
    np.save(root / "train_set" / "annotations" / "2_exp.npy", np.array("happy"))
    with pytest.raises(DatasetValidationError) as err:
        AffectNet(root, "train")
    text = _problems(err)
    assert "0_aro.npy: missing annotation file" in text and "1.jpg: missing image" in text
    assert "2_exp.npy: non-numeric expression" in text
    n_train = len(list((exports / "npy" / "train_set" / "images").glob("*.jpg")))
    assert len(AffectNet(root, "train", skip_invalid=True)) == n_train - 3


def test_rafd_every_problem_listed_then_skipped(exports, tmp_path, caplog):
    root = _copy(exports, "rafd", tmp_path)
    files = sorted(root.glob("*.jpg"))
    shutil.copy(files[0], root / files[0].name.replace("angry", "bored"))      # unknown expression word
    shutil.copy(files[0], root / "IMG_0001.jpg")                                # not a RaFD name
    files[1].write_bytes(b"garbage")                                              # corrupt image
    with pytest.raises(DatasetValidationError) as err:
        RaFD(root, "all")
    text = _problems(err)
    assert "unknown expression word 'bored'" in text and "IMG_0001.jpg" in text and "unreadable image" in text
    assert len(err.value.problems) == 3
    with caplog.at_level(logging.WARNING, logger="segexpr.data"):
        ds = RaFD(root, "all", skip_invalid=True)
    assert len(ds) == len(files) - 1 and "skipping 3 invalid entries" in caplog.text


# ------------------------------------------------------------------ ExpressionEditor: one check for CLI and API
def test_editor_refuses_bad_images_and_aus_with_hints():
    import torch

    from segexpr.editor import ExpressionEditor, check_images
    from tiny import tiny_joint_module

    torch.manual_seed(0)
    editor = ExpressionEditor.from_module(tiny_joint_module(32))
    good = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert check_images(good) is good
    assert check_images(good * 1.0005) is not None  # 1e-3 slack for resampling
    cases = [
        ((good + 1).mul(127.5).round().to(torch.uint8), "divide by 127.5 and subtract 1"),
        ((good + 1) * 127.5, "0-255 pixel values: divide by 127.5 and subtract 1"),
        (good * 1.01, r"must be in \[-1, 1\]"),
        (good.masked_fill(torch.zeros_like(good, dtype=torch.bool).index_fill_(3, torch.tensor([3]), True),
                          float("nan")), "NaN or infinite"),
        (torch.zeros(1, 3, 8, 32), "at least 16 px"),
        (torch.zeros(3, 32, 32), r"\[B, 3, H, W\]"),
        (np.zeros((1, 3, 32, 32), np.float32), "float tensor"),
    ]
    for images, message in cases:
        with pytest.raises(ValueError, match=message):
            editor.edit(images, expression="happy")
    with pytest.raises(ValueError, match="NaN or infinite"):
        editor.regions(good.clone().fill_(float("inf")))
    with pytest.raises(ValueError, match="references must be in"):
        editor.transfer(good, (good + 1) * 127.5)
    with pytest.raises(ValueError, match=r"aus must be intensities in \[0, 1\]"):
        editor.edit(good, aus=torch.full((17,), 2.0))
    with pytest.raises(ValueError, match=r"aus must be \[17\] or \[2, 17\]"):
        editor.edit(good, aus=torch.zeros(16))
    with pytest.raises(ValueError, match="aus contain NaN"):
        editor.edit(good, aus=torch.full((2, 17), float("nan")))
    # valid input behaves as before
    assert editor.edit(good, aus=torch.zeros(17)).shape == good.shape
    assert editor.edit(good, expression="happy").shape == good.shape
