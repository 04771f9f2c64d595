"""FaceTransform / FaceHorizontalFlip: contract, flip semantics, continuous keypoints, determinism."""
import numpy as np
import pytest
import torch

from segexpr.data.labels import CLASS_INDEX, FLIP_CLASS_PERMUTATION, IBUG_FLIP_PERMUTATION
from segexpr.data.affectnet import AffectNetDataModule
from segexpr.data.synthetic import SyntheticFacesDataModule
from segexpr.data.transforms import (FaceHorizontalFlip, build_transforms, check_augment, derive_seed, split_transforms,
                                     to_batch_tensors)

import albumentations as A


def _sample(h=48, w=48, rng=None):
    rng = rng or np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.integers(0, 19, (h, w)).astype(np.int64)
    landmarks = rng.uniform(0, min(h, w), (68, 2)).astype(np.float32)
    return {"image": image, "mask": mask, "landmarks": landmarks, "expression": 3,
            "aus": rng.uniform(0, 1, 17).astype(np.float32), "identity": np.int64(7), "name": "x.jpg"}


def test_eval_transform_contract_and_passthrough():
    out = build_transforms(32, train=False)(_sample(48, 64))  # non-square input is resized to 32 x 32
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert out["image"].min() >= -1 and out["image"].max() <= 1
    assert out["mask"].shape == (32, 32) and out["mask"].dtype == torch.int64
    assert out["landmarks"].shape == (68, 2) and out["landmarks"].dtype == torch.float32
    assert out["expression"].dtype == torch.int64 and int(out["expression"]) == 3
    assert out["aus"].dtype == torch.float32 and out["aus"].shape == (17,)
    assert int(out["identity"]) == 7 and out["name"] == "x.jpg"


def test_resize_scales_landmarks_by_the_factor():
    sample = _sample(48, 64)
    out = build_transforms(32, train=False)(sample)
    expected = sample["landmarks"] * np.array([32 / 64, 32 / 48], np.float32)
    np.testing.assert_allclose(out["landmarks"].numpy(), expected, atol=1e-4)


def test_face_flip_swaps_classes_and_landmark_indices():
    sample = _sample()
    flip = A.Compose([FaceHorizontalFlip(p=1.0)], keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))
    out = flip(image=sample["image"], mask=sample["mask"].astype(np.uint8), keypoints=sample["landmarks"])
    np.testing.assert_array_equal(out["image"], sample["image"][:, ::-1])
    np.testing.assert_array_equal(out["mask"], FLIP_CLASS_PERMUTATION[sample["mask"][:, ::-1]])
    expected = sample["landmarks"][IBUG_FLIP_PERMUTATION].copy()
    expected[:, 0] = 48 - expected[:, 0]  # continuous convention: x -> W - x
    np.testing.assert_allclose(np.asarray(out["keypoints"])[:, :2], expected, atol=1e-5)


def test_flip_rejects_partial_landmark_sets():
    flip = A.Compose([FaceHorizontalFlip(p=1.0)], keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))
    with pytest.raises(ValueError, match="68"):
        flip(image=np.zeros((8, 8, 3), np.uint8), keypoints=np.zeros((5, 2), np.float32))


def test_geometric_augmentation_moves_landmarks_with_the_pixels():
    """A bright blob at a landmark stays under the transformed landmark (flip + affine, continuous coords)."""
    size = 64
    image = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), np.int64)
    landmarks = np.full((68, 2), 32.0, np.float32)
    landmarks[36] = (20.0, 24.0)  # centre of the 4x4 blob covering columns 18-21, rows 22-25
    image[22:26, 18:22] = 255
    mask[22:26, 18:22] = CLASS_INDEX["l_eye"]
    transform = build_transforms(size, train=True, flip_p=1.0, color_jitter=False, rotate=(10, 10), scale=(1.1, 1.1))
    out = transform({"image": image, "mask": mask, "landmarks": landmarks}, seed=1)
    weight = (out["image"][0] + 1).numpy()
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    centroid = np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
    np.testing.assert_allclose(out["landmarks"][45].numpy(), centroid, atol=0.35)  # 36 became 45 after the flip
    # the flipped blob carries the swapped label
    assert (out["mask"] == CLASS_INDEX["r_eye"]).sum() > 0 and (out["mask"] == CLASS_INDEX["l_eye"]).sum() == 0


