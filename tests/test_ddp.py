"""DDP with the manual-optimisation GAN schedule: 2 CPU processes (gloo) == 1 process on the same global batch.

Runs ``tests/scripts/ddp_equivalence.py`` as subprocesses (Lightning's DDP launcher re-executes the script per
rank), with ``find_unused_parameters=False``. The reducer is off and gradients are averaged per optimiser step
(``segexpr.gan.stepping``); per-sample random draws are keyed by ``sample_seed``, so the runs must agree
to float summation order, which float64 makes negligible. SyncBatchNorm needs GPUs, so the segmenter here is a
GroupNorm UNet.
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


def run_script(out: Path, devices: int, batch_size: int, strategy: str | None = None, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    extra = (["--strategy", strategy] if strategy else []) + list(extra)
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


#: task -> (max |DDP - single| of any weight, max relative difference of an optimiser's Adam moments), in float64
#: after 4 batches. Measured: manipulate 2.2e-14 / 1e-14; both 2.5e-7 / 1e-6 (the transfer task's multi-class
#: adversarial AU target is the detached mean of each rank's own batch: the one batch-level statistic left; swap
#: consistency's batch moments are off, lambda_swap=0). Training moves the weights by 4.4e-3 (lr 1e-3); a rank
#: that does not average its gradients differs by ~1e-3, and float32 gradient averaging under 64-true by 3.5e-7.
TOLERANCES = {"manipulate": (1e-9, 1e-9), "both": (1e-5, 1e-4)}
OPTIMIZERS = {"manipulate": ["discriminator", "generator"],
              "both": ["discriminator", "feature_classifier", "generator"]}


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed + gloo")
@pytest.mark.parametrize("task", ["manipulate", "both"])
def test_two_process_ddp_equals_single_process_on_the_global_batch(tmp_path, task):
    """In float64 (``precision="64-true"``), where the summation order cannot flip the sign of an Adam step, so a
    bound far below what training changes tells a right run from a wrong one."""
    options = ("--task", task, "--precision", "64-true")
    run_script(tmp_path / "ddp", 2, 4, None, *options)
    run_script(tmp_path / "single", 1, 8, None, *options)
    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=False)

    assert rank0["world_size"] == 2 and single["world_size"] == 1
    assert single["state_dict"]["generator.global_generator.encoder.0.0.weight"].dtype == torch.float64
    assert single["optimizer_names"] == rank0["optimizer_names"] == OPTIMIZERS[task]
    # every backward pass of both DDP ranks ran inside the DDP wrapper with its reducer off (4 batches x (1 D
    # [+ 1 feature classifier] + 1 G every n_critic=2)); the single process had no wrapper at all
    backward_passes = 4 * len(OPTIMIZERS[task]) - 2
    for rank in (rank0, rank1):
        assert len(rank["reducer_off"]) == backward_passes and all(rank["reducer_off"]), rank["reducer_off"]
    assert single["reducer_off"] and not any(single["reducer_off"])
    assert rank0["train_batches"] == rank1["train_batches"] == single["train_batches"] == 4
    # global batch k of the DDP run (rank 0's half + rank 1's half) holds exactly single-process batch k
    for k, keys in enumerate(single["batch_keys"]):
        assert sorted(rank0["batch_keys"][k] + rank1["batch_keys"][k]) == sorted(keys)
        assert not set(rank0["batch_keys"][k]) & set(rank1["batch_keys"][k])

    # the ranks stay bit-identical (same averaged gradients, same Adam step)
    for key, value in rank0["state_dict"].items():
        assert torch.equal(value, rank1["state_dict"][key]), key

    weight_bound, moment_bound = TOLERANCES[task]
    diff, name = max_abs_diff(rank0["state_dict"], single["state_dict"])
    moved, _ = max_abs_diff(single["state_dict"], single["initial_state_dict"])
    assert diff <= weight_bound, f"DDP differs from the single-process run by {diff:.3g} in {name}"
    assert moved > 100 * weight_bound, f"training barely moved the weights ({moved:.3g}); the comparison is vacuous"
    # every network took part (the feature classifier has its own optimiser in the transfer task)
    prefixes = ["generator.", "discriminator.global_d.", "segmenter.", "ema.", "coder."]
    prefixes += ["discriminator.feature_classifier."] if task == "both" else []
    for prefix in prefixes:
        part = {k: v for k, v in single["state_dict"].items() if k.startswith(prefix)}
        start = {k: single["initial_state_dict"][k] for k in part}
        assert part and max_abs_diff(part, start)[0] > 100 * weight_bound, f"{prefix} did not change"
    # every optimiser's Adam moments agree too, relative to their size (gradients that were not averaged over the
    # ranks differ by tens of percent)
    for opt_name, opt_ddp, opt_single in zip(single["optimizer_names"], rank0["optimizers"], single["optimizers"]):
        assert opt_single["state"] and opt_ddp["state"].keys() == opt_single["state"].keys(), opt_name
        for key in ("exp_avg", "exp_avg_sq"):  # over all of an optimiser's tensors
            difference = reference = 0.0
            for index, state in opt_single["state"].items():
                assert torch.equal(opt_ddp["state"][index]["step"], state["step"])
                difference += float((opt_ddp["state"][index][key] - state[key]).norm()) ** 2
                reference += float(state[key].norm()) ** 2
            assert reference > 0 and difference ** 0.5 <= moment_bound * reference ** 0.5, (opt_name, key)


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
