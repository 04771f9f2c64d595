"""Exact resume: a run SIGKILLed mid-epoch and resumed from ``last.ckpt`` ends with the uninterrupted run's weights.

``tests/scripts/resume_run.py`` runs the three processes (full / kill / resume). The killed run dies after its
5th batch, before that batch's checkpoint; the last checkpoint is mid-epoch (epoch 1 of 3). The resumed run must
continue with the very next batch (``ResumableDataLoader``), the generator schedule (batch counter), the Adam
states, the EMA and the BatchNorm statistics, and end bit-identical to the uninterrupted run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

from segexpr.data.base import EpochSampler, ResumableDataLoader

SCRIPT = Path(__file__).parent / "scripts" / "resume_run.py"


def run(mode: str, directory: Path) -> subprocess.CompletedProcess:
    # warnings stay on: the resumed run must not print Lightning's "dataloader is not resumable" warning
    return subprocess.run([sys.executable, str(SCRIPT), mode, "--dir", str(directory)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    full = run("full", tmp_path)
    assert full.returncode == 0, full.stderr[-5000:]
    killed = run("kill", tmp_path)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-5000:])
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
    checkpoint = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False, map_location="cpu")
    assert checkpoint["segexpr_train_batches"] == 4 and checkpoint["epoch"] == 1  # mid-epoch: batch 1 of epoch 1
    resumed = run("resume", tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "not resumable" not in resumed.stderr

    a = torch.load(tmp_path / "full.pt", weights_only=False)
    b = torch.load(tmp_path / "resume.pt", weights_only=False)
    assert a["train_batches"] == b["train_batches"] == 9
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"]
    # the resumed run trained on exactly the batches the uninterrupted one trained on after the checkpoint
    assert len(b["keys"]) == 5 and b["keys"] == a["keys"][4:]
    for prefix in ("generator.", "coder.", "discriminator.", "segmenter.", "ema."):
        assert any(k.startswith(prefix) for k in a["state_dict"]), prefix
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key  # weights, BatchNorm buffers, EMA copies
    assert len(a["optimizers"]) == len(b["optimizers"]) == 3
    for opt_a, opt_b in zip(a["optimizers"], b["optimizers"]):
        assert opt_a["state"].keys() == opt_b["state"].keys()
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, opt_b["state"][index][name]), (index, name)


class _Range(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n
        self.epochs: list[int] = []

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def _order(epoch: int, n: int = 12, batch: int = 4) -> list[list[int]]:
    sampler = EpochSampler(_Range(n), seed=7)
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [order[i:i + batch] for i in range(0, n - n % batch, batch)]


def test_resumable_loader_skips_consumed_batches_once():
    dataset = _Range(12)
    loader = ResumableDataLoader(dataset, sampler=EpochSampler(dataset, seed=7), batch_size=4, drop_last=True)
    loader.load_state_dict({"epoch": 2, "consumed": 2, "batches_per_epoch": 3})
    assert dataset.epochs[-1] == 2  # the epoch is selected at load time (before workers would prefetch)
    assert len(loader) == 3  # Lightning keeps counting the full epoch
    assert [b.tolist() for b in loader] == _order(2)[2:]
    loader.sampler.set_epoch(3)
    assert [b.tolist() for b in loader] == _order(3)  # later epochs are complete


def test_resumable_loader_after_an_end_of_epoch_checkpoint_starts_the_next_epoch():
    dataset = _Range(12)
    loader = ResumableDataLoader(dataset, sampler=EpochSampler(dataset, seed=7), batch_size=4, drop_last=True,
                                 position=lambda: {"batch_size": 4, "world_size": 1})
    loader.load_state_dict({"epoch": 1, "consumed": 3, "batches_per_epoch": 3, "batch_size": 4, "world_size": 1})
    assert [b.tolist() for b in loader] == _order(2)
    try:
        loader.load_state_dict({"epoch": 1, "consumed": 1, "batches_per_epoch": 3, "batch_size": 8})
    except ValueError as error:
        assert "batch_size=8" in str(error) and "batch_size=4" in str(error)
    else:  # pragma: no cover
        raise AssertionError("a different batch size must be rejected")