def test_seeded_augmentation_is_deterministic_and_varies_with_seed():
    transform = build_transforms(32, train=True)
    sample = _sample()
    a, b = transform(sample, seed=5), build_transforms(32, train=True)(sample, seed=5)
    assert all(torch.equal(a[k], b[k]) for k in ("image", "mask", "landmarks"))
    others = [transform(sample, seed=s)["image"] for s in range(6, 10)]
    assert any(not torch.equal(a["image"], o) for o in others)


def test_aligned_and_reference_keys():
    rng = np.random.default_rng(1)
    sample = _sample(rng=rng)
    sample["transfer_target"] = sample["image"].copy()
    sample["reference_image"] = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
    sample["reference_mask"] = np.zeros((48, 48), np.int64)
    out = build_transforms(32, train=True)(sample, seed=3)
    assert torch.equal(out["image"], out["transfer_target"])  # same augmentation as the source
    assert out["reference_image"].shape == (3, 32, 32) and out["reference_mask"].dtype == torch.int64


@pytest.mark.parametrize("bad, match", [
    ({"image": np.zeros((8, 8), np.uint8)}, "uint8 RGB"),
    ({"image": np.zeros((8, 8, 3), np.float32)}, "uint8 RGB"),
    ({"image": np.zeros((8, 8, 3), np.uint8), "mask": np.zeros((7, 8), np.int64)}, "mask"),
    ({"image": np.zeros((8, 8, 3), np.uint8), "landmarks": np.zeros((68, 3))}, "landmarks"),
    ({"mask": np.zeros((8, 8), np.int64)}, "image"),
])
def test_bad_samples_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        build_transforms(16, train=False)(bad)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="image_size"):
        build_transforms(0, train=True)
    with pytest.raises(ValueError, match="probabilit"):
        build_transforms(32, train=True, flip_p=1.5)
    with pytest.raises(ValueError, match="non-negative"):
        derive_seed(-1, 2)


def test_to_batch_tensors_and_derive_seed():
    out = to_batch_tensors({"image": np.full((4, 4, 3), 255, np.uint8), "mask": np.ones((4, 4), np.uint8)})
    assert torch.all(out["image"] == 1.0) and out["mask"].dtype == torch.int64
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)


def test_split_transforms_flip_only_mirrors_and_nothing_else():
    """``augment="flip"`` (the GAN configs'): each training item is the resized image or its exact mirror (no
    rotation, no colour change); ``True`` also warps and recolours; other splits and ``False`` only resize."""
    sample = _sample()
    plain = split_transforms(32, "val", "flip")(sample, seed=0)["image"]
    mirrored = torch.flip(plain, dims=[2])
    flips = 0
    for seed in range(20):
        out = split_transforms(32, "train", "flip")(sample, seed=seed)["image"]
        same, mirror = torch.equal(out, plain), torch.equal(out, mirrored)
        assert same or mirror
        flips += mirror
        assert torch.equal(split_transforms(32, "train", False)(sample, seed=seed)["image"], plain)
    assert 0 < flips < 20
    full = [split_transforms(32, "train", True)(sample, seed=s)["image"] for s in range(5)]
    assert not any(torch.equal(x, plain) or torch.equal(x, mirrored) for x in full)


@pytest.mark.parametrize("bad", ["rotate", 1, None, "true"])
def test_augment_choices_are_checked(bad):
    assert [check_augment(v) for v in (True, False, "flip")] == [True, False, "flip"]
    with pytest.raises(ValueError, match="augment must be true .* 'flip'"):
        check_augment(bad)
    with pytest.raises(ValueError, match="augment must be"):
        AffectNetDataModule(root="unused", augment=bad)  # refused when built, before any data is read
    with pytest.raises(ValueError, match="augment must be"):
        SyntheticFacesDataModule(size=32, augment=bad)


def test_synthetic_datamodule_takes_flip_only_augmentation():
    dm = SyntheticFacesDataModule(size=32, train_length=4, val_length=2, test_length=2, augment="flip")
    transform = dm.build_dataset("train").transform
    assert transform.train and len(transform.compose.transforms) == 2  # resize + flip, no affine or jitter
    assert dm.build_dataset("val").transform is None
