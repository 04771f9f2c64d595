"""Every shipped config trains two batches and one validation, with its own callbacks and logger, through
LightningCLI on SynthFACS exported in that dataset's release layout (tiny widths through overrides only)."""
from pathlib import Path

import pytest
import torch

from segexpr.cli import lightning_cli
from segexpr.data.export import export_synthetic
from segexpr.models.factory import build_network
from segexpr.modules import JointModule

CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "configs"
SIZE = 32
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
       "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.val_check_interval", "2",
       "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]
TINY_SEGMENTER = {"name": "bisenet", "backbone_width": 8, "context_channels": 8, "fusion_channels": 8,
                  "spatial_stride": 4}
#: the configs' parsing-only warm-up (400 batches) cut to one, so the second of two batches trains the GAN
WARMUP_ONE = ["--model.init_args.segmenter_warmup_steps", "1", "--model.init_args.critic_warmup_steps", "1"]
TINY_JOINT = [
    "--model.init_args.image_size", str(SIZE),
    "--model.init_args.segmenter", str(TINY_SEGMENTER),
    "--model.init_args.generator", "{base_channels: 8, n_down: 2, n_res: 1, local_channels: 8, local_n_res: 1, "
                                   "crop_size: 16}",
    "--model.init_args.coder", "{code_dim: 16, base_channels: 8, n_down: 2}",
    "--model.init_args.discriminator", "{base_channels: 8, n_layers: 3, local_channels: 8, local_n_layers: 2, "
                                       "feature_hidden: 16}",
]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    out = {}
    for fmt, count, aus in (("affectnet", 12, "none"), ("rafd", 3, "none"), ("celebamask-hq", 8, "ganimation"),
                            ("ganimation", 10, "none")):
        out[fmt] = base / fmt
        export_synthetic(fmt, out[fmt], count, 64, seed=0, aus=aus)
    parser = base / "parser.pth"  # a plain state_dict of the tiny parser: the pretrained start affectnet.yaml needs
    torch.save(build_network("segmenter", TINY_SEGMENTER).state_dict(), parser)
    out["parser"] = parser
    return out


def _data(prefix: str, root: Path) -> list[str]:
    return [f"--{prefix}.root", str(root), f"--{prefix}.image_size", str(SIZE), f"--{prefix}.batch_size", "2",
            f"--{prefix}.num_workers", "0", f"--{prefix}.pin_memory", "false"]


def _overrides(name: str, roots: dict) -> list[str]:
    combined = {"affectnet_celebamask_hq": "affectnet", "rafd": "rafd", "ganimation": "ganimation"}
    if name in combined:  # (parsing warm-up cut to one batch so that the second is a GAN batch)
        return (TINY_JOINT + _data("data.init_args.expression.init_args", roots[combined[name]])
                + _data("data.init_args.parsing.init_args", roots["celebamask-hq"]) + WARMUP_ONE)
    if name == "affectnet":
        return TINY_JOINT + _data("data.init_args", roots["affectnet"]) + [
            "--model.init_args.segmenter_weights", str(roots["parser"]), "--model.init_args.critic_warmup_steps", "1"]
    if name == "celebamask_hq":
        return TINY_JOINT + _data("data.init_args", roots["celebamask-hq"]) + WARMUP_ONE + [
            "--data.init_args.aus", str(roots["celebamask-hq"] / "aus_openface.pkl")]
    if name in ("synthetic", "synthetic_paired"):
        return TINY_JOINT + ["--data.init_args.size", str(SIZE), "--data.init_args.batch_size", "2"] + WARMUP_ONE
    if name == "segmenter_synthetic":
        return ["--model.init_args.segmenter_kwargs", str({k: v for k, v in TINY_SEGMENTER.items() if k != "name"}),
                "--data.init_args.size",
                str(SIZE), "--data.init_args.batch_size", "2"]
    if name == "segmenter_celebamask_hq":
        return ["--model.init_args.segmenter_kwargs", str({k: v for k, v in TINY_SEGMENTER.items() if k != "name"})
                ] + _data("data.init_args", roots["celebamask-hq"])
    raise KeyError(name)


CONFIG_NAMES = ["synthetic", "synthetic_paired", "affectnet", "affectnet_celebamask_hq", "rafd", "ganimation", "celebamask_hq",
                "segmenter_synthetic", "segmenter_celebamask_hq"]


def test_every_config_is_covered():
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(CONFIG_NAMES)


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_trains_two_batches_and_validates_with_its_own_callbacks(roots, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # the configs write under relative paths (lightning_logs/, outputs/)
    # an absolute log folder: W&B keeps process-wide settings, and a relative one would outlive the chdir
    logs = ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    cli = lightning_cli(["fit", "--config", str(CONFIGS / f"{name}.yaml"), *CPU, *logs, *_overrides(name, roots)])
    trainer, model = cli.trainer, cli.model
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 2
    metrics = trainer.callback_metrics
    assert metrics and all(torch.isfinite(v).all() for v in metrics.values()), metrics
    assert any(k.startswith("val/") for k in metrics), sorted(metrics)
    if isinstance(model, JointModule):
        assert model._train_batches == 2
        assert any(type(c).__name__ == "ResultImage" for c in trainer.callbacks)
        images = list(tmp_path.rglob("result.png"))
        assert images, "the config's ResultImage wrote nothing"
        checkpoints = list(tmp_path.rglob("last*.ckpt"))
        assert checkpoints, "the config's checkpoint callback wrote no last.ckpt"
        if name == "affectnet":
            roots["parser"].rename(tmp_path / "moved.pth")  # the checkpoint must load without its parser file
            try:
                JointModule.load_from_checkpoint(checkpoints[0])
            finally:
                (tmp_path / "moved.pth").rename(roots["parser"])
        if not name.startswith("synthetic"):  # real-data configs train both tasks on unpaired references: the AU-free feature
            # classifier (needs the references) steps, and with n_critic 2 the second batch is a generator step
            assert model.hparams.task == "both" and "train/fc_loss" in metrics, sorted(metrics)
            assert "train/g_loss" in metrics, sorted(metrics)


def test_a_real_config_without_its_parsing_anchor_stops_before_the_first_step(roots, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [a for a in _overrides("affectnet", roots)]
    args[args.index("--model.init_args.segmenter_weights") + 1] = "null"
    with pytest.raises(ValueError, match="nothing anchors it as a parser"):
        lightning_cli(["fit", "--config", str(CONFIGS / "affectnet.yaml"), *CPU, *args])


def test_bad_config_values_are_reported(tmp_path):
    base = ["--config", str(CONFIGS / "synthetic.yaml"), "--trainer.accelerator", "cpu", "--trainer.logger", "false"]
    with pytest.raises((SystemExit, ValueError)):
        lightning_cli([*base, "--model.init_args.task", "dance"], run=False)
    with pytest.raises((SystemExit, ValueError)):
        lightning_cli([*base, "--model.init_args.n_critic", "0"], run=False)
