"""Every shipped config builds through LightningCLI, pointed at SynthFACS exported in the real layouts."""
from pathlib import Path

import pytest

from segexpr.cli import lightning_cli
from segexpr.data.export import export_synthetic
from segexpr.modules import JointModule, SegmenterModule

CONFIGS = Path(__file__).resolve().parent.parent / "examples" / "configs"
CPU = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32-true",
       "--trainer.logger", "false", "--trainer.callbacks", "null"]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    out = {}
    for fmt, count in (("affectnet", 12), ("rafd", 3), ("celebamask-hq", 8)):
        out[fmt] = base / fmt
        export_synthetic(fmt, out[fmt], count, 64, seed=0)
    return out


def _build(name: str, *overrides: str):
    cli = lightning_cli(["--config", str(CONFIGS / name), *CPU, *overrides], run=False)
    return cli.model, cli.datamodule, cli.trainer


def test_every_config_is_covered():
    assert {p.name for p in CONFIGS.glob("*.yaml")} == {
        "synthetic.yaml", "affectnet.yaml", "rafd.yaml", "celebamask_hq.yaml", "affectnet_celebamask_hq.yaml",
        "segmenter_synthetic.yaml", "segmenter_celebamask_hq.yaml"}


def test_main_job_config_builds():
    model, data, trainer = _build("synthetic.yaml", "--trainer.default_root_dir", "/tmp/segexpr-config-test")
    assert isinstance(model, JointModule) and model.hparams.region_source == "segmenter" and model.segmenter_trainable
    assert model.hparams.task == "both" and data.hparams.pairs


@pytest.mark.parametrize("name, layout, module_name", [
    ("affectnet.yaml", "affectnet", "AffectNetDataModule"),
    ("rafd.yaml", "rafd", "RaFDDataModule"),
    ("celebamask_hq.yaml", "celebamask-hq", "CelebAMaskHQDataModule"),
])
def test_real_data_configs_build_and_load_their_layout(roots, name, layout, module_name):
    model, data, _ = _build(name, "--data.init_args.root", str(roots[layout]), "--data.init_args.num_workers", "0",
                            "--data.init_args.batch_size", "2")
    assert isinstance(model, JointModule) and type(data).__name__ == module_name
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape[-2:] == (128, 128)


def test_combined_config_builds(roots):
    model, data, _ = _build("affectnet_celebamask_hq.yaml",
                            "--data.init_args.expression.init_args.root", str(roots["affectnet"]),
                            "--data.init_args.parsing.init_args.root", str(roots["celebamask-hq"]))
    assert isinstance(model, JointModule)
    assert type(data.expression).__name__ == "AffectNetDataModule"
    assert type(data.parsing).__name__ == "CelebAMaskHQDataModule"


def test_bad_config_values_are_reported(tmp_path):
    with pytest.raises((SystemExit, ValueError)):
        lightning_cli(["--config", str(CONFIGS / "synthetic.yaml"), *CPU, "--model.init_args.task", "dance"], run=False)
    with pytest.raises((SystemExit, ValueError)):
        lightning_cli(["--config", str(CONFIGS / "synthetic.yaml"), *CPU, "--model.init_args.n_critic", "0"], run=False)
