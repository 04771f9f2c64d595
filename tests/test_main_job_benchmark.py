"""The main job's measurements: the PhaseTimes callback (phase_times.json, same weights with and without it) and
examples/benchmarks/main_job.py end to end on a tiny config (a real ``segexpr fit`` subprocess, a tiny judge)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.callbacks import ModelCheckpoint

from benchmark_scripts import BENCHMARKS, load_benchmark
from segexpr.callbacks import BatchBudget, PhaseTimes, ResultImage
from segexpr.data.synthetic import SyntheticFacesDataModule
from tiny import tiny_joint_module

ROOT = BENCHMARKS.parents[1]
SIZE = 32


class SlowFetch(pl.Callback):
    """Sleeps after every training batch (listed after PhaseTimes): time the clock must charge to data_wait."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)


def _fit(root: Path, *callbacks: pl.Callback) -> pl.LightningModule:
    """4 batches of the tiny JointModule (2 parser / 1 critic warm-up batches), a validation every 2 batches, a
    result image and checkpoints: every phase PhaseTimes times."""
    from segexpr.cli import torch_threads

    pl.seed_everything(0)
    module = tiny_joint_module(SIZE, segmenter_warmup_steps=2, critic_warmup_steps=1)
    data = SyntheticFacesDataModule(size=SIZE, train_length=40, val_length=2, test_length=2, pairs=True,
                                    augment=False, batch_size=2)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=-1, val_check_interval=2, num_sanity_val_steps=1,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                         logger=pl.loggers.CSVLogger(root, name=""),
                         callbacks=[BatchBudget(4), ResultImage(num_samples=1), ModelCheckpoint(save_last=True),
                                    *callbacks])
    with torch_threads(1):  # one thread: quick beside other work, and the same sums in both fits
        trainer.fit(module, datamodule=data)
    return module


def test_phase_times_json_splits_the_fit_into_phases_that_add_up_to_the_total(tmp_path):
    phases = PhaseTimes(window=2)
    _fit(tmp_path, phases, SlowFetch(0.1))
    report = json.loads((tmp_path / "version_0" / "phase_times.json").read_text())
    seconds = report["phases_s"]
    assert set(seconds) == set(PhaseTimes.PHASES)
    assert all(v >= 0 for v in seconds.values()), seconds
    # the total is the wall clock from the process start, taken apart from the phases' perf_counter clock
    assert report["startup_source"] in ("psutil", "/proc/self/stat", "segexpr.callbacks import")
    assert abs(sum(seconds.values()) - report["total_s"]) < 0.1 + 0.01 * report["total_s"], report
    assert report["warmup_batch_limit"] == 2
    counts = report["counts"]
    assert (counts["warmup_batches"], counts["gan_batches"], counts["validation"], counts["sanity_check"]) == (2, 2, 2, 1)
    assert counts["result_image"] == 3 and counts["checkpoint"] >= 2  # 2 validations + train end; top-k and last
    for phase in ("warmup_batches", "gan_batches", "validation", "result_image", "checkpoint", "sanity_check"):
        assert seconds[phase] > 0, phase
    assert seconds["data_wait"] >= 4 * 0.1  # the sleeps after each batch, before the next batch starts
    assert seconds["gan_batches"] > seconds["warmup_batches"]  # warm-up batches make no fakes
    # two windows of two batches: the warm-up's, then the GAN batches'; their shares add up to the phases
    windows = report["windows"]
    assert [w["batches"] for w in windows] == [[0, 2], [2, 4]]
    assert windows[1]["batch_ms"] > windows[0]["batch_ms"]
    assert sum(w["batch_ms"] * 2 for w in windows) == pytest.approx(
        1e3 * (seconds["warmup_batches"] + seconds["gan_batches"]), rel=1e-3)
    assert all(w["data_wait_ms"] * 2 >= 100 for w in windows)  # at least one of the sleeps in each
    with pytest.raises(ValueError, match="window"):
        PhaseTimes(window=0)
    # the wrappers are gone after the fit
    assert "save_checkpoint" not in vars(phases) and not phases._wrapped


