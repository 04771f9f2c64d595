"""SynthFACS renderer and dataset: contract, determinism, mask/pixel/landmark consistency, locality of AUs."""
import cv2
import numpy as np
import pytest
import torch

import albumentations as A
from segexpr.data.labels import (CLASS_INDEX, FLIP_CLASS_PERMUTATION, IBUG_FLIP_PERMUTATION,
                                 NUM_AUS, expression_prototype)
from segexpr.data.synthetic import (SPLIT_IDENTITY_OFFSET, SyntheticFaces, _Canvas, _Frame, _outline,
                                    _static_layers, changeable_area, identity_params, nearest_expression, render)
from segexpr.data.transforms import FaceHorizontalFlip

SIZE = 64


def _distance_to(mask: np.ndarray, classes) -> np.ndarray:
    """Distance (px) from every pixel centre to the nearest pixel of ``classes``."""
    inside = np.isin(mask, classes)
    return cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 3)


def _at(dist: np.ndarray, points: np.ndarray) -> np.ndarray:
    cols = np.clip(points[:, 0].astype(int), 0, dist.shape[1] - 1)
    rows = np.clip(points[:, 1].astype(int), 0, dist.shape[0] - 1)
    return dist[rows, cols]


def test_render_contract_and_determinism():
    a = render(3, expression_prototype("happy"), SIZE)
    b = render(3, expression_prototype("happy").tolist(), SIZE)
    assert a["image"].shape == (SIZE, SIZE, 3) and a["image"].dtype == np.uint8
    assert a["mask"].shape == (SIZE, SIZE) and a["mask"].max() < 19
    assert a["landmarks"].shape == (68, 2) and a["landmarks"].dtype == np.float32
    assert a["aus"].dtype == np.float32 and a["identity"] == 3 and a["expression"] == 1
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    assert identity_params(3) == identity_params(3) != identity_params(4)
    required = ["background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "u_lip", "l_lip", "neck"]
    assert set(CLASS_INDEX[c] for c in required) <= set(np.unique(a["mask"]).tolist())
    opened = render(3, expression_prototype("surprise"), SIZE)["mask"]
    assert (opened == CLASS_INDEX["mouth"]).sum() > 0  # lips part: inner mouth visible


def test_identities_vary_widely():
    params = [identity_params(i) for i in range(200)]
    assert len({p.hair_style for p in params}) >= 5
    brightness = [sum(p.skin) / 3 for p in params]
    assert min(brightness) < 110 and max(brightness) > 200  # dark to light skin
    assert 0.05 < np.mean([p.glasses for p in params]) < 0.4
    assert max(abs(p.roll_deg) for p in params) > 3


def test_masks_match_pixels():
    for identity in range(6):
        p = identity_params(identity)
        sample = render(identity, expression_prototype("neutral"), 128)
        image, mask = sample["image"].astype(np.float64), sample["mask"]
        _, _, gain = _static_layers(p, 128)
        unlit = image / gain  # undo the lighting gradient to compare with the painted colours
        interior = lambda c: cv2.erode((mask == CLASS_INDEX[c]).astype(np.uint8), np.ones((3, 3))).astype(bool)
        for part in ("l_brow", "r_brow"):
            inside = interior(part)
            assert inside.sum() > 5, (identity, part)
            np.testing.assert_allclose(unlit[inside].mean(0), p.brow_color, atol=6)
        skin = interior("skin")
        for part in ("l_eye", "r_eye", "u_lip", "l_lip", "nose"):
            inside = interior(part) if part not in ("l_eye", "r_eye") else mask == CLASS_INDEX[part]
            assert inside.sum() > 0, (identity, part)
            assert np.abs(unlit[inside].mean(0) - unlit[skin].mean(0)).max() > 4, (identity, part)


def test_only_expression_regions_change():
    rng = np.random.default_rng(0)
    for identity in range(8):
        area = changeable_area(identity, SIZE)
        base = render(identity, rng.uniform(0, 1, NUM_AUS), SIZE)
        for _ in range(3):
            other = render(identity, rng.uniform(0, 1, NUM_AUS) * rng.integers(0, 2, NUM_AUS), SIZE)
            assert np.array_equal(base["image"][~area], other["image"][~area])
            assert np.array_equal(base["mask"][~area], other["mask"][~area])
    # the AUs do change the expression regions, and the area stays off clothes and background (a fringe may
    # cover part of it: hair is drawn over the face)
    neutral, happy = render(0, np.zeros(NUM_AUS), SIZE), render(0, expression_prototype("happy"), SIZE)
    assert (neutral["image"] != happy["image"]).any(axis=-1).sum() > 50
    area = changeable_area(0, SIZE)
    static = np.isin(neutral["mask"], [CLASS_INDEX[c] for c in ("background", "cloth")])
    assert (area & static).sum() < 0.08 * area.sum()  # only where the dropped chin may reach


def test_changeable_area_fraction_of_the_face():
    fractions = []
    for identity in range(10):
        p = identity_params(identity)
        head = np.zeros((SIZE, SIZE), np.uint8)
        cv2.fillPoly(head, [_Canvas._fixed(_Frame(p, SIZE)(_outline(p)))], 1, cv2.LINE_8, 4)
        fractions.append((changeable_area(identity, SIZE) & head.astype(bool)).sum() / head.sum())
    # brows, eyes, nose, mouth, cheeks and chin with their full ranges of motion (measured: ~0.72 at 64 px,
    # ~0.64 at 128 px, where the fixed anti-aliasing margin weighs less)
    assert 0.3 < np.mean(fractions) < 0.76


def _changeable_area_by_definition(identity: int, size: int) -> np.ndarray:
    """The changeable area as its docstring defines it, computed plainly: the convex hull of every filled zone
    shape and of every stroke segment over all zone samples, each hull from all its points, then the margin."""
    from segexpr.data.synthetic import _SHIFT, _ZONE_CURVES, _ZONE_POLYGONS, _ZONE_SAMPLES, _geometry

    p = identity_params(identity)
    shapes, _ = _geometry(p, _ZONE_SAMPLES)
    frame, area = _Frame(p, size), np.zeros((size, size), np.uint8)

    def fill(points):
        cv2.fillConvexPoly(area, cv2.convexHull(_Canvas._fixed(frame(points.reshape(-1, 2)))), 1, cv2.LINE_8, _SHIFT)

    for _, parts in _ZONE_POLYGONS:
        fill(np.concatenate([shapes[k][:, ::-1] if rev else shapes[k] for k, rev in parts], 1))
    for name in _ZONE_CURVES:
        for i in range(shapes[name].shape[1] - 1):
            fill(shapes[name][:, i:i + 2])
    margin = max(2, round(size / 64))
    return cv2.dilate(area, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2)).astype(bool)


