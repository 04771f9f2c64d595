"""Issue 26: multi-process DDP run the way a user runs it -- the installed ``segexpr`` console command and
``python -m segexpr``, from another working directory, 2 CPU processes (gloo) -- and an exception on one rank
stopping every rank in bounded time with that rank's error shown once.

Lightning's DDP launcher starts rank 1 by re-running the command line (``python <sys.argv[0]> ...`` or
``python -m <module> ...``), so each test starts one process and checks what each rank did through a probe
callback (a module written into ``tmp_path`` and put on ``PYTHONPATH``, so that the re-run ranks import it too).
Each command runs in its own session with a timeout; on a timeout the whole session (every rank) is killed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed + gloo")

PROBE = '''
import json, os, sys, threading, time
from pathlib import Path

import __main__
import pytorch_lightning as pl
import torch


class RecordRank(pl.Callback):
    """Each rank writes rank<r>.pid when fitting starts and rank<r>.json (what it ran) when fitting ends."""

    def __init__(self, folder: str):
        self.folder = Path(folder)
        self.batches = 0

    def on_fit_start(self, trainer, pl_module):
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"rank{trainer.global_rank}.pid").write_text(str(os.getpid()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_fit_end(self, trainer, pl_module):
        spec = getattr(__main__, "__spec__", None)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps({
            "world_size": trainer.world_size, "batches": self.batches, "argv0": sys.argv[0],
            "argv": sys.argv[1:], "main_module": spec.name if spec else None, "threads": torch.get_num_threads()}))


class FailOnRank(pl.Callback):
    """Raise on rank ``rank`` at batch ``batch``, a second late, so that the other rank is waiting in a collective;
    ``linger``: first start a non-daemon thread that never ends, as a teardown that hangs would (a process group's
    destructor, a library's thread): Python's shutdown waits on it."""

    def __init__(self, rank: int, batch: int = 2, linger: bool = False):
        self.rank, self.batch, self.linger = rank, batch, linger

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank and batch_idx == self.batch:
            if self.linger:
                threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
            time.sleep(1.0)
            raise RuntimeError(f"probe failure on rank {self.rank} at batch {batch_idx}")
'''

#: synthetic.yaml's structure at test size: 32 px, widths 8, one warm-up batch each, a 4-batch budget.
CONFIG = """\
seed_everything: 0
model:
  class_path: segexpr.modules.JointModule
  init_args:
    task: both
    region_source: segmenter
    joint: true
    adv_loss: hinge
    n_critic: 1
    segmenter_warmup_steps: 1
    critic_warmup_steps: 1
    sample_every_n_steps: 0
    image_size: 32
    segmenter: {{name: unet, base_channels: 8, depth: 2, norm: group}}
    generator: {{base_channels: 8, n_down: 2, n_res: 1, local_channels: 8, local_n_res: 1, crop_size: 16}}
    coder: {{code_dim: 16, base_channels: 8, n_down: 2}}
    discriminator: {{base_channels: 8, n_layers: 3, local_channels: 8, local_n_layers: 2, feature_hidden: 16}}
data:
  class_path: segexpr.data.SyntheticFacesDataModule
  init_args: {{size: 32, train_length: 32, val_length: 4, test_length: 4, pairs: true, augment: false,
               batch_size: 2, num_workers: 0}}
trainer:
  accelerator: cpu
  max_epochs: -1
  limit_val_batches: 0
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: runs
  logger:
    class_path: pytorch_lightning.loggers.CSVLogger
    init_args: {{save_dir: runs, name: ""}}
  callbacks:
    - class_path: segexpr.callbacks.BatchBudget
      init_args: {{batches: {batches}}}
    - class_path: segexpr_ddp_probe.RecordRank
      init_args: {{folder: ranks}}
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {{save_last: true, save_top_k: 0}}
{extra}"""

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]
THREAD_LINE = "segexpr: using 1 torch thread(s) (--threads)"


def segexpr_command() -> list[str]:
    """The installed console command: next to this interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).with_name("segexpr")
    found = str(beside) if beside.is_file() else shutil.which("segexpr")
    if found is None:
        pytest.skip("the segexpr console command is not installed")
    return [found]


