"""EditMetricsCallback judges ``val/synthfacs/*`` on the validation split's identities, so that a checkpoint
monitored on them is never selected on the test set; ``test/synthfacs/*`` uses the test split."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
from torch.utils.data import DataLoader

from segexpr.data.synthetic import SPLIT_IDENTITY_OFFSET, SyntheticFaces
from segexpr.evaluation import EditMetricsCallback
from tiny import tiny_joint_module

SIZE = 32


def split_of(identity: int) -> str:
    """The SynthFACS split whose identity range holds ``identity``."""
    return max((offset, name) for name, offset in SPLIT_IDENTITY_OFFSET.items() if identity >= offset)[1]


def _splits_judged(stage: str, tmp_path) -> set[str]:
    """Run ``trainer.validate`` or ``trainer.test`` with the callback; the splits of the faces it judged."""
    module = tiny_joint_module(SIZE)
    split = "val" if stage == "validate" else "test"
    data = DataLoader(SyntheticFaces(size=SIZE, length=2, seed=0, split=split, identities=2, pairs=True), batch_size=2)
    callback = EditMetricsCallback(count=2, fid_features="none")
    trainer = pl.Trainer(callbacks=[callback], logger=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match="no recogniser"):
        getattr(trainer, stage)(module, data, verbose=False)
    return {split_of(int(i)) for i in callback._benchmark.identity}


def test_split_of_names_the_identity_ranges():
    assert [split_of(SPLIT_IDENTITY_OFFSET[s] + 5) for s in ("train", "val", "test")] == ["train", "val", "test"]


def test_validation_metrics_are_judged_on_the_validation_split(tmp_path):
    assert _splits_judged("validate", tmp_path) == {"val"}


def test_test_metrics_are_judged_on_the_test_split(tmp_path):
    assert _splits_judged("test", tmp_path) == {"test"}
