"""W&B through Lightning's WandbLogger: offline by itself without an API key, and the run's files land on disk."""
import os

import pytorch_lightning as pl
from pathlib import Path

import pytest
from tiny import tiny_joint_module

from segexpr.data import SyntheticFacesDataModule
from segexpr.loggers import WandbLogger, wandb_api_key_configured


@pytest.fixture
def no_wandb_credentials(tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc from `wandb login`
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_credentials_are_detected(no_wandb_credentials, tmp_path, monkeypatch):
    assert not wandb_api_key_configured()
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    os.chmod(tmp_path / "home" / ".netrc", 0o600)
    assert wandb_api_key_configured()
    monkeypatch.setenv("WANDB_API_KEY", "y" * 40)
    assert wandb_api_key_configured()


def test_offline_run_writes_losses_images_and_code_version(no_wandb_credentials, tmp_path):
    logger = WandbLogger(save_dir=str(tmp_path), name="tiny")
    assert logger._offline  # chosen automatically: no key configured
    module = tiny_joint_module(32, sample_every_n_steps=1)
    data = SyntheticFacesDataModule(size=32, train_length=16, val_length=8, test_length=8, pairs=True,
                                    augment=False, batch_size=4)
    trainer = pl.Trainer(max_steps=4, limit_val_batches=0, logger=logger, log_every_n_steps=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         accelerator="cpu")
    trainer.fit(module, datamodule=data)
    config = dict(logger.experiment.config)
    assert config["code_version"]["segexpr_version"] and config["task"] == "both"
    # The run's own folder (wandb keeps process-wide settings, so an earlier W&B run in the same pytest process
    # can move the parent directory; the run folder is what matters).
    run = Path(logger.experiment.dir).parent
    logger.experiment.finish()
    assert run.name.startswith("offline-run-"), run
    assert list(run.glob("run-*.wandb")), "the offline run has no history file"
    images = list((run / "files" / "media" / "images").rglob("*.png"))
    assert images, "the sample grids were not logged as images"
    assert (run / "run-" f"{run.name.rsplit('-', 1)[1]}.wandb").stat().st_size > 0