def run_in(folder: Path, command: list[str], timeout: float) -> tuple[int, str, float]:
    """Run ``command`` in ``folder`` in a session of its own; returns (exit code, stdout + stderr, seconds). On a
    timeout every process of the session (every rank) is killed and the test fails."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [str(folder), env.get("PYTHONPATH")])))
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"{command} still running after {timeout} s (every rank killed); output:\n{output[-4000:]}")
    return proc.returncode, output, time.monotonic() - start


def write_run(folder: Path, batches: int = 4, extra: str = "") -> Path:
    (folder / "segexpr_ddp_probe.py").write_text(PROBE)
    (folder / "ddp.yaml").write_text(CONFIG.format(batches=batches, extra=extra))
    return folder


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def check_two_ranks_trained(folder: Path, output: str, args: list[str]) -> list[dict]:
    ranks = [json.loads((folder / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        # both ranks trained the whole budget in a 2-process group, re-run from the very same command line
        # (segexpr's own --threads included) and with its thread setting
        assert rank["world_size"] == 2 and rank["batches"] == 4, ranks
        assert rank["argv"] == args, ranks
        assert rank["threads"] == 1, ranks
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output
    assert output.count(THREAD_LINE) == 1, output[-4000:]  # printed by rank 0 only
    # one run folder, one checkpoint, written once (by rank 0), that loads
    assert sorted(p.name for p in (folder / "runs").iterdir()) == ["latest", "version_0"]
    checkpoints = folder / "runs" / "version_0" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]
    from segexpr.modules import JointModule

    module = JointModule.load_from_checkpoint(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] > 4
    assert module.image_size == 32
    return ranks


def test_console_command_trains_two_ddp_ranks_from_another_folder(tmp_path):
    folder = write_run(tmp_path)
    args = ["fit", "--config", "ddp.yaml", *DDP, "--threads", "1"]
    code, output, seconds = run_in(folder, [*segexpr_command(), *args], timeout=150)
    assert code == 0, output[-4000:]
    ranks = check_two_ranks_trained(folder, output, args)
    assert [Path(rank["argv0"]).name for rank in ranks] == ["segexpr", "segexpr"]
    print(f"console DDP fit: {seconds:.1f} s")


def test_python_dash_m_segexpr_trains_two_ddp_ranks(tmp_path):
    folder = write_run(tmp_path)
    args = ["fit", "--config", "ddp.yaml", *DDP, "--threads", "1"]
    code, output, seconds = run_in(folder, [sys.executable, "-m", "segexpr", *args], timeout=150)
    assert code == 0, output[-4000:]
    ranks = check_two_ranks_trained(folder, output, args)
    # rank 0 ran as ``-m segexpr``, rank 1 as Lightning re-ran it: ``-m segexpr.__main__``
    assert [rank["main_module"] for rank in ranks] == ["segexpr.__main__", "segexpr.__main__"]
    print(f"python -m segexpr DDP fit: {seconds:.1f} s")


@pytest.mark.parametrize("failing", [1, 0])
def test_an_error_on_one_rank_stops_both_ranks_and_is_shown_once(tmp_path, failing):
    fail = (f"    - class_path: segexpr_ddp_probe.FailOnRank\n"
            f"      init_args: {{rank: {failing}, batch: 2, linger: true}}\n")
    folder = write_run(tmp_path, batches=6, extra=fail)
    code, output, seconds = run_in(folder, [*segexpr_command(), "fit", "--config", "ddp.yaml", *DDP, "--threads", "1"],
                                   timeout=60)
    assert code != 0, output[-4000:]
    pids = [int((folder / "ranks" / f"rank{r}.pid").read_text()) for r in (0, 1)]
    deadline = time.monotonic() + 10  # an orphaned rank would have kept the output open: this is a formality
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in pids), (pids, output[-4000:])
    # the failing rank's error, once, with its traceback; the other rank adds no traceback of its own
    message = f"RuntimeError: probe failure on rank {failing} at batch 2"
    assert output.count(message) == 1, output[-6000:]
    assert output.count("Traceback (most recent call last)") == 1, output[-6000:]
    assert f"[rank{failing}]: Traceback" in output
    if failing == 1:  # rank 0 says in one line that it stopped because rank 1 failed
        assert "segexpr fit: rank 0 stopped after rank 1 failed (exit code 1; its error is above)" in output
    assert not (folder / "ranks" / "rank0.json").exists()
    print(f"rank {failing} failing: both ranks gone after {seconds:.1f} s")