@pytest.mark.parametrize("size", [33, 64, 128])
def test_changeable_area_is_its_definition_exactly(size):
    """The renderer's faster area (distinct points first, one sort for all hulls) is the plain one, pixel for
    pixel: every render is composited through it, so any difference would change SynthFACS itself."""
    for identity in (0, 7, 123, SPLIT_IDENTITY_OFFSET["test"] + 5):
        assert np.array_equal(changeable_area(identity, size), _changeable_area_by_definition(identity, size))


def test_landmarks_lie_on_their_parts():
    for identity in range(6):
        sample = render(identity, expression_prototype("surprise"), 128)
        mask, lm = sample["mask"], sample["landmarks"]
        eyes = _distance_to(mask, [CLASS_INDEX["l_eye"]]), _distance_to(mask, [CLASS_INDEX["r_eye"]])
        assert _at(eyes[0], lm[36:42]).max() <= 1.5 and _at(eyes[1], lm[42:48]).max() <= 1.5
        brows = _distance_to(mask, [CLASS_INDEX["l_brow"], CLASS_INDEX["hair"]])
        assert _at(brows, lm[17:22]).max() <= 1.0  # a fringe may cover the brow
        lips = _distance_to(mask, [CLASS_INDEX[c] for c in ("u_lip", "l_lip", "mouth")])
        assert _at(lips, lm[48:68]).max() <= 1.5
        nose = _distance_to(mask, [CLASS_INDEX["nose"]])
        assert _at(nose, lm[27:36]).max() <= 1.5
        assert lm[36:42, 0].mean() < lm[42:48, 0].mean()  # l_* is the image's left


