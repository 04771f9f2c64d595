"""RaFD loader against trees written by ``segexpr export-synthetic --format rafd``."""
import shutil

import numpy as np
import pytest
import torch

from segexpr.data.export import export_synthetic, load_ground_truth
from segexpr.data.labels import EXPRESSIONS
from segexpr.data.rafd import RaFD, RaFDDataModule, RafdName, parse_rafd_name, subject_split
from segexpr.data.validation import DatasetValidationError

SIZE = 32
SUBJECTS = 10
WORD_TO_NAME = {"angry": "anger", "contemptuous": "contempt", "disgusted": "disgust", "fearful": "fear",
                "happy": "happy", "neutral": "neutral", "sad": "sad", "surprised": "surprise"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("rafd") / "RaFD"
    export_synthetic("rafd", root, count=SUBJECTS, size=SIZE, seed=7)
    return root


def test_parse_every_field():
    n = parse_rafd_name("/data/Rafd090_07_Moroccan_male_contemptuous_left.jpg")
    assert n == RafdName("090", 7, "Moroccan", "male", "contemptuous", "left")
    assert EXPRESSIONS[n.label] == "contempt"
    with pytest.raises(ValueError, match="not a RaFD file name"):
        parse_rafd_name("IMG_0001.jpg")
    with pytest.raises(ValueError, match="unknown expression word 'bored'"):
        parse_rafd_name("Rafd090_01_Kid_female_bored_frontal.jpg")
    with pytest.raises(ValueError, match="unknown gaze"):
        parse_rafd_name("Rafd090_01_Kid_female_happy_up.jpg")


def test_export_layout_and_labels(exported):
    gt = load_ground_truth(exported)
    files = sorted(p.name for p in exported.glob("*.jpg"))
    assert len(files) == SUBJECTS * 8 * 3
    subjects = sorted({parse_rafd_name(f).subject for f in files})
    assert len(subjects) == SUBJECTS and subjects != list(range(subjects[0], subjects[0] + SUBJECTS))  # gaps
    ds = RaFD(exported, "all", image_size=SIZE)
    assert len(ds) == len(files)
    for i in range(0, len(ds), 7):
        item = ds[i]
        name = parse_rafd_name(ds.records[i].path.name)
        assert EXPRESSIONS[item["expression"].item()] == WORD_TO_NAME[name.expression]
        assert item["identity"].item() == name.subject
        assert item["expression"].item() == gt["expression"][list(gt["ids"]).index(ds.ids[i])]
    assert len(RaFD(exported, "all", gazes=("frontal",))) == SUBJECTS * 8


def test_splits_are_subject_disjoint_and_seeded(exported):
    splits = {s: RaFD(exported, s, val_fraction=0.2, test_fraction=0.2) for s in ("train", "val", "test")}
    subjects = {s: {r.subject for r in ds.records} for s, ds in splits.items()}
    assert [len(subjects[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert subjects["train"].isdisjoint(subjects["val"]) and subjects["train"].isdisjoint(subjects["test"])
    assert subjects["val"].isdisjoint(subjects["test"])
    for s, ds in splits.items():  # every image of a subject goes with it
        assert len(ds) == 24 * len(subjects[s])
    again = RaFD(exported, "test", val_fraction=0.2, test_fraction=0.2)
    assert {r.subject for r in again.records} == subjects["test"]
    other = [subject_split(range(100), 0.1, 0.1, seed)["test"] for seed in (0, 1)]
    assert other[0] != other[1] and len(other[0]) == 10


def test_stargan_layout(exported, tmp_path):
    # StarGAN's train/<expression>/ folders with RaFD names: subjects still come from the names
    root = tmp_path / "stargan"
    for p in exported.glob("*.jpg"):
        word = parse_rafd_name(p.name).expression
        split = "test" if parse_rafd_name(p.name).subject % 3 == 0 else "train"
        (root / split / word).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, root / split / word / p.name)
    ds = RaFD(root, "train", val_fraction=0.2, test_fraction=0.2)
    assert ds.layout == "stargan" and ds.by_subject
    assert len({r.subject for r in ds.records}) == 6
    # renamed files: no subjects, the folders are the split (test doubles as val)
    plain = tmp_path / "plain"
    for i, p in enumerate(sorted(root.rglob("*.jpg"))):
        rel = p.relative_to(root).parent
        (plain / rel).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, plain / rel / f"img_{i:04d}.jpg")
    train, val = RaFD(plain, "train"), RaFD(plain, "val")
    assert not train.by_subject
    assert len(train) == len(list((root / "train").rglob("*.jpg")))
    assert len(val) == len(list((root / "test").rglob("*.jpg")))
    item = train[0]
    assert item["identity"].item() == -1
    assert EXPRESSIONS[item["expression"].item()] == WORD_TO_NAME[train.records[0].path.parent.name]


def test_filters_that_leave_nothing_raise(exported):
    with pytest.raises(DatasetValidationError, match="empty after filtering"):
        RaFD(exported, "all", angles=("045",))


def test_datamodule_fit_with_workers(exported):
    dm = RaFDDataModule(str(exported), image_size=SIZE, batch_size=8, num_workers=2, val_fraction=0.2,
                        test_fraction=0.2, seed=3)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.dataset("train")) // 8
    b = batches[0]
    assert b["image"].shape == (8, 3, SIZE, SIZE) and b["image"].dtype == torch.float32
    assert b["expression"].dtype == torch.int64 and b["identity"].dtype == torch.int64
    train_ids = {r.subject for r in dm.dataset("train").records}
    assert set(np.unique(b["identity"].numpy())) <= train_ids
    assert train_ids.isdisjoint({r.subject for r in dm.dataset("val").records})