def test_phase_times_leaves_the_trained_weights_unchanged(tmp_path):
    without = _fit(tmp_path / "without").state_dict()
    with_phases = _fit(tmp_path / "with", PhaseTimes()).state_dict()
    assert (tmp_path / "with" / "version_0" / "phase_times.json").is_file()
    assert without.keys() == with_phases.keys()
    different = [k for k in without if not torch.equal(without[k], with_phases[k])]
    assert not different, different[:5]


def test_the_main_job_config_lists_phase_times_after_its_other_callbacks():
    config = yaml.safe_load((ROOT / "examples" / "configs" / "synthetic.yaml").read_text())
    paths = [c["class_path"] for c in config["trainer"]["callbacks"]]
    assert paths == ["segexpr.callbacks.BatchBudget", "segexpr.callbacks.ResultImage",
                     "pytorch_lightning.callbacks.ModelCheckpoint", "segexpr.callbacks.PhaseTimes"]


# ------------------------------------------------------------------------------ examples/benchmarks/main_job.py
#: synthetic.yaml's structure at test size: 32 px, widths 8, one warm-up batch each, a 3-batch budget.
TINY_MAIN_JOB = """\
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
    segmenter: {name: unet, base_channels: 8, depth: 2}
    generator: {base_channels: 8, n_down: 2, n_res: 1, local_channels: 8, local_n_res: 1, crop_size: 16}
    coder: {code_dim: 16, base_channels: 8, n_down: 2}
    discriminator: {base_channels: 8, n_layers: 3, local_channels: 8, local_n_layers: 2, feature_hidden: 16}
data:
  class_path: segexpr.data.SyntheticFacesDataModule
  init_args: {size: 32, train_length: 40, val_length: 2, test_length: 2, pairs: true, augment: false,
              batch_size: 2, num_workers: 0}
trainer:
  accelerator: cpu
  max_epochs: -1
  val_check_interval: 2
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  default_root_dir: outputs/tiny
  logger:
    class_path: pytorch_lightning.loggers.CSVLogger
    init_args: {save_dir: outputs/tiny, name: ""}
  callbacks:
    - class_path: segexpr.callbacks.BatchBudget
      init_args: {batches: 3}
    - class_path: segexpr.callbacks.ResultImage
      init_args: {num_samples: 1}
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {save_last: true}
    - class_path: segexpr.callbacks.PhaseTimes
"""


def tiny_judge():
    from segexpr.evaluation.judge import JudgeEnsemble
    from segexpr.models.judges import create_judge

    torch.manual_seed(0)
    return JudgeEnsemble([create_judge("vgg_bn_small", image_size=SIZE)]).eval()


