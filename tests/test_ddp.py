"""DDP with the manual-optimisation GAN schedule: 2 CPU processes (gloo) == 1 process on the same global batch.

Runs ``tests/scripts/ddp_equivalence.py`` as subprocesses (Lightning's DDP launcher re-executes the script per
rank), with ``find_unused_parameters=False``. The reducer is off and gradients are averaged per optimiser step
(``segexpr.gan.stepping``); per-sample random draws are keyed by ``sample_seed``, so the runs must agree
to float summation order. SyncBatchNorm needs GPUs, so the segmenter here is a GroupNorm UNet.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from segexpr.gan.stepping import all_reduce_gradients
from segexpr.gan.targets import keyed_uniform

SCRIPT = Path(__file__).parent / "scripts" / "ddp_equivalence.py"


def run_script(out: Path, devices: int, batch_size: int, strategy: str | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    extra = ["--strategy", strategy] if strategy else []
    result = subprocess.run([sys.executable, str(SCRIPT), "--devices", str(devices), "--batch-size", str(batch_size),
                             "--out", str(out), *extra], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def max_abs_diff(a: dict, b: dict) -> tuple[float, str]:
    worst, name = 0.0, ""
    for key, value in a.items():
        if value.is_floating_point():
            diff = float((value - b[key]).abs().max())
            if diff > worst:
                worst, name = diff, key
    return worst, name


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed + gloo")
def test_two_process_ddp_equals_single_process_on_the_global_batch(tmp_path):
    run_script(tmp_path / "ddp", devices=2, batch_size=4)
    run_script(tmp_path / "single", devices=1, batch_size=8)
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=False)

    assert rank0["world_size"] == 2 and single["world_size"] == 1
    # every backward pass of both DDP ranks ran inside the DDP wrapper with its reducer off (D and G steps:
    # 4 batches x (1 D + 1 G every n_critic=2) = 6 backward passes); the single process had no wrapper at all
    for rank in (rank0, rank1):
        assert len(rank["reducer_off"]) == 6 and all(rank["reducer_off"]), rank["reducer_off"]
    assert single["reducer_off"] and not any(single["reducer_off"])
    assert rank0["train_batches"] == rank1["train_batches"] == single["train_batches"] == 4
    # global batch k of the DDP run (rank 0's half + rank 1's half) holds exactly single-process batch k
    for k, keys in enumerate(single["batch_keys"]):
        assert sorted(rank0["batch_keys"][k] + rank1["batch_keys"][k]) == sorted(keys)
        assert not set(rank0["batch_keys"][k]) & set(rank1["batch_keys"][k])

    # the ranks stay bit-identical (same averaged gradients, same Adam step)
    for key, value in rank0["state_dict"].items():
        assert torch.equal(value, rank1["state_dict"][key]), key

    # DDP == single process up to float summation order; training moved the weights by far more than that.
    # Adam's first steps move every weight by about +-lr whatever its gradient's size, so summation-order noise on
    # a gradient entry that is ~0 can flip its sign: a few isolated entries may differ by up to 2 lr (measured:
    # 0.07 % of the entries). A rank that did not average its gradients moves most entries differently.
    tolerance, lr = 1e-4, 1e-3
    diff, name = max_abs_diff(rank0["state_dict"], single["state_dict"])
    moved, _ = max_abs_diff(single["state_dict"], single["initial_state_dict"])
    assert diff <= 2.2 * lr, f"DDP differs from the single-process run by {diff:.3g} in {name}"
    differing = sum(int(((v - single["state_dict"][k]).abs() > tolerance).sum())
                    for k, v in rank0["state_dict"].items() if v.is_floating_point())
    entries = sum(v.numel() for v in rank0["state_dict"].values() if v.is_floating_point())
    assert differing < 0.005 * entries, f"{differing} of {entries} entries differ by more than {tolerance}"
    assert moved > 20 * tolerance, f"training barely moved the weights ({moved:.3g}); the comparison is vacuous"
    # generator, discriminator, segmenter and EMA all took part
    for prefix in ("generator.", "discriminator.", "segmenter.", "ema."):
        part = {k: v for k, v in single["state_dict"].items() if k.startswith(prefix)}
        start = {k: single["initial_state_dict"][k] for k in part}
        assert max_abs_diff(part, start)[0] > 0, f"{prefix} did not change"
    # Adam moments agree too (per tensor: after one generator step they agree to ~2e-6 relative; the few entries
    # Adam's sign normalisation flipped above feed later gradients, measured up to 0.4 % relative per optimiser after 4 batches;
    # gradients that were not averaged over the ranks differ by tens of percent)
    for opt_ddp, opt_single in zip(rank0["optimizers"], single["optimizers"]):
        assert opt_ddp["state"].keys() == opt_single["state"].keys()
        for key in ("exp_avg", "exp_avg_sq"):  # over all of an optimiser's tensors
            difference = reference = 0.0
            for index, state in opt_single["state"].items():
                assert torch.equal(opt_ddp["state"][index]["step"], state["step"])
                difference += float((opt_ddp["state"][index][key] - state[key]).norm()) ** 2
                reference += float(state[key].norm()) ** 2
            assert difference ** 0.5 <= 1e-2 * reference ** 0.5 + 1e-12, key


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed + gloo")
def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1's batch turns NaN: both ranks raise the same clear error instead of rank 0 hanging in an all-reduce."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--devices", "2", "--batch-size", "4", "--out",
                             str(tmp_path), "--nan-rank", "1"], capture_output=True, text=True, timeout=240, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    # (batch 2 is a generator batch, n_critic=2: its generator step comes first and meets the NaN images)
    assert "non-finite generator loss" in output and "on rank 1 of 2" in output, output[-4000:]
    assert "on another rank" in output, output[-4000:]  # rank 0 stopped too
    assert not list(tmp_path.glob("rank*.pt"))


def test_ddp_on_one_device_trains(tmp_path):
    """strategy='ddp' with devices=1 wraps the module in DDP; the reducer must be off there too."""
    run_script(tmp_path, devices=1, batch_size=4, strategy="ddp")
    single = torch.load(tmp_path / "rank0.pt", weights_only=False)
    assert single["train_batches"] == 4 and single["reducer_off"] and all(single["reducer_off"])


def test_all_reduce_gradients_is_a_no_op_without_a_process_group():
    p, q = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((3,), 2.0)
    optimizer = torch.optim.SGD([p, q], lr=0.1)
    assert all_reduce_gradients(optimizer) == 1
    assert torch.equal(p.grad, torch.full((3,), 2.0)) and q.grad is None


def test_keyed_uniform_is_per_sample_and_deterministic():
    keys = torch.tensor([11, 22, 33, 44], dtype=torch.int64)
    u = keyed_uniform(keys, 5, 1)
    # a sample's number does not depend on the rest of the batch or its position in it
    assert torch.equal(keyed_uniform(keys.flip(0), 5, 1), u.flip(0))
    assert torch.equal(keyed_uniform(keys[2:], 5, 1), u[2:])
    # counters and purposes change the numbers; the range is [0, 1)
    assert not torch.equal(keyed_uniform(keys, 6, 1), u) and not torch.equal(keyed_uniform(keys, 5, 2), u)
    many = keyed_uniform(torch.arange(20000), 0, 0)
    assert 0 <= float(many.min()) and float(many.max()) < 1 and abs(float(many.mean()) - 0.5) < 0.01