def test_expressions_move_the_right_landmarks():
    def lm(expression, identity=2):
        return render(identity, expression_prototype(expression), 128)["landmarks"]
    neutral = lm("neutral")
    happy, sad, surprise, anger = lm("happy"), lm("sad"), lm("surprise"), lm("anger")
    corners = [48, 54]
    assert (happy[corners, 1] < neutral[corners, 1] - 3).all()  # smile: corners up
    assert (happy[54, 0] - happy[48, 0]) > (neutral[54, 0] - neutral[48, 0]) + 2  # ... and out
    assert (sad[corners, 1] > neutral[corners, 1] + 2).all()  # corners down
    assert (sad[[21, 22], 1] < neutral[[21, 22], 1] - 2).all()  # inner brows up
    assert (surprise[17:27, 1] < neutral[17:27, 1] - 2).all()  # brows up
    assert surprise[66, 1] - surprise[62, 1] > 8  # mouth open
    assert surprise[8, 1] > neutral[8, 1] + 3  # jaw drop lowers the chin
    assert (anger[17:27, 1] > neutral[17:27, 1] + 1).all()  # brows down
    assert anger[22, 0] - anger[21, 0] < neutral[22, 0] - neutral[21, 0] - 1  # ... and together
    contempt = lm("contempt")
    left_rise = neutral[48, 1] - contempt[48, 1]
    right_rise = neutral[54, 1] - contempt[54, 1]
    assert left_rise > 2 and abs(right_rise) < 0.5  # unilateral
    assert nearest_expression(expression_prototype("fear")) == 4


def test_flip_consistency():
    sample = render(5, expression_prototype("contempt"), SIZE)
    flip = A.Compose([FaceHorizontalFlip(p=1.0)], keypoint_params=A.KeypointParams(format="xy", remove_invisible=False))
    out = flip(image=sample["image"], mask=sample["mask"], keypoints=sample["landmarks"])
    np.testing.assert_array_equal(out["mask"], FLIP_CLASS_PERMUTATION[sample["mask"][:, ::-1]])
    expected = sample["landmarks"][IBUG_FLIP_PERMUTATION].copy()
    expected[:, 0] = SIZE - expected[:, 0]
    landmarks = np.asarray(out["keypoints"])[:, :2]
    np.testing.assert_allclose(landmarks, expected, atol=1e-4)
    l_eye = _distance_to(out["mask"], [CLASS_INDEX["l_eye"]])
    assert _at(l_eye, landmarks[36:42]).max() <= 1.5


def test_dataset_items_contract_and_determinism():
    data = SyntheticFaces(size=32, length=24, seed=1, split="val", identities=6)
    item = data[5]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    assert item["mask"].dtype == torch.int64 and item["landmarks"].shape == (68, 2)
    assert item["aus"].shape == (17,) and 0 <= item["aus"].min() and item["aus"].max() <= 1
    assert item["identity"].dtype == torch.int64 and item["expression"].dtype == torch.int64
    assert int(item["identity"]) == SPLIT_IDENTITY_OFFSET["val"] + 5
    again = SyntheticFaces(size=32, length=24, seed=1, split="val", identities=6)
    forward = [data[i]["image"] for i in range(24)]
    backward = [again[i]["image"] for i in reversed(range(24))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(forward, backward))
    assert not torch.equal(SyntheticFaces(32, 24, seed=2, split="val", identities=6)[5]["aus"], item["aus"])


def test_dataset_expressions_and_aus():
    data = SyntheticFaces(size=16, length=400, identities=40)
    samples = [data.sample_numpy(i) for i in range(0, 400, 2)]
    counts = np.bincount([s["expression"] for s in samples], minlength=8)
    assert counts.min() > 10  # uniform over the 8 classes
    for s in samples[:40]:
        proto = expression_prototype(s["expression"])
        on = proto > 0
        ratio = s["aus"][on] / proto[on]
        assert ((ratio >= 0.6 - 1e-6) & (ratio <= 1.0 + 1e-6)).all()
        assert (s["aus"][~on] <= 0.15 + 1e-6).all() and (s["aus"][~on] > 0).sum() <= 2


