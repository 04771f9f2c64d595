"""Real-data training is sound: only learned heads steer the generator, unpaired references on every dataset,
a parsing anchor for joint training, and GANimation's layout as a DataModule."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from segexpr.data import AffectNetDataModule, CelebAMaskHQDataModule, CombinedDataModule, GANimationDataModule
from segexpr.data import RaFDDataModule
from segexpr.data.export import export_synthetic
from segexpr.data.references import WithReferences
from segexpr.gan.targets import expression_prototypes, sample_manipulation_targets
from segexpr.modules.joint_setup import check_parsing_anchor

from tiny import tiny_joint_module

SIZE = 32


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    for fmt, count in (("affectnet", 12), ("rafd", 3), ("celebamask-hq", 8), ("ganimation", 10)):
        export_synthetic(fmt, base / fmt, count, 64, seed=0)
    return base


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    kwargs.setdefault("max_epochs", 1)
    kwargs.setdefault("enable_checkpointing", False)
    return pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", default_root_dir=tmp_path, **kwargs)


# ------------------------------------------------------------------ only learned heads judge
def _batch(expression: bool, aus: bool, size: int = 6) -> dict:
    batch = {"image": torch.zeros(size, 3, 8, 8)}
    if expression:
        batch["expression"] = torch.arange(size) % 8
    if aus:
        batch["aus"] = torch.rand(size, 17)
    return batch


def test_targets_use_only_the_label_kinds_the_data_has():
    keys, prototypes = torch.arange(6), expression_prototypes()
    labels_only = sample_manipulation_targets(_batch(True, False), keys, 0, prototypes)
    assert labels_only["use_label"].all() and labels_only["critic_aus"] is None  # AU heads never saw an AU label
    assert labels_only["expression_valid"].all()
    aus_only = sample_manipulation_targets(_batch(False, True), keys, 0, prototypes)
    assert not aus_only["use_label"].any()  # no label targets: the expression head never saw a label
    assert not aus_only["expression_valid"].any() and aus_only["critic_aus"] is not None
    both = sample_manipulation_targets(_batch(True, True), keys, 0, prototypes)
    assert both["use_label"].any() and not both["use_label"].all() and both["critic_aus"] is not None


def test_generator_au_terms_vanish_without_au_labels():
    module = tiny_joint_module(SIZE, segmenter=False, region_source="landmarks", task="manipulate")
    from segexpr.data.synthetic import SyntheticFaces

    item = SyntheticFaces(size=SIZE, length=4, seed=0)
    batch = torch.utils.data.default_collate([item[i] for i in range(4)])
    terms = {}
    for name, keep in (("with_aus", ("aus",)), ("without_aus", ())):
        b = {k: v for k, v in batch.items() if k not in ("aus",) or k in keep}
        targets = module._sample_manipulation_targets(b)
        region_kwargs, _ = module._region_inputs(b["image"], b["landmarks"], with_grad=False)
        with torch.no_grad():
            terms[name] = module.objectives.manipulation_loss(b, targets, region_kwargs,
                                                              module.coder.from_image(b["image"])).terms
    assert float(terms["with_aus"]["manipulate/au"]) > 0 and float(terms["with_aus"]["manipulate/local_au"]) > 0
    assert float(terms["without_aus"]["manipulate/au"]) == 0 and float(terms["without_aus"]["manipulate/local_au"]) == 0
    assert float(terms["without_aus"]["manipulate/cls"]) > 0


# ------------------------------------------------------------------ unpaired references
def test_references_are_other_items_of_other_identities_and_keyed(trees):
    data = RaFDDataModule(str(trees / "rafd"), image_size=SIZE, batch_size=4, augment=False, references=True,
                          val_fraction=0.0, test_fraction=0.0)
    dataset = data.dataset("train")
    assert isinstance(dataset, WithReferences) and dataset.identities is not None
    for index in range(len(dataset)):
        for key in (1, 2, 3):
            j = dataset.reference_index(index, key)
            assert j != index and dataset.identities[j] != dataset.identities[index]
            assert dataset.reference_index(index, key) == j  # keyed: a pure function of (index, key)
    assert len({dataset.reference_index(0, k) for k in range(30)}) > 3  # and it varies with the key
    item = dataset[0]
    assert {"reference_image", "reference_expression"} <= set(item) and item["reference_image"].shape == (3, SIZE, SIZE)


@pytest.mark.parametrize("layout, make", [
    ("affectnet", lambda root: AffectNetDataModule(root, image_size=SIZE, batch_size=2, augment=False, references=True)),
    ("ganimation", lambda root: GANimationDataModule(root, image_size=SIZE, batch_size=2, augment=False,
                                                     references=True, val_fraction=0.2)),
])
def test_transfer_trains_on_real_layouts_with_unpaired_references(trees, tmp_path, layout, make):
    data = CombinedDataModule(expression=make(str(trees / layout)),
                              parsing=CelebAMaskHQDataModule(str(trees / "celebamask-hq"), image_size=SIZE,
                                                             batch_size=2, augment=False,
                                                             cache_dir=str(tmp_path / "cache")))
    module = tiny_joint_module(SIZE, task="both")
    trainer = _trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/transfer/swap_cycle_l1"]) and torch.isfinite(metrics["train/seg_loss"])
    assert torch.isfinite(metrics["train/fc_loss"])  # the feature classifier learned from the data's labels
    if layout == "ganimation":  # AU-only data: no label targets, so no expression term steers the generator
        assert float(metrics["train/manipulate/cls"]) == 0
    else:  # AffectNet without an AU source: the AU heads never learned, so they judge nothing
        assert float(metrics["train/manipulate/au"]) == 0 and float(metrics["train/manipulate/local_au"]) == 0


def test_ganimation_layout_splits_and_errors(trees, tmp_path):
    data = GANimationDataModule(str(trees / "ganimation"), image_size=SIZE, batch_size=2, val_fraction=0.2)
    train, val, test = (data.dataset(s) for s in ("train", "val", "test"))
    assert len(train) + len(val) == 8 and len(test) == 2 and not set(train.ids) & set(val.ids)
    item = train[0]
    assert item["aus"].shape == (17,) and 0 <= float(item["aus"].min()) and float(item["aus"].max()) <= 1
    (trees / "ganimation" / "imgs" / f"{train.ids[0]}.jpg").rename(tmp_path / "moved.jpg")
    try:
        from segexpr.data import DatasetValidationError

        with pytest.raises(DatasetValidationError, match=train.ids[0]):
            GANimationDataModule(str(trees / "ganimation"), image_size=SIZE, val_fraction=0.2).dataset("train")
    finally:
        (tmp_path / "moved.jpg").rename(trees / "ganimation" / "imgs" / f"{train.ids[0]}.jpg")


# ------------------------------------------------------------------ parsing anchor
def test_joint_training_without_a_parsing_anchor_is_refused_before_the_first_step(trees, tmp_path):
    data = AffectNetDataModule(str(trees / "affectnet"), image_size=SIZE, batch_size=2, augment=False)
    module = tiny_joint_module(SIZE, task="manipulate")
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(ValueError, match="nothing anchors it as a parser"):
        _trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(module, datamodule=data)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))  # no step was taken
    # masks with lambda_seg 0 are no anchor either; masks with lambda_seg > 0, or a pretrained start, are
    with pytest.raises(ValueError, match="lambda_seg is 0"):
        check_parsing_anchor({"image": 0, "mask": 0}, True, False, 0.0, False)
    check_parsing_anchor({"image": 0, "mask": 0}, True, False, 1.0, False)
    check_parsing_anchor({"image": 0}, True, True, 1.0, False)


def test_a_frozen_random_segmenter_is_refused(tmp_path):
    from segexpr.data.synthetic import SyntheticFacesDataModule

    data = SyntheticFacesDataModule(size=SIZE, train_length=4, val_length=2, test_length=2, batch_size=2)
    module = tiny_joint_module(SIZE, task="manipulate", joint=False)
    with pytest.raises(ValueError, match="never initialised"):
        _trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(module, datamodule=data)
    module.initialize_segmenter(module.segmenter.state_dict())  # stands in for a pretrained parser
    _trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(module, datamodule=data)


def test_checkpoint_cadence_counts_training_batches(tmp_path):
    """task='both' makes 3 optimiser steps per batch; every_n_train_batches=2 still saves after batches 2, 4, 6."""
    from segexpr.callbacks import BatchCheckpoint
    from segexpr.data.synthetic import SyntheticFacesDataModule

    data = SyntheticFacesDataModule(size=SIZE, train_length=12, val_length=2, test_length=2, batch_size=2, pairs=True)
    module = tiny_joint_module(SIZE, task="both")
    saver = BatchCheckpoint(every_n_train_batches=2, dirpath=str(tmp_path / "ckpt"), filename="{step}", save_top_k=-1)
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[saver], enable_checkpointing=True)
    trainer.fit(module, datamodule=data)
    assert module._train_batches == 6 and trainer.global_step == 18  # 3 optimiser steps per batch
    steps = sorted(int(p.stem.split("=")[1]) for p in (tmp_path / "ckpt").glob("step=*.ckpt"))
    assert steps == [6, 12, 18], steps  # after batches 2, 4 and 6
    with pytest.raises(ValueError, match="every_n_train_batches only"):
        BatchCheckpoint(every_n_train_batches=2, every_n_train_steps=5)


def _seeds(batches, half):
    return [tuple(b[half]["sample_seed"].tolist()) for b in batches]


def _combined():
    from segexpr.data.synthetic import SyntheticFacesDataModule

    return CombinedDataModule(
        expression=SyntheticFacesDataModule(size=SIZE, train_length=12, val_length=2, test_length=2, batch_size=2),
        parsing=SyntheticFacesDataModule(size=SIZE, train_length=4, val_length=2, test_length=2, batch_size=2, seed=7))


def _iterate(loader):
    return [batch for batch, _, _ in loader]  # CombinedLoader yields (batch, batch_idx, dataloader_idx)


def test_the_shorter_combined_loader_draws_anew_each_cycle_and_resumes_in_place():
    data = _combined()
    data.setup("fit")
    full = [b for b in _iterate(data.train_dataloader())]
    assert len(full) == 6  # the longer (GAN) loader's 6 batches; the parsing loader (2 batches) cycles 3 times
    cycles = [set(_seeds(full[2 * c:2 * c + 2], "parsing")) for c in range(3)]
    assert cycles[0] != cycles[1] and cycles[1] != cycles[2] and cycles[0] != cycles[2]  # new order/augmentation
    again = [b for b in _iterate(data.train_dataloader())]
    assert _seeds(again, "parsing") == _seeds(full, "parsing")  # deterministic

    resumed = _combined()  # a new process: resume after 3 processed batches (mid-cycle for the parsing loader)
    resumed.setup("fit")
    loader = resumed.train_dataloader()
    for cycled in loader.iterables.values():
        cycled.load_state_dict({"epoch": 0, "consumed": 3, "batches_per_epoch": 6})
    rest = [b for b in _iterate(loader)]
    assert _seeds(rest, "gan") == _seeds(full[3:], "gan")
    assert _seeds(rest, "parsing") == _seeds(full[3:], "parsing")


def test_data_lacking_what_a_loss_needs_is_named_before_the_first_step(trees, tmp_path):
    from segexpr.modules.joint_setup import check_batch

    image = torch.zeros(2, 3, SIZE, SIZE)
    with pytest.raises(KeyError, match=r"transfer losses .* need 'reference_image'.*references=True"):
        check_batch({"image": image, "expression": torch.zeros(2)}, "both", SIZE)
    with pytest.raises(KeyError, match=r"manipulation losses .* need 'expression' and/or 'aus'"):
        check_batch({"image": image, "reference_image": image}, "both", SIZE)
    check_batch({"image": image, "reference_image": image}, "transfer", SIZE)
    # through a real DataModule: AffectNet without references=True, task both
    data = CombinedDataModule(
        expression=AffectNetDataModule(str(trees / "affectnet"), image_size=SIZE, batch_size=2, augment=False),
        parsing=CelebAMaskHQDataModule(str(trees / "celebamask-hq"), image_size=SIZE, batch_size=2, augment=False,
                                       cache_dir=str(tmp_path / "cache")))
    module = tiny_joint_module(SIZE, task="both")
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(KeyError, match="reference_image"):
        _trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(module, datamodule=data)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))
