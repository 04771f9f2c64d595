"""SyntheticFacesDataModule and the FaceDataModule base: loaders, workers, determinism, epochs."""
import pytest
import torch
from torch.utils.data import TensorDataset

from segexpr.data.base import EpochSampler, FaceDataModule
from segexpr.data.synthetic import SyntheticFacesDataModule


def _module(**kwargs):
    defaults = dict(size=32, train_length=16, val_length=8, test_length=8, identities=4, batch_size=4)
    defaults.update(kwargs)
    return SyntheticFacesDataModule(**defaults)


def test_train_loader_yields_batch_contract_with_two_workers():
    dm = _module(num_workers=2, pairs=True)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["mask"].shape == (4, 32, 32) and batch["mask"].dtype == torch.int64
    assert batch["aus"].shape == (4, 17) and batch["landmarks"].shape == (4, 68, 2)
    assert batch["expression"].dtype == torch.int64 and batch["identity"].shape == (4,)
    assert batch["reference_image"].shape == (4, 3, 32, 32) and batch["transfer_target"].shape == (4, 3, 32, 32)
    assert (batch["reference_identity"] != batch["identity"]).all()
    assert dm.hparams["pairs"] is True and dm.hparams["size"] == 32


def test_loaders_are_identical_across_worker_counts():
    def collect(workers):
        dm = _module(num_workers=workers)
        dm.setup("fit")
        train = [b["image"] for b in dm.train_dataloader()]
        val = [b["image"] for b in dm.val_dataloader()]
        return train, val
    train0, val0 = collect(0)
    train2, val2 = collect(2)
    assert len(train0) == 4 and all(torch.equal(a, b) for a, b in zip(train0, train2))
    assert all(torch.equal(a, b) for a, b in zip(val0, val2))


def test_epochs_reshuffle_and_reaugment():
    dm = _module()
    dm.setup("fit")
    loader = dm.train_dataloader()
    first = torch.cat([b["identity"] for b in loader])
    loader.sampler.set_epoch(1)  # what Lightning does at each epoch start
    second = torch.cat([b["identity"] for b in loader])
    assert sorted(first.tolist()) == sorted(second.tolist()) and not torch.equal(first, second)
    data = dm.datasets["train"]
    data.set_epoch(0)
    a = data[3]["image"]
    data.set_epoch(1)
    b = data[3]["image"]
    data.set_epoch(0)
    assert not torch.equal(a, b) and torch.equal(a, data[3]["image"])


def test_eval_loaders_and_no_transform_when_sizes_match():
    dm = _module(augment=False)
    dm.setup(None)
    assert dm.datasets["train"].transform is None and dm.datasets["val"].transform is None
    assert len(list(dm.test_dataloader())) == 2
    resized = _module(image_size=16)
    resized.setup("validate")
    assert next(iter(resized.val_dataloader()))["image"].shape == (4, 3, 16, 16)


def test_train_answers_off_leaves_out_only_the_answers_and_only_in_training():
    """train_answers=False: training items lose transfer_target/edit_target and nothing else changes; val keeps them."""
    with_answers, without = _module(pairs=True, augment=False), _module(pairs=True, augment=False, train_answers=False)
    with_answers.setup("fit"), without.setup("fit")
    full, lean = with_answers.datasets["train"][3], without.datasets["train"][3]
    assert set(full) - set(lean) == {"transfer_target", "edit_target"}
    assert all(torch.equal(lean[k], full[k]) for k in lean)
    assert {"transfer_target", "edit_target"} <= set(without.datasets["val"][0])


def test_base_module_validation_and_hooks():
    class Numbers(FaceDataModule):
        def build_dataset(self, split):
            return TensorDataset(torch.arange(10))
    dm = Numbers(batch_size=3)
    with pytest.raises(ValueError, match="stage"):
        dm.setup("training")
    with pytest.raises(ValueError, match="split"):
        dm.dataset("holdout")
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, EpochSampler) and loader.drop_last
    assert sum(len(b[0]) for b in loader) == 9
    with pytest.raises(ValueError, match="batch_size"):
        Numbers(batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        Numbers(batch_size=20).train_dataloader()
    with pytest.raises(NotImplementedError):
        FaceDataModule().setup("fit")
    with pytest.raises(ValueError, match="train_length"):
        SyntheticFacesDataModule(train_length=0)
