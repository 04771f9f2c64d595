"""AffectNet loader against trees written by ``segexpr export-synthetic --format affectnet[-npy]``."""
import shutil

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segexpr.data.affectnet import AffectNet, AffectNetDataModule, class_balanced_weights, crop_box
from segexpr.data.export import export_synthetic, load_ground_truth
from segexpr.data.base import EpochSampler

SIZE = 48
COUNT = 30  # 24 training rows (3 of them codes 8-10), 6 validation rows


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("affectnet") / "AffectNet"
    export_synthetic("affectnet", root, count=COUNT, size=SIZE, seed=5)
    return root


@pytest.fixture(scope="module")
def exported_npy(tmp_path_factory):
    root = tmp_path_factory.mktemp("affectnet_npy") / "AffectNet8"
    export_synthetic("affectnet-npy", root, count=10, size=SIZE, seed=6)
    return root


@pytest.fixture
def tree(exported, tmp_path):
    root = tmp_path / "AffectNet"
    shutil.copytree(exported, root)
    return root


def _gt_row(gt, image_id):
    return list(gt["ids"]).index(image_id)


def test_splits_and_dropped_codes(exported):
    gt = load_ground_truth(exported)
    train, val = AffectNet(exported, "train"), AffectNet(exported, "val")
    test = AffectNet(exported, "test")
    for ds, split in ((train, "train"), (val, "val")):
        want = [i for i, s, e in zip(gt["ids"], gt["split"], gt["expression"]) if s == split and e < 8]
        assert sorted(ds.ids) == sorted(want)
    assert test.ids == val.ids  # AffectNet has no public test set
    assert any(e >= 8 for e in gt["expression"])  # the export does contain codes 8-10 to drop
    seven = AffectNet(exported, "train", classes=7)
    assert 7 not in seven.targets and len(seven) == len(train) - train.targets.count(7)


def test_landmarks_land_in_crop_coordinates(exported):
    gt = load_ground_truth(exported)
    # margin 0: the crop is exactly the face box, resized to SIZE
    ds = AffectNet(exported, "train", image_size=SIZE, margin=0.0)
    for i in range(len(ds)):
        item = ds[i]
        r = _gt_row(gt, ds.ids[i])
        x, y, side = gt["box"][r][:3]
        want = (gt["landmarks"][r] - np.array([x, y], np.float32)) * (SIZE / side)
        np.testing.assert_allclose(item["landmarks"].numpy(), want, atol=2e-3)
        assert item["expression"].item() == gt["expression"][r]
        assert item["valence"].item() == pytest.approx(gt["valence"][r], abs=1e-5)
        assert item["arousal"].item() == pytest.approx(gt["arousal"][r], abs=1e-5)
    # with a margin the crop grows and is resized back to SIZE: landmarks scale with it
    ds = AffectNet(exported, "train", image_size=SIZE, margin=0.25)
    item = ds[0]
    r = _gt_row(gt, ds.ids[0])
    canvas = Image.open(ds.records[0].path).size
    x0, y0, x1, y1 = crop_box(tuple(float(v) for v in gt["box"][r]), canvas, 0.25)
    scale = np.array([SIZE / (x1 - x0), SIZE / (y1 - y0)], np.float32)
    np.testing.assert_allclose(item["landmarks"].numpy(), (gt["landmarks"][r] - [x0, y0]) * scale, atol=1e-2)
    # crop="none" keeps full-image coordinates (scaled by the resize)
    ds = AffectNet(exported, "train", image_size=SIZE, crop="none")
    w, h = gt["canvas_size"][_gt_row(gt, ds.ids[0])]
    np.testing.assert_allclose(ds[0]["landmarks"].numpy(),
                               gt["landmarks"][_gt_row(gt, ds.ids[0])] * [SIZE / w, SIZE / h], atol=1e-2)


def test_crop_box_margin_square_and_clipping():
    assert crop_box((10, 20, 40, 40), (100, 100), 0.0) == (10, 20, 50, 60)
    assert crop_box((10, 20, 40, 20), (100, 100), 0.0) == (10, 10, 50, 50)  # squared around the centre
    assert crop_box((10, 20, 40, 40), (100, 100), 0.25) == (0, 10, 60, 70)  # grown, clipped at x=0
    assert crop_box((80, 80, 40, 40), (100, 90), 0.0) == (80, 80, 100, 90)