def test_main_job_runs_the_command_times_it_judges_it_and_writes_json_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_MAIN_JOB)
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"runs": [{"seed": 0, "metrics": {"edit_expression_accuracy": 0.5}}]}))
    main_job = load_benchmark("main_job")
    out = tmp_path / "results"
    report = main_job.main(["--config", str(config), "--threads", "1", "--work-dir", str(tmp_path / "work"),
                            "--out-dir", str(out), "--eval-count", "2", "--baseline-json", str(baseline),
                            "--set", "trainer.log_every_n_steps=2"], judge_factory=tiny_judge)
    saved = json.loads((out / "main_job.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert {"cpu_model", "cores", "usable_cores", "load_average_at_start"} <= set(saved["machine"])
    assert saved["standard_judge"] is False and "not the standard one" in saved["judge"]
    assert saved["differs_from_readme"] == [f"--config {config}", "--set trainer.log_every_n_steps=2"]
    (run,) = saved["runs"]
    console = str(Path(main_job.sys.executable).with_name("segexpr"))
    # seed 0 is the config's own: no --seed_everything; --threads and --set passed through
    assert run["command"] == [console, "fit", "--config", str(config), "--threads", "1",
                              "--trainer.log_every_n_steps", "2"]
    assert run["torch_threads"] == 1 and run["notes"] == ["--threads 1 appended (the README's command picks its own)"]
    assert run["wall_s"] > 0 and run["wall_target_met"] is True
    phases = run["phases_s"]
    assert set(phases) == set(main_job.PHASE_COLUMNS) and all(v >= 0 for v in phases.values())
    assert run["phase_times"]["counts"]["warmup_batches"] == 1 and run["phase_times"]["counts"]["gan_batches"] == 2
    # the process's own start-up and fit lie inside the wall clock measured around it
    assert run["phase_times"]["total_s"] <= run["wall_s"] + 0.5
    assert set(run["metrics"]) == set(main_job.METRICS)
    assert all(isinstance(v, float) for v in run["metrics"].values()), run["metrics"]
    assert run["baseline_expression_accuracy"] == 0.5
    assert run["expression_accuracy_vs_baseline"] == pytest.approx(run["metrics"]["edit_expression_accuracy"] - 0.5)
    run_folder = Path(run["run_folder"])
    assert (run_folder / "result.png").is_file() and (run_folder / "checkpoints" / "last.ckpt").is_file()
    assert saved["evaluation"] == {"size": SIZE, "identities": 2, "seed": 0, "fid_features": "none"}
    markdown = (out / "main_job.md").read_text()
    assert "**The command differs from the README's**" in markdown
    acc = run["metrics"]["edit_expression_accuracy"]
    assert f"| 0 | 1 | {run['load_average_before']} | 0 min " in markdown  # the time row of seed 0
    assert f"| 0 | {acc:.3f} | " in markdown and f"{acc - 0.5:+.3f} (baseline 0.500) |" in markdown


def test_main_job_refuses_an_existing_output_before_any_training(tmp_path, monkeypatch):
    main_job = load_benchmark("main_job")
    out = tmp_path / "results"
    out.mkdir()
    (out / "main_job.md").write_text("a user's table\n")
    started = []
    monkeypatch.setattr(main_job, "run_fit", lambda *a, **k: started.append(a))
    judged = []
    with pytest.raises(FileExistsError, match="main_job.md"):
        main_job.main(["--out-dir", str(out), "--work-dir", str(tmp_path / "work")],
                      judge_factory=lambda: judged.append(1))
    assert not started and not judged and not (tmp_path / "work").exists()
    assert (out / "main_job.md").read_text() == "a user's table\n" and not (out / "main_job.json").exists()
    # a used work folder is refused too, before training
    (tmp_path / "work" / "seed_0").mkdir(parents=True)
    (tmp_path / "work" / "seed_0" / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="seed_0"):
        main_job.main(["--out-dir", str(tmp_path / "fresh"), "--work-dir", str(tmp_path / "work")],
                      judge_factory=lambda: judged.append(1))
    assert not started and not judged


def test_main_job_command_is_the_readmes_with_a_seed_appended_only_when_not_the_configs(tmp_path):
    main_job = load_benchmark("main_job")
    console = Path("/venv/bin/segexpr")
    own = main_job.config_seed(main_job.README_CONFIG)
    assert own == 0
    command, notes = main_job.fit_command(console, main_job.README_CONFIG, 0, own, None, [])
    assert command == [str(console), "fit", "--config", str(main_job.README_CONFIG)] and notes == []
    command, notes = main_job.fit_command(console, main_job.README_CONFIG, 1, own, None,
                                          main_job.parse_sets(["model.init_args.n_critic=2"]))
    assert command[4:] == ["--seed_everything", "1", "--model.init_args.n_critic", "2"]
    assert notes == ["--seed_everything 1 appended (the config's own seed is 0)"]
    with pytest.raises(ValueError, match="KEY=VALUE"):
        main_job.parse_sets(["n_critic"])
