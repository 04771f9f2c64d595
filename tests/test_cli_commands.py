"""Issue 16: the ``segexpr`` command a new user meets -- help, typos, one-line errors, threads, run folders,
the batch budget, and ``segexpr edit``/``transfer`` file handling (no silent overwrites, streaming, modes)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image

from segexpr.callbacks import BatchBudget, ResultImage, batches_done
from segexpr.cli import main
from segexpr.cli.edit import parse_aus
from segexpr.data import SyntheticFacesDataModule
from segexpr.data.synthetic import SyntheticFaces
from segexpr.io import CheckpointError, read_checkpoint
from tiny import save_tiny_checkpoint, tiny_combined_layouts, tiny_joint_module

ROOT = Path(__file__).resolve().parent.parent
SIZE = 32


def _segexpr(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """The real console entry point, in a subprocess."""
    return subprocess.run([sys.executable, "-m", "segexpr.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """An untrained tiny JointModule checkpoint (with a segmenter), saved by a Trainer."""
    root = tmp_path_factory.mktemp("ckpt")
    return save_tiny_checkpoint(root / "tiny.ckpt", SIZE)


def _face(path: Path, index: int = 0, size: int = 48, mode: str = "RGB") -> Path:
    array = ((SyntheticFaces(size=size, length=index + 1, seed=3, split="test")[index]["image"] + 1) * 127.5)
    image = Image.fromarray(array.round().byte().permute(1, 2, 0).numpy(), "RGB")
    if mode == "RGBA":
        image = image.convert("RGBA")
        alpha = np.tile(np.linspace(0, 255, image.width, dtype=np.uint8), (image.height, 1))
        image.putalpha(Image.fromarray(alpha, "L"))
    elif mode == "L":
        image = image.convert("L")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


# ------------------------------------------------------------------------------------ help, typos, errors
def test_help_lists_every_command_without_importing_torch():
    start = time.perf_counter()
    result = _segexpr("--help")
    seconds = time.perf_counter() - start
    assert result.returncode == 0
    for command in ("fit", "validate", "test", "predict", "edit", "transfer", "evaluate", "export-synthetic",
                    "demo", "upgrade-checkpoint"):
        assert f"\n  {command} " in result.stdout, command
    assert seconds < 10, seconds  # measured ~0.07 s; generous for a loaded 2-core machine
    probe = subprocess.run([sys.executable, "-c", "import sys, segexpr.cli as c; c.main(['--help']); "
                            "print('torch' in sys.modules, 'pytorch_lightning' in sys.modules)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip().endswith("False False"), probe.stdout
    bare = _segexpr()
    assert bare.returncode == 2 and "export-synthetic" in bare.stderr


def test_typo_suggests_the_command():
    result = _segexpr("fitt")
    assert result.returncode == 2
    assert result.stderr.strip() == "segexpr: unknown command 'fitt'; did you mean 'fit'?"
    assert "unknown command 'zzz'" in _segexpr("zzz").stderr


def test_subcommand_help_is_plain_text():
    result = _segexpr("edit", "--help")
    assert result.returncode == 0 and "--no-align" in result.stdout and "--overwrite" in result.stdout
    assert "``" not in result.stdout and ":func:" not in result.stdout


def test_cuda_without_gpu_and_out_file_are_one_line_errors(ckpt, tmp_path):
    face = _face(tmp_path / "face.png")
    result = _segexpr("edit", str(face), "--ckpt", str(ckpt), "--expression", "happy", "--out", str(tmp_path / "o"),
                      "--device", "cuda", "--no-align", env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "segexpr edit: --device cuda requested but torch.cuda.is_available() is False")
    assert "Traceback" not in result.stderr
    out_file = tmp_path / "taken.txt"
    out_file.write_text("mine")
    result = _segexpr("edit", str(face), "--ckpt", str(ckpt), "--expression", "happy", "--out", str(out_file),
                      "--no-align", "--threads", "1")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"segexpr edit: --out {out_file} is an existing file" in result.stderr
    assert "segexpr: using 1 torch thread(s) (--threads)" in result.stderr
    assert out_file.read_text() == "mine"


def test_corrupt_checkpoint_message_names_file_and_never_suggests_unsafe_loading(tmp_path, capsys):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt") as err:
        read_checkpoint(garbage)
    assert "weights_only=False" not in str(err.value)
    truncated = tmp_path / "truncated.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(256)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated.ckpt") as err:
        read_checkpoint(truncated)
    assert "weights_only=False" not in str(err.value)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Evil()}, evil)
    with pytest.raises(CheckpointError, match="evil.ckpt") as err:
        read_checkpoint(evil)
    assert "weights_only=False" not in str(err.value) and "refused" in str(err.value)
    face = _face(tmp_path / "face.png")
    assert main(["edit", str(face), "--ckpt", str(garbage), "--expression", "happy", "--out", str(tmp_path / "o"),
                 "--no-align"]) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith("segexpr edit: cannot read checkpoint") and "garbage.ckpt" in line
    assert "weights_only=False" not in line and not (tmp_path / "o").exists()


def test_duplicate_aus_and_reference_folder_are_refused(ckpt, tmp_path, capsys):
    with pytest.raises(ValueError, match="AU12 is given twice"):
        parse_aus("AU12=0.5,AU12=1")
    with pytest.raises(ValueError, match="AU6 is given twice"):
        parse_aus("AU06=0.5,AU6=1")
    face = _face(tmp_path / "in" / "face.png")
    assert main(["edit", str(face), "--ckpt", str(ckpt), "--aus", "AU12=0.5,AU12=1", "--out", str(tmp_path / "o"),
                 "--no-align"]) == 1
    assert "segexpr edit: AU12 is given twice" in capsys.readouterr().err
    assert main(["transfer", str(face), "--reference", str(tmp_path / "in"), "--ckpt", str(ckpt),
                 "--out", str(tmp_path / "o"), "--no-align"]) == 2
    assert "--reference must be one image file" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ files: never lost
def test_outputs_mirror_inputs_and_never_overwrite(ckpt, tmp_path, capsys):
    a = _face(tmp_path / "in" / "a" / "face.png", 0)
    b = _face(tmp_path / "in" / "b" / "face.png", 1)
    out = tmp_path / "out"
    args = ["--ckpt", str(ckpt), "--expression", "happy", "--out", str(out), "--no-align"]
    assert main(["edit", str(tmp_path / "in"), *args]) == 0
    first = {p: p.read_bytes() for p in (out / "a" / "face_happy.png", out / "b" / "face_happy.png")}
    assert all(first.values())
    assert main(["edit", str(a), str(b), *args]) == 2  # the same outputs (common parent) exist
    assert "--overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in first} == first
    assert main(["edit", str(a), str(b), *args, "--overwrite"]) == 0
    # --out inside the inputs would overwrite them
    assert main(["edit", str(a), "--ckpt", str(ckpt), "--expression", "happy", "--out", str(tmp_path / "in" / "a"),
                 "--no-align", "--format", "png"]) == 0  # writes face_happy.png beside face.png: fine
    assert main(["edit", str(tmp_path / "in" / "a"), "--ckpt", str(ckpt), "--expression", "happy",
                 "--out", str(tmp_path / "in" / "a"), "--no-align", "--overwrite"]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert not list(out.rglob(".*"))  # no temp files left behind


def test_streaming_stops_at_the_bad_file_or_skips_it(ckpt, tmp_path, capsys):
    inputs = tmp_path / "in"
    _face(inputs / "1.png", 0)
    (inputs / "2.png").write_bytes(b"\x89PNG not an image")
    Image.open(_face(inputs / "3.png", 1)).resize((12, 12)).save(inputs / "3.png")  # too small
    _face(inputs / "4.png", 2)
    args = ["--ckpt", str(ckpt), "--expression", "sad", "--no-align"]
    assert main(["edit", str(inputs), *args, "--out", str(tmp_path / "stop")]) == 1
    err = capsys.readouterr().err
    assert "cannot read image" in err and "2.png" in err and "1 image(s) written before it" in err
    assert sorted(p.name for p in (tmp_path / "stop").iterdir()) == ["1_sad.png"]
    assert main(["edit", str(inputs), *args, "--out", str(tmp_path / "skip"), "--skip-invalid"]) == 1
    err = capsys.readouterr().err
    assert "2 of 4 input image(s) failed, 2 image(s) written" in err and "3.png is 12x12 px" in err
    assert sorted(p.name for p in (tmp_path / "skip").iterdir()) == ["1_sad.png", "4_sad.png"]


def test_modes_and_formats_are_kept(ckpt, tmp_path):
    rgba = _face(tmp_path / "in" / "rgba.png", 0, mode="RGBA")
    grey = _face(tmp_path / "in" / "grey.png", 1, mode="L")
    out = tmp_path / "out"
    assert main(["edit", str(tmp_path / "in"), "--ckpt", str(ckpt), "--expression", "anger", "--out", str(out),
                 "--no-align"]) == 0
    edited = Image.open(out / "rgba_anger.png")
    assert edited.mode == "RGBA" and edited.size == (48, 48)
    assert np.array_equal(np.asarray(edited)[..., 3], np.asarray(Image.open(rgba))[..., 3])
    assert not np.array_equal(np.asarray(edited)[..., :3], np.asarray(Image.open(rgba))[..., :3])
    assert Image.open(out / "grey_anger.png").mode == "L"
    assert main(["edit", str(grey), "--ckpt", str(ckpt), "--expression", "anger", "--out", str(out), "--no-align",
                 "--format", "jpg"]) == 0
    assert Image.open(out / "grey_anger.jpg").format == "JPEG"
    assert main(["edit", str(rgba), "--ckpt", str(ckpt), "--expression", "anger", "--out", str(out), "--no-align",
                 "--format", "jpg"]) == 1  # JPEG cannot keep alpha: said, not dropped silently


# ------------------------------------------------------------------------------------ fit: budget, runs, W&B
TINY_FIT = """
seed_everything: 0
model:
  class_path: segexpr.modules.JointModule
  init_args:
    n_critic: 1
    adv_loss: hinge
    sample_every_n_steps: 0
    segmenter_warmup_steps: 2
    image_size: {size}
    segmenter: {{name: unet, base_channels: 8, depth: 2}}
    generator: {{base_channels: 8, n_down: 2, n_res: 1, local_channels: 8, local_n_res: 1, crop_size: 16}}
    coder: {{code_dim: 16, base_channels: 8, n_down: 2}}
    discriminator: {{base_channels: 8, n_layers: 3, local_channels: 8, local_n_layers: 2, feature_hidden: 16}}
