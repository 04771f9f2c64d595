"""CelebAMask-HQ loader against trees written by ``segexpr export-synthetic --format celebamask-hq``."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from segexpr.data import celebamask_hq as chq
from segexpr.data.celebamask_hq import (
    CelebAMaskHQ,
    CelebAMaskHQDataModule,
    ProblemCollector,
    read_mapping,
    split_ids,
    to_order_a,
    to_order_b,
)
from segexpr.data.export import export_synthetic, load_ground_truth
from segexpr.data.labels import CELEBAMASK_HQ_CLASSES, CELEBAMASK_HQ_CLASSES_B, NUM_CLASSES

SIZE = 64  # images 64 px, masks 32 px (the release's 1024 / 512 ratio)
COUNT = 10


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("celebamask") / "CelebAMask-HQ"
    export_synthetic("celebamask-hq", root, count=COUNT, size=SIZE, seed=3)
    return root


@pytest.fixture
def tree(exported, tmp_path):
    """A private copy (tests modify part files) and a private cache folder."""
    root = tmp_path / "CelebAMask-HQ"
    shutil.copytree(exported, root)
    return root, tmp_path / "cache"


def _gt_mask(gt, image_id):
    return gt["masks"][list(gt["ids"]).index(image_id)]


def test_masks_equal_exported_ground_truth(tree):
    root, cache = tree
    gt = load_ground_truth(root)
    seen = 0
    for split in ("train", "val", "test"):
        ds = CelebAMaskHQ(root, split, image_size=SIZE // 2, cache_dir=cache)
        assert set(ds.ids) == {i for i, s in zip(gt["ids"], gt["split"]) if s == split}
        for i in range(len(ds)):
            item = ds[i]
            want = _gt_mask(gt, ds.ids[i])
            # at mask resolution the eval transform is the identity on masks
            np.testing.assert_array_equal(item["mask"].numpy(), want)
            assert item["mask"].dtype == torch.int64 and item["image"].shape == (3, SIZE // 2, SIZE // 2)
            assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0
            seen += 1
    assert seen == COUNT


def test_later_parts_win_and_skin_underlies_features(tree):
    """The exporter's skin part covers eyes/brows/nose/lips; painting order must put the features on top."""
    root, cache = tree
    gt = load_ground_truth(root)
    ds = CelebAMaskHQ(root, "train", cache_dir=cache)
    k = int(ds.ids[0])
    skin = np.asarray(Image.open(root / "CelebAMask-HQ-mask-anno" / "0" / f"{k:05d}_skin.png").convert("L")) > 127
    merged = ds.merged_mask(0)
    eyes = np.isin(merged, [CELEBAMASK_HQ_CLASSES.index("l_eye"), CELEBAMASK_HQ_CLASSES.index("r_eye")])
    assert eyes.any() and skin[eyes].all()  # skin file covers the eyes, yet the merge keeps them as eyes
    np.testing.assert_array_equal(merged, _gt_mask(gt, ds.ids[0]))


def test_label_order_b_and_round_trip(tree):
    root, cache = tree
    gt = load_ground_truth(root)
    ds_b = CelebAMaskHQ(root, "train", image_size=SIZE // 2, label_order="B", cache_dir=cache)
    mask_b = ds_b[0]["mask"]
    want_a = _gt_mask(gt, ds_b.ids[0]).astype(np.int64)
    for a in np.unique(want_a):  # same pixels, class named identically in the other order
        b = np.unique(mask_b.numpy()[want_a == a])
        assert len(b) == 1 and CELEBAMASK_HQ_CLASSES_B[b[0]] == CELEBAMASK_HQ_CLASSES[a]
    np.testing.assert_array_equal(to_order_a(mask_b).numpy(), want_a)
    every = np.arange(NUM_CLASSES)
    np.testing.assert_array_equal(to_order_a(to_order_b(every)), every)
    assert [CELEBAMASK_HQ_CLASSES_B[b] for b in to_order_b(every)] == list(CELEBAMASK_HQ_CLASSES)
    t = torch.randint(0, NUM_CLASSES, (2, 5, 5), dtype=torch.uint8)
    assert to_order_b(t).dtype == torch.uint8 and torch.equal(to_order_b(to_order_a(t)), t)
    with pytest.raises(ValueError, match="class ids"):
        to_order_b(np.array([19]))
    with pytest.raises(TypeError):
        to_order_b(torch.zeros(3))


def test_cache_reused_then_invalidated_by_a_changed_part(tree, monkeypatch):
    root, cache = tree
    ds = CelebAMaskHQ(root, "train", cache_dir=cache)
    for i in range(len(ds)):
        ds[i]
    files = sorted(p for p in cache.iterdir() if p.suffix == ".png")
    assert len(files) == len(ds)
    stamps = {p.name: p.stat().st_mtime_ns for p in files}

    def no_merge(parts):
        raise AssertionError("mask merged again although it is cached")

    monkeypatch.setattr(chq, "merge_parts", no_merge)
    ds2 = CelebAMaskHQ(root, "train", cache_dir=cache)
    masks = [ds2.merged_mask(i) for i in range(len(ds2))]
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if p.suffix == ".png"} == stamps
    monkeypatch.undo()

    # erase one part of image 0: only that image's cache entry is invalidated and re-merged
    k = int(ds2.ids[0])
    part = next(p for p in ["mouth", "nose", "l_eye"]
                if (root / "CelebAMask-HQ-mask-anno" / "0" / f"{k:05d}_{p}.png").exists())
    path = root / "CelebAMask-HQ-mask-anno" / "0" / f"{k:05d}_{part}.png"
    Image.new("RGB", Image.open(path).size).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    ds3 = CelebAMaskHQ(root, "train", cache_dir=cache)
    new = ds3.merged_mask(0)
    assert not (new == CELEBAMASK_HQ_CLASSES.index(part)).any()
    assert (masks[0] == CELEBAMASK_HQ_CLASSES.index(part)).any()
    names = {p.name for p in cache.iterdir() if p.suffix == ".png"}
    assert len(names) == len(ds3) and ds3.cache_path(0).name in names
    assert sum(n.startswith(f"{k}_") for n in names) == 1  # the stale entry was removed
    for i in range(1, len(ds3)):
        assert ds3.cache_path(i).name in stamps