def test_face_crop_matches_pasted_face(exported):
    gt = load_ground_truth(exported)
    ds = AffectNet(exported, "val", image_size=SIZE, margin=0.0)
    r = _gt_row(gt, ds.ids[0])
    x, y, w, h = gt["box"][r]
    canvas = Image.open(ds.records[0].path).convert("RGB")
    # resized as the loader's transform resizes (cv2 INTER_AREA)
    want = cv2.resize(np.asarray(canvas.crop((x, y, x + w, y + h))), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
    want = want.astype(np.float32) / 127.5 - 1
    canvas = np.asarray(canvas, np.float32)
    got = ds[0]["image"].permute(1, 2, 0).numpy()
    assert np.abs(got - want).mean() < 0.02
    assert np.abs(got - canvas[:SIZE, :SIZE] / 127.5 + 1).mean() > 0.05  # not just the canvas corner


def test_default_crop_is_the_render_as_synthfacs_frames_it(exported):
    """The exported face box is the render shrunk by the default margin, so the loader's default crop is the
    pasted render (to within a pixel of rounding), not the render inside a band of canvas."""
    gt = load_ground_truth(exported)
    ds = AffectNet(exported, "train", image_size=SIZE)  # default margin
    for i in range(len(ds)):
        r = _gt_row(gt, ds.ids[i])
        canvas = Image.open(ds.records[i].path).size
        x0, y0, x1, y1 = crop_box(tuple(float(v) for v in gt["box"][r]), canvas, ds.margin)
        ox, oy, size, _ = (int(v) for v in gt["render_box"][r])
        assert max(abs(x0 - ox), abs(y0 - oy), abs(x1 - ox - size), abs(y1 - oy - size)) <= 1
    r = _gt_row(gt, ds.ids[0])
    ox, oy, size, _ = (int(v) for v in gt["render_box"][r])
    canvas = np.asarray(Image.open(ds.records[0].path).convert("RGB"), np.float32)
    want = torch.from_numpy(canvas[oy:oy + size, ox:ox + size] / 127.5 - 1).permute(2, 0, 1)
    assert (ds[0]["image"] - want).abs().mean() < 0.05


def test_missing_valence_is_nan(tree):
    csv = tree / "Manually_Annotated_file_lists" / "training.csv"
    lines = csv.read_text().splitlines()
    fields = lines[1].split(",")
    fields[-2] = "-2"  # AffectNet's "missing" marker
    lines[1] = ",".join(fields)
    csv.write_text("\n".join(lines) + "\n")
    ds = AffectNet(tree, "train")
    i = ds.ids.index(fields[0].split("/")[-1][:-4])
    assert torch.isnan(ds[i]["valence"]) and not torch.isnan(ds[i]["arousal"])


def test_csv_without_header_and_other_locations(tree, exported):
    reference = AffectNet(exported, "train")
    lists = tree / "Manually_Annotated_file_lists"
    for name in ("training.csv", "validation.csv"):  # header row absent
        lines = (lists / name).read_text().splitlines()
        (lists / name).write_text("\n".join(lines[1:]) + "\n")
    assert AffectNet(tree, "train").ids == reference.ids
    # CSVs directly in root
    for name in ("training.csv", "validation.csv"):
        shutil.move(lists / name, tree / name)
    assert AffectNet(tree, "train").ids == reference.ids
    # CSVs deeper and images somewhere else: both located by name
    (tree / "meta" / "lists").mkdir(parents=True)
    for name in ("training.csv", "validation.csv"):
        shutil.move(tree / name, tree / "meta" / "lists" / name)
    (tree / "data").mkdir()
    shutil.move(tree / "Manually_Annotated_Images", tree / "data" / "Manually_Annotated_Images")
    ds = AffectNet(tree, "train")
    assert ds.ids == reference.ids and ds.image_dir == tree / "data" / "Manually_Annotated_Images"
    ds[0]


def test_npy_release_is_detected(exported_npy):
    gt = load_ground_truth(exported_npy)
    ds = AffectNet(exported_npy, "train", image_size=SIZE)
    assert ds.release == "npy"
    assert sorted(ds.ids) == sorted(i for i, s in zip(gt["ids"], gt["split"]) if s == "train")
    for i in range(len(ds)):
        r = _gt_row(gt, ds.ids[i])
        item = ds[i]
        assert item["expression"].item() == gt["expression"][r]
        assert item["valence"].item() == pytest.approx(gt["valence"][r], abs=1e-5)
        np.testing.assert_allclose(item["landmarks"].numpy(), gt["landmarks"][r], atol=1e-4)
    assert len(AffectNet(exported_npy, "val")) == 2


def test_balanced_sampler_equalises_classes(exported):
    ds = AffectNet(exported, "train")
    counts = np.bincount(ds.targets, minlength=8)
    assert counts.max() > counts[counts > 0].min()  # the exported classes are unbalanced
    sampler = EpochSampler(ds, seed=1, weights=class_balanced_weights(ds.targets, 8), num_samples=8000)
    drawn = np.bincount(np.asarray(ds.targets)[list(sampler)], minlength=8)
    present = counts > 0
    assert np.allclose(drawn[present] / 8000, 1 / present.sum(), atol=0.03)
    sampler.set_epoch(3)
    a = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == a  # deterministic per epoch (no hidden state advanced by iterating)
    sampler.set_epoch(4)
    assert list(sampler) != a  # and another epoch differs


def test_datamodule_fit_with_workers(exported):
    dm = AffectNetDataModule(str(exported), image_size=32, batch_size=4, num_workers=2, balanced=True, seed=2)
    dm.setup("fit")
    assert isinstance(dm.train_sampler(), EpochSampler)
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.dataset("train")) // 4
    b = batches[0]
    assert b["image"].shape == (4, 3, 32, 32) and b["image"].dtype == torch.float32
    assert b["landmarks"].shape == (4, 68, 2) and b["landmarks"].dtype == torch.float32
    assert b["expression"].dtype == torch.int64 and (b["expression"] < 8).all()
    assert b["valence"].dtype == torch.float32 and b["arousal"].shape == (4,)
    again = list(dm.train_dataloader())  # a fresh loader replays epoch 0: same draws, same augmentation
    assert torch.equal(again[0]["image"], batches[0]["image"])
    dm.setup("test")
    assert next(iter(dm.test_dataloader()))["image"].shape[1:] == (3, 32, 32)