def test_split_identities_are_disjoint():
    pools = {split: {int(SyntheticFaces(16, 50, split=split, identities=20).identity_of(i)) for i in range(50)}
             for split in ("train", "val", "test")}
    assert not (pools["train"] & pools["val"]) and not (pools["train"] & pools["test"]) and not (pools["val"] & pools["test"])
    assert len(pools["train"]) == 20


def test_pairs():
    data = SyntheticFaces(size=32, length=10, identities=5, pairs=True)
    item = data[3]
    assert int(item["reference_identity"]) != int(item["identity"])
    for key in ("reference_image", "reference_mask", "reference_aus", "reference_expression", "reference_landmarks",
                "transfer_target"):
        assert key in item
    expected = render(int(item["identity"]), item["reference_aus"].numpy(), 32)["image"]
    assert torch.equal(item["transfer_target"], torch.from_numpy(expected).permute(2, 0, 1).float() / 127.5 - 1)
    # the label edit and its answer: the source identity with the label's prototype at full intensity
    edit = int(item["edit_expression"])
    assert 0 <= edit < 8
    expected = render(int(item["identity"]), expression_prototype(edit), 32)["image"]
    assert torch.equal(item["edit_target"], torch.from_numpy(expected).permute(2, 0, 1).float() / 127.5 - 1)
    assert len({int(data[i]["edit_expression"]) for i in range(10)}) > 1
    # the source fields do not depend on pairs (paired draws come after them)
    plain = SyntheticFaces(size=32, length=10, identities=5, pairs=False)[3]
    assert torch.equal(plain["image"], item["image"]) and int(plain["expression"]) == int(item["expression"])


@pytest.mark.parametrize("call, match", [
    (lambda: render(-1, np.zeros(17)), "out of range"),
    (lambda: render(2**40, np.zeros(17)), "out of range"),
    (lambda: render(1.5, np.zeros(17)), "integer"),
    (lambda: render(1, np.zeros(16)), "17"),
    (lambda: render(1, np.full(17, 1.5)), r"\[0, 1\]"),
    (lambda: render(1, np.zeros(17), size=8), "size"),
    (lambda: changeable_area(1, size=5000), "size"),
    (lambda: SyntheticFaces(split="holdout"), "split"),
    (lambda: SyntheticFaces(length=0), "length"),
    (lambda: SyntheticFaces(length=10, identities=1, pairs=True), "pairs"),
    (lambda: SyntheticFaces(length=10, identities=2_000_000), "identities"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_index_out_of_range():
    with pytest.raises(IndexError):
        SyntheticFaces(16, 3)[3]


def test_small_paired_sets_default_to_two_identities():
    from segexpr.data.synthetic import SyntheticFaces

    faces = SyntheticFaces(size=32, length=4, pairs=True, split="val")
    assert faces.identities == 2
    item = faces[0]
    assert int(item["identity"]) != int(item["reference_identity"])
    with pytest.raises(ValueError, match="at least 2 identities"):
        SyntheticFaces(size=32, length=4, pairs=True, identities=1)


def test_static_layers_cache_holds_a_memory_budget_of_identities():
    from segexpr.data.synthetic import _draw_static_layers, _static_layers_cache

    # 64 MiB per size, never fewer than 512 identities: the main job's 2,000-identity pool fits at 64 px
    assert _static_layers_cache(64).cache_info().maxsize == 2048
    assert _static_layers_cache(128).cache_info().maxsize == 512
    assert _static_layers_cache(512).cache_info().maxsize == 512
    p = identity_params(3)
    for cached, drawn in zip(_static_layers(p, 64), _draw_static_layers(p, 64)):
        np.testing.assert_array_equal(cached, drawn)
    assert _static_layers(p, 64)[0] is _static_layers(p, 64)[0]  # the second call is the cache's
