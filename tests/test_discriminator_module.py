"""AUDiscriminatorModule trains alone as an expression/AU recogniser; val, predict and features work."""
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segexpr.data.synthetic import SyntheticFaces
from segexpr.metrics.expression import recognise
from segexpr.modules.discriminator import AUDiscriminatorModule, real_region_boxes

SIZE = 32


@pytest.fixture(scope="module")
def batches():
    return list(DataLoader(SyntheticFaces(size=SIZE, length=16, seed=0, identities=8), batch_size=8))


def tiny(**kwargs):
    return AUDiscriminatorModule(image_size=SIZE, discriminator_kwargs={
        "base_channels": 8, "n_layers": 3, "local_channels": 8, "local_n_layers": 2, "au_free_channels": 16,
        "feature_hidden": 8}, **kwargs)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="unknown au_loss"):
        tiny(au_loss="huber")
    with pytest.raises(ValueError, match="lambda_cls must be >= 0"):
        tiny(lambda_cls=-1.0)


def test_real_boxes_prefer_masks_then_landmarks(batches):
    module = tiny()
    batch = batches[0]
    from_masks = real_region_boxes(module.discriminator, batch)
    from_landmarks = real_region_boxes(module.discriminator, {k: v for k, v in batch.items() if k != "mask"})
    assert from_masks.shape == from_landmarks.shape == (8, 4, 4)
    assert not torch.allclose(from_masks, from_landmarks)
    assert real_region_boxes(module.discriminator, {"image": batch["image"]}) is None


def test_trains_alone_loss_decreases_and_eval_paths(batches):
    module = tiny(lr=2e-3)
    batch = batches[0]
    with torch.no_grad():
        before = module._losses(batch)[0].item()
    trainer = pl.Trainer(max_steps=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1)
    trainer.fit(module, DataLoader(batches[:1], batch_size=None), DataLoader(batches[1:], batch_size=None))
    with torch.no_grad():
        after = module._losses(batch)[0].item()
    assert after < before, (before, after)
    metrics = trainer.callback_metrics
    assert 0 <= float(metrics["val/expression_acc"]) <= 1 and math.isfinite(float(metrics["val/au_mae"]))
    out = trainer.predict(module, DataLoader(batches[1:], batch_size=None))[0]
    assert out["expression_probs"].shape == (8, 8) and torch.allclose(out["expression_probs"].sum(1), torch.ones(8))
    assert out["aus"].shape == (8, 17) and out["aus"].min() >= 0 and out["aus"].max() <= 1
    features = module.features(batch["image"])
    assert features.shape == (8, module.num_features)
    # usable as the independent recogniser of segexpr.metrics
    logits, aus = recognise(module, batch["image"])
    assert logits.shape == (8, 8) and aus.shape == (8, 17)


def test_labels_are_required(batches):
    with pytest.raises(KeyError, match="expression"):
        tiny()._losses({"image": batches[0]["image"]})