def test_default_cache_dir_follows_env(tree, monkeypatch, tmp_path):
    root, _ = tree
    monkeypatch.setenv("SEGEXPR_CACHE", str(tmp_path / "envcache"))
    d = chq.default_cache_dir(root)
    assert d.parent == tmp_path / "envcache" / "celebamask_hq"
    ds = CelebAMaskHQ(root, "val")
    ds[0]
    assert ds.cache_path(0).parent == d and ds.cache_path(0).exists()


def test_standard_split_sizes_from_30000_row_mapping(tmp_path):
    """CelebA's thresholds on a 30000-row mapping file give the published 24183/2993/2824."""
    rng = np.random.default_rng(0)
    orig = np.concatenate([
        rng.choice(162770 - 1, 24183 - 1, replace=False), [162769],          # train, incl. the last train index
        [162770, 182636], 162771 + rng.choice(19864, 2993 - 2, replace=False),  # val, both boundaries
        [182637], 182638 + rng.choice(19960, 2824 - 1, replace=False),         # test, first test index
    ])
    rng.shuffle(orig)
    path = tmp_path / "CelebA-HQ-to-CelebA-mapping.txt"
    path.write_text("idx orig_idx orig_file\n" + "".join(f"{i} {o} {o + 1:06d}.jpg\n" for i, o in enumerate(orig)))
    problems = ProblemCollector("mapping")
    mapping = read_mapping(path, problems)
    assert len(problems) == 0 and len(mapping) == 30000
    splits = split_ids(mapping)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [24183, 2993, 2824]
    assert set(splits["train"]).isdisjoint(splits["val"]) and set(splits["val"]).isdisjoint(splits["test"])


def test_list_file_overrides_split(tree):
    root, cache = tree
    lst = root.parent / "subset.txt"
    lst.write_text("# my subset\n3\n5.jpg\nCelebA-HQ-img/7.jpg\n")
    ds = CelebAMaskHQ(root, "train", list_file=str(lst), cache_dir=cache)
    assert ds.ids == ["3", "5", "7"]
    ds = CelebAMaskHQ(root, "val", list_file={"val": str(lst)}, cache_dir=cache)
    assert len(ds) == 3


def test_datamodule_fit_with_workers(tree):
    root, cache = tree
    dm = CelebAMaskHQDataModule(str(root), image_size=32, cache_dir=str(cache), batch_size=4, num_workers=2)
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert len(batches) == len(dm.dataset("train")) // 4
    b = batches[0]
    assert b["image"].shape == (4, 3, 32, 32) and b["image"].dtype == torch.float32
    assert b["mask"].shape == (4, 32, 32) and b["mask"].dtype == torch.int64
    assert int(b["mask"].min()) >= 0 and int(b["mask"].max()) < NUM_CLASSES
    assert b["image"].min() >= -1 and b["image"].max() <= 1
    val = next(iter(dm.val_dataloader()))
    assert val["mask"].shape[1:] == (32, 32)
    # the epoch advances the augmentation: same index, different epoch -> different sample
    ds = dm.dataset("train")
    ds.set_epoch(0)
    a = ds[0]["image"]
    ds.set_epoch(1)
    assert not torch.equal(a, ds[0]["image"])
    ds.set_epoch(0)
    assert torch.equal(a, ds[0]["image"])