data:
  class_path: segexpr.data.SyntheticFacesDataModule
  init_args: {{size: {size}, train_length: 40, val_length: 4, test_length: 4, pairs: true, augment: false, batch_size: 4}}
trainer:
  accelerator: cpu
  max_epochs: -1
  limit_val_batches: 1
  val_check_interval: 2
  enable_progress_bar: {bar}
  enable_model_summary: false
  default_root_dir: {root}
  logger:
    class_path: pytorch_lightning.loggers.CSVLogger
    init_args: {{save_dir: {root}, name: ""}}
  callbacks:
    - class_path: segexpr.callbacks.BatchBudget
      init_args: {{batches: 4}}
    - class_path: segexpr.callbacks.ResultImage
      init_args: {{num_samples: 1}}
    - class_path: pytorch_lightning.callbacks.ModelCheckpoint
      init_args: {{save_last: true}}
"""


def test_fit_runs_get_their_own_folders_without_the_args_warning(tmp_path):
    root = tmp_path / "runs"
    config = tmp_path / "fit.yaml"
    config.write_text(TINY_FIT.format(size=SIZE, root=root, bar="true"))
    result = _segexpr("fit", "--config", str(config), "--threads", "1", timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LightningCLI's args parameter" not in result.stderr
    assert "segexpr: using 1 torch thread(s)" in result.stderr
    config.write_text(TINY_FIT.format(size=SIZE, root=root, bar="false"))
    assert main(["fit", "--config", str(config)]) == 0
    for version in ("version_0", "version_1"):
        run = root / version
        assert (run / "result.png").is_file() and (run / "metrics.csv").is_file(), sorted(run.iterdir())
        assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (root / "latest").resolve() == (root / "version_1").resolve()
    assert read_checkpoint(root / "latest" / "checkpoints" / "last.ckpt")["global_step"] > 4


def test_batch_budget_counts_batches_not_optimizer_steps(tmp_path):
    torch.manual_seed(0)
    from pytorch_lightning.callbacks import TQDMProgressBar

    module = tiny_joint_module(SIZE, segmenter_warmup_steps=1)
    data = SyntheticFacesDataModule(size=SIZE, train_length=40, val_length=4, test_length=4, pairs=True,
                                    augment=False, batch_size=2)
    bar = TQDMProgressBar()
    trainer = pl.Trainer(max_epochs=-1, logger=False, enable_checkpointing=False, limit_val_batches=0,
                         enable_model_summary=False, accelerator="cpu",
                         callbacks=[BatchBudget(batches=3), bar], default_root_dir=tmp_path)
    trainer.fit(module, datamodule=data)
    assert batches_done(trainer) == 3  # the warm-up batch counts too
    assert trainer.global_step > 3  # several optimiser steps per GAN batch: max_steps could not say "3 batches"
    assert bar.train_progress_bar.total == 3 and bar.train_progress_bar.n == 3  # the bar shows k/3
    with pytest.raises(ValueError, match="batches must be >= 1"):
        BatchBudget(0)


def test_result_image_with_combined_data_and_loggers(tmp_path, monkeypatch):
    """A CombinedDataModule's val loader yields (batch, idx, dataloader_idx) with {"gan", "parsing"}: the grid
    uses the gan half, is written as PNG and goes to the loggers."""
    import segexpr.callbacks as callbacks
    import segexpr.modules.samples as samples
    data = tiny_combined_layouts(tmp_path, SIZE)
    logged = []
    monkeypatch.setattr(callbacks, "_image_loggers", lambda module: True)
    monkeypatch.setattr(samples, "log_image_grid", lambda module, grid, tag, caption=None: logged.append((tag, grid)))
    torch.manual_seed(0)
    module = tiny_joint_module(SIZE, task="manipulate")
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu", default_root_dir=tmp_path, num_sanity_val_steps=0,
                         callbacks=[ResultImage(path=str(tmp_path / "result.png"), num_samples=2)])
    trainer.fit(module, datamodule=data)
    assert Image.open(tmp_path / "result.png").height > 2 * SIZE
    assert logged and logged[0][0] == "val/result" and logged[0][1].shape[0] == 3
