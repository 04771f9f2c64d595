"""Two-sided parts split into one region per side (``regions=SIDED_REGION_NAMES``)."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from segexpr.data.labels import (ALL_REGION_GROUPS, CLASS_INDEX, NUM_CLASSES, REGION_AUS, REGION_GROUPS,
                                 SIDED_REGION_NAMES)
from segexpr.data.synthetic import SyntheticFaces
from segexpr.models.discriminators import AUDiscriminator
from segexpr.ops.regions import boxes_from_landmarks, boxes_from_masks, canonical_boxes, soft_regions
from tiny import TINY_NETWORKS, tiny_joint_module

SIZE = 64


def _faces(count: int = 4, size: int = SIZE):
    return next(iter(DataLoader(SyntheticFaces(size=size, length=count, seed=0, pairs=True, identities=count),
                                batch_size=count)))


def _exact_logits(mask: torch.Tensor) -> torch.Tensor:
    return F.one_hot(mask, NUM_CLASSES).permute(0, 3, 1, 2).float() * 30


def test_each_side_gets_its_own_part_and_a_less_elongated_box():
    faces = _faces()
    groups = {r: ALL_REGION_GROUPS[r] for r in ("brows", "eyes", *SIDED_REGION_NAMES)}
    names = list(groups)
    masks = soft_regions(_exact_logits(faces["mask"]), groups)
    # the one-sided masks are exactly the class of their side, and the two sides make up the pair
    for side in ("l_brow", "r_brow", "l_eye", "r_eye"):
        expected = (faces["mask"] == CLASS_INDEX[side]).float()
        assert (masks[:, names.index(side)] - expected).abs().max() < 1e-6
    pair = masks[:, names.index("brows")]
    torch.testing.assert_close(masks[:, names.index("l_brow")] + masks[:, names.index("r_brow")], pair)

    boxes = boxes_from_masks(masks, scale=3.5, min_size=0.01, power=4.0)  # [B, R, 4] = (cx, cy, w, h)
    for part in ("brow", "eye"):
        left, right, both = (boxes[:, names.index(n)] for n in (f"l_{part}", f"r_{part}", f"{part}s"))
        # l_ is the image-left part (x < 0), r_ the image-right one
        assert (left[:, 0] < 0).all() and (right[:, 0] > 0).all()
        # each side's box is about half as wide as the pair's at the same height: aspect roughly halved
        aspect_side = torch.cat([left[:, 2] / left[:, 3], right[:, 2] / right[:, 3]])
        aspect_pair = both[:, 2] / both[:, 3]
        assert aspect_side.max() < 0.7 * aspect_pair.min(), (part, aspect_side, aspect_pair)


def test_landmark_boxes_and_canonical_boxes_know_the_sides():
    faces = _faces()
    boxes = boxes_from_landmarks(faces["landmarks"], (SIZE, SIZE), SIDED_REGION_NAMES)
    centres = boxes[..., 0]
    assert (centres[:, 0] < 0).all() and (centres[:, 1] > 0).all()  # l_brow, r_brow
    assert (centres[:, 2] < 0).all() and (centres[:, 3] > 0).all()  # l_eye, r_eye
    defaults = canonical_boxes(SIDED_REGION_NAMES)
    assert (defaults[:4, 2] < 1.0).all()  # one side, not the whole image (the unknown-region fallback)
    assert defaults[0, 0] < 0 < defaults[1, 0]


def test_sided_critics_predict_the_pairs_aus():
    d = AUDiscriminator(image_size=32, regions=SIDED_REGION_NAMES, crop_size=16, base_channels=8, n_layers=3,
                        local_channels=8, local_n_layers=2, au_free_channels=16, feature_hidden=8)
    assert list(d.local_d) == list(SIDED_REGION_NAMES)
    aus = torch.rand(3, 17)
    targets = d.region_targets(aus)
    for side in ("l", "r"):
        torch.testing.assert_close(targets[f"{side}_brow"], aus[:, list(REGION_AUS["brows"])])
        torch.testing.assert_close(targets[f"{side}_eye"], aus[:, list(REGION_AUS["eyes"])])


@pytest.mark.parametrize("region_source", ["segmenter", "landmarks"])
def test_joint_module_trains_six_regions(region_source):
    torch.manual_seed(0)
    generator = {**TINY_NETWORKS["generator"], "regions": list(SIDED_REGION_NAMES)}
    module = tiny_joint_module(32, segmenter=region_source == "segmenter", region_source=region_source,
                               task="both", generator=generator)
    assert module.generator.regions == SIDED_REGION_NAMES
    assert module.discriminator.regions == SIDED_REGION_NAMES  # the critics follow the generator
    if region_source == "segmenter":
        assert module.region_groups == {r: ALL_REGION_GROUPS[r] for r in SIDED_REGION_NAMES}
    before = {r: [p.detach().clone() for p in module.generator.local_generators[r].parameters()]
              for r in SIDED_REGION_NAMES}
    data = SyntheticFaces(size=32, length=4, seed=0, pairs=True, identities=4)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, DataLoader(data, batch_size=2))
    for region in SIDED_REGION_NAMES:  # every side's local generator was trained
        after = list(module.generator.local_generators[region].parameters())
        assert any(not torch.equal(a, b) for a, b in zip(after, before[region])), region
    faces = _faces(2, 32)
    region_kwargs, _ = module._region_inputs(faces["image"], faces["landmarks"], with_grad=False)
    out = module.generator(faces["image"], torch.zeros(2, module.coder.code_dim), **region_kwargs)
    assert out.boxes.shape == (2, 6, 4) and out.fusion_masks.shape[1] == 6


def test_a_region_without_parsing_classes_is_named():
    generator = {**TINY_NETWORKS["generator"], "regions": ["l_brow", "cheek"]}
    with pytest.raises(ValueError, match=r"cheek"):
        tiny_joint_module(32, region_source="segmenter", generator=generator)


def test_the_default_regions_are_unchanged():
    assert tuple(REGION_GROUPS) == ("brows", "eyes", "nose", "mouth")
    assert all(ALL_REGION_GROUPS[r] == REGION_GROUPS[r] for r in REGION_GROUPS)
