"""Every shipped config trains two batches and one validation, with its own callbacks and logger, through
LightningCLI on SynthFACS exported in that dataset's release layout. Only the widths are made tiny, merged into
the config's own network dicts, so each config trains its own network shape (regions, crop size, box_scale,
depths)."""
from pathlib import Path

import pytest
import torch
import yaml

from segexpr.cli import lightning_cli
from segexpr.data.export import export_synthetic
from segexpr.models.factory import build_network
from segexpr.modules import JointModule

CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "configs"
SIZE = 32
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
       "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.val_check_interval", "2",
       "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]
#: Tiny widths, merged into each config's network dicts (every other key, e.g. regions, crop_size, box_scale,
#: n_down, n_layers, is the config's). A pretrained backbone cannot load into a tiny width, so it is switched off.
TINY_WIDTHS = {
    "segmenter": {"backbone_width": 8, "context_channels": 8, "fusion_channels": 8, "pretrained_backbone": False},
    "generator": {"base_channels": 8, "n_res": 1, "local_channels": 8, "local_n_res": 1},
    "coder": {"code_dim": 16, "base_channels": 8},
    "discriminator": {"base_channels": 8, "local_channels": 8, "feature_hidden": 16},
}
#: the configs' parsing-only warm-up (400 batches) cut to one, so the second of two batches trains the GAN
WARMUP_ONE = ["--model.init_args.segmenter_warmup_steps", "1", "--model.init_args.critic_warmup_steps", "1"]


def config_args(name: str) -> dict:
    """The ``model.init_args`` of ``examples/configs/<name>.yaml``."""
    return yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["model"]["init_args"]


def tiny_networks(name: str) -> dict[str, dict]:
    """The config's network dicts with :data:`TINY_WIDTHS` merged in (JointModule: segmenter, generator, coder,
    discriminator; SegmenterModule: segmenter_kwargs)."""
    args = config_args(name)
    if "segmenter_kwargs" in args:
        return {"segmenter_kwargs": {**args["segmenter_kwargs"], **TINY_WIDTHS["segmenter"]}}
    return {key: {**args.get(key, {}), **TINY_WIDTHS[key]} for key in TINY_WIDTHS}


def tiny_joint(name: str) -> list[str]:
    return ["--model.init_args.image_size", str(SIZE)] + [
        arg for key, value in tiny_networks(name).items() for arg in (f"--model.init_args.{key}", str(value))]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    out = {}
    for fmt, count, aus in (("affectnet", 12, "none"), ("rafd", 3, "none"), ("celebamask-hq", 8, "ganimation"),
                            ("ganimation", 10, "none")):
        out[fmt] = base / fmt
        export_synthetic(fmt, out[fmt], count, 64, seed=0, aus=aus)
    parser = base / "parser.pth"  # a plain state_dict of the tiny parser: the pretrained start affectnet.yaml needs
    torch.save(build_network("segmenter", tiny_networks("affectnet")["segmenter"]).state_dict(), parser)
    out["parser"] = parser
    return out


def _data(prefix: str, root: Path) -> list[str]:
    return [f"--{prefix}.root", str(root), f"--{prefix}.image_size", str(SIZE), f"--{prefix}.batch_size", "2",
            f"--{prefix}.num_workers", "0", f"--{prefix}.pin_memory", "false"]


def _overrides(name: str, roots: dict) -> list[str]:
    combined = {"affectnet_celebamask_hq": "affectnet", "rafd": "rafd", "ganimation": "ganimation"}
    if name in combined:  # (parsing warm-up cut to one batch so that the second is a GAN batch)
        return (tiny_joint(name) + _data("data.init_args.expression.init_args", roots[combined[name]])
                + _data("data.init_args.parsing.init_args", roots["celebamask-hq"]) + WARMUP_ONE)
    if name == "affectnet":
        return tiny_joint(name) + _data("data.init_args", roots["affectnet"]) + [
            "--model.init_args.segmenter_weights", str(roots["parser"]), "--model.init_args.critic_warmup_steps", "1"]
    if name == "celebamask_hq":
        return tiny_joint(name) + _data("data.init_args", roots["celebamask-hq"]) + WARMUP_ONE + [
            "--data.init_args.aus", str(roots["celebamask-hq"] / "aus_openface.pkl")]
    if name in ("synthetic", "synthetic_paired"):
        return tiny_joint(name) + ["--data.init_args.size", str(SIZE), "--data.init_args.batch_size", "2"] + WARMUP_ONE
    if name == "segmenter_synthetic":
        return ["--model.init_args.segmenter_kwargs", str(tiny_networks(name)["segmenter_kwargs"]),
                "--data.init_args.size", str(SIZE), "--data.init_args.batch_size", "2"]
    if name == "segmenter_celebamask_hq":
        return ["--model.init_args.segmenter_kwargs", str(tiny_networks(name)["segmenter_kwargs"])
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
        assert_the_configs_own_shape(name, model)
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


def assert_the_configs_own_shape(name: str, model: JointModule) -> None:
    """The trained networks have the config's shape, with only the widths of :data:`TINY_WIDTHS`."""
    from segexpr.data.labels import REGION_GROUPS

    generator_config = config_args(name)["generator"]
    generator = model.generator
    assert tuple(generator.regions) == tuple(generator_config.get("regions", REGION_GROUPS)), generator.regions
    assert list(generator.local_generators) == list(generator.regions)
    for key in ("crop_size", "box_scale"):
        assert getattr(generator, key) == generator_config[key], key
    for network, config in tiny_networks(name).items():  # the merged dict is what the module was built from
        built = model.hparams[network]
        assert {k: built.get(k) for k in config} == config, (network, built)


def test_the_main_job_trains_six_sided_regions_with_its_box_scale():
    """What the merge keeps for the README's main job (synthetic.yaml): its sided regions and box scale."""
    generator = tiny_networks("synthetic")["generator"]
    assert generator["regions"] == ["l_brow", "r_brow", "l_eye", "r_eye", "nose", "mouth"]
    assert generator["box_scale"] == 3.5 and generator["crop_size"] == 16 and generator["base_channels"] == 8


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
