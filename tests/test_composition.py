"""JointModule as a composition of networks from configs: checkpoints that stand alone, strict configs, the
0.1 checkpoint format, image-size checks, objectives without Lightning and the editor."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segexpr.data.synthetic import SyntheticFaces
from segexpr.editor import ExpressionEditor
from segexpr.gan.objectives import GANObjectives, LossWeights
from segexpr.gan.targets import expression_prototypes, sample_manipulation_targets
from segexpr.io import CheckpointError, load_module
from segexpr.io.checkpoints import upgrade_checkpoint
from segexpr.models.factory import build_network
from segexpr.modules import JointModule, SegmenterModule
from segexpr.modules.joint import load_joint_module

from tiny import TINY_NETWORKS, tiny_joint_module

SIZE = 32
FIXTURES = Path(__file__).parent / "fixtures"
LEGACY = FIXTURES / "joint_legacy_b7524cb.ckpt"  # written by segexpr at commit b7524cb (0.1 layout)


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    return pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      accelerator="cpu", default_root_dir=tmp_path, **kwargs)


def _pairs(length: int = 4) -> DataLoader:
    return DataLoader(SyntheticFaces(size=SIZE, length=length, seed=0, identities=2, pairs=True), batch_size=2)


def _save(module: pl.LightningModule, path: Path, tmp_path: Path) -> Path:
    trainer = _trainer(tmp_path, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


# ------------------------------------------------------------------ checkpoints stand alone
def test_joint_checkpoint_loads_after_its_pretrained_segmenter_file_is_deleted(tmp_path):
    parser = SegmenterModule(arch="unet", segmenter_kwargs={"base_channels": 8, "depth": 2})
    with torch.no_grad():
        for p in parser.segmenter.parameters():
            p.add_(0.5)  # weights a fresh network would not have
    weights = _save(parser, tmp_path / "parser.ckpt", tmp_path)
    module = tiny_joint_module(SIZE, segmenter_weights=str(weights))
    for a, b in zip(parser.segmenter.state_dict().values(), module.segmenter.state_dict().values()):
        assert torch.equal(a, b)  # initialised from the file at construction
    _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, _pairs())
    saved = _save(module, tmp_path / "joint.ckpt", tmp_path)
    weights.unlink()
    ckpt = torch.load(saved, weights_only=True)
    assert ckpt["hyper_parameters"]["segmenter_weights"] is None
    assert ckpt["segexpr_initialized_from"] == {"segmenter_weights": str(weights)}  # provenance kept
    reloaded = JointModule.load_from_checkpoint(saved)
    for a, b in zip(module.state_dict().values(), reloaded.state_dict().values()):
        assert torch.equal(a, b)
    assert module.hparams.segmenter_weights == str(weights)  # the live module's hparams are untouched
    with pytest.raises(CheckpointError, match="not found"):
        tiny_joint_module(SIZE, segmenter_weights=str(weights))


def test_checkpoint_loads_after_the_bisenet_backbone_file_is_deleted(tmp_path):
    from torchvision.models import resnet18

    backbone = tmp_path / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), backbone)
    module = JointModule(segmenter={"name": "bisenet", "context_channels": 16, "fusion_channels": 16,
                                    "pretrained_backbone": str(backbone)},
                         image_size=SIZE, n_critic=1, sample_every_n_steps=0, **TINY_NETWORKS)
    saved = _save(module, tmp_path / "joint.ckpt", tmp_path)
    backbone.unlink()
    reloaded = JointModule.load_from_checkpoint(saved)
    assert torch.equal(reloaded.segmenter.backbone.conv1.weight, module.segmenter.backbone.conv1.weight)
    assert torch.load(saved, weights_only=True)["segexpr_initialized_from"] == {
        "segmenter.pretrained_backbone": str(backbone)}


def test_segmenter_module_checkpoint_loads_after_its_pretrained_file_is_deleted(tmp_path):
    kwargs = {"arch": "unet", "segmenter_kwargs": {"base_channels": 8, "depth": 2}}
    source = _save(SegmenterModule(**kwargs), tmp_path / "a.ckpt", tmp_path)
    saved = _save(SegmenterModule(**kwargs, pretrained=str(source)), tmp_path / "b.ckpt", tmp_path)
    source.unlink()
    assert isinstance(SegmenterModule.load_from_checkpoint(saved), SegmenterModule)
    assert isinstance(load_module(saved, expected=SegmenterModule), SegmenterModule)


# ------------------------------------------------------------------ configs are strict
def test_a_config_key_without_effect_is_refused():
    with pytest.raises(ValueError, match=r"segmenter config: unknown key\(s\) \['lr'\]"):
        JointModule(segmenter={"name": "unet", "lr": 0.1}, image_size=SIZE, **TINY_NETWORKS)
    with pytest.raises(ValueError, match=r"generator config: unknown key\(s\) \['lambda_rec'\]"):
        JointModule(segmenter=None, region_source="none", image_size=SIZE,
                    generator={**TINY_NETWORKS["generator"], "lambda_rec": 1.0},
                    coder=TINY_NETWORKS["coder"], discriminator=TINY_NETWORKS["discriminator"])
    with pytest.raises(ValueError, match="class_path/init_args dict"):  # the 0.1 form is named, not ignored
        JointModule(segmenter={"class_path": "segexpr.modules.SegmenterModule", "init_args": {"arch": "unet"}},
                    image_size=SIZE, **TINY_NETWORKS)
    with pytest.raises(TypeError, match="not the LightningModule"):
        JointModule(segmenter=SegmenterModule(arch="unet"), image_size=SIZE, **TINY_NETWORKS)
    with pytest.raises(ValueError, match="image_size=64 but JointModule has image_size=32"):
        JointModule(segmenter=None, region_source="none", image_size=SIZE, generator=TINY_NETWORKS["generator"],
                    coder=TINY_NETWORKS["coder"], discriminator={**TINY_NETWORKS["discriminator"], "image_size": 64})


def test_a_yaml_key_without_effect_is_refused_by_the_cli(tmp_path):
    from segexpr.cli import lightning_cli

    config = tmp_path / "joint.yaml"
    config.write_text(f"""
model:
  class_path: segexpr.modules.JointModule
  init_args:
    image_size: {SIZE}
    segmenter: {{name: unet, base_channels: 8, depth: 2, ohem_thresh: 0.5}}
data:
  class_path: segexpr.data.SyntheticFacesDataModule
  init_args: {{size: {SIZE}, train_length: 4, val_length: 4, test_length: 4}}
trainer: {{logger: false, default_root_dir: {tmp_path}}}
""")
    with pytest.raises((ValueError, SystemExit)) as info:
        lightning_cli(["--config", str(config)], run=False)
    assert "ohem_thresh" in str(info.value) or isinstance(info.value, SystemExit)


def test_a_network_built_by_the_factory_is_recorded_and_reloads(tmp_path):
    segmenter = build_network("segmenter", {"name": "unet", "base_channels": 8, "depth": 2})
    module = JointModule(segmenter=segmenter, image_size=SIZE, n_critic=1, sample_every_n_steps=0, **TINY_NETWORKS)
    assert module.hparams.segmenter == {"name": "unet", "base_channels": 8, "depth": 2}
    reloaded = JointModule.load_from_checkpoint(_save(module, tmp_path / "j.ckpt", tmp_path))
    for a, b in zip(module.segmenter.state_dict().values(), reloaded.segmenter.state_dict().values()):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ image size
def test_batches_of_another_size_are_refused_with_both_sizes(tmp_path):
    module = tiny_joint_module(64)
    with pytest.raises(ValueError, match=r"image_size=64 but the batch's images are 32x32"):
        _trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, _pairs())


# ------------------------------------------------------------------ segexpr 0.1 checkpoints
def assert_same(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # Same weights, same outputs up to float rounding: results differ by ~1e-7 between thread counts, and the
    # paste-back now resamples content and attention in one grid_sample (issue 14); a wrong upgrade moves them by >1e-2.
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def test_legacy_checkpoint_loads_with_the_same_outputs(tmp_path):
    reference = torch.load(FIXTURES / "joint_legacy_b7524cb_outputs.pt", weights_only=True)
    for module in (load_module(LEGACY, expected=JointModule), load_joint_module(LEGACY)):
        assert_same(module.edit(reference["image"], expression="happy"), reference["edit_happy"])
        assert_same(module.regions(reference["image"]), reference["regions"])
    editor = ExpressionEditor.from_checkpoint(LEGACY)
    assert_same(editor.edit(reference["image"], expression="happy"), reference["edit_happy"])
    with pytest.raises(ValueError, match="upgrade_checkpoint"):  # Lightning's own loader names the conversion
        JointModule.load_from_checkpoint(LEGACY)
    upgraded = upgrade_checkpoint(LEGACY, tmp_path / "new.ckpt")
    module = JointModule.load_from_checkpoint(upgraded)
    assert_same(module.edit(reference["image"], expression="happy"), reference["edit_happy"])
    assert module.image_size == SIZE and module.hparams.segmenter["name"] == "unet"
    with pytest.raises(FileExistsError):
        upgrade_checkpoint(LEGACY, upgraded)
    with pytest.raises(CheckpointError, match="not a segexpr 0.1"):
        upgrade_checkpoint(upgraded, tmp_path / "again.ckpt")


def test_upgrade_checkpoint_command(tmp_path):
    from segexpr.cli import main

    assert main(["upgrade-checkpoint", str(LEGACY), str(tmp_path / "new.ckpt")]) == 0
    assert isinstance(JointModule.load_from_checkpoint(tmp_path / "new.ckpt"), JointModule)
    with pytest.raises(SystemExit, match="exists"):
        main(["upgrade-checkpoint", str(LEGACY), str(tmp_path / "new.ckpt")])


# ------------------------------------------------------------------ objectives and editor without Lightning
def test_objectives_run_on_bare_networks_without_lightning():
    torch.manual_seed(0)
    coder = build_network("coder", TINY_NETWORKS["coder"])
    generator = build_network("generator", {**TINY_NETWORKS["generator"], "region_source": "landmarks",
                                            "code_dim": coder.code_dim})
    discriminator = build_network("discriminator", {**TINY_NETWORKS["discriminator"], "image_size": SIZE,
                                                    "au_free_channels": generator.au_free_channels,
                                                    "crop_size": generator.crop_size})
    reuse = lambda fake, landmarks: {"region_masks": None, "landmarks": landmarks}  # noqa: E731
    objectives = GANObjectives(generator, coder, discriminator, generator.regions, LossWeights(), "wgan-gp", "mse", reuse)
    batch = next(iter(DataLoader(SyntheticFaces(size=SIZE, length=4, seed=0, identities=2, pairs=True), batch_size=4)))
    region_kwargs = reuse(None, batch["landmarks"])
    targets = sample_manipulation_targets(batch, batch["sample_seed"], 0, expression_prototypes())

    with torch.no_grad():
        fake = generator(batch["image"], coder.from_label(targets["labels"]), **region_kwargs)
    d = objectives.discriminator_loss(batch, [fake.image], fake.boxes)
    assert {"adv", "gp", "cls", "au", "local_adv", "local_gp", "local_au"} == set(d.terms)
    d.total.backward()
    assert all(p.grad is not None for p in discriminator.global_d.parameters())
    assert all(p.grad is None for p in generator.parameters())  # the fakes were detached

    g = objectives.manipulation_loss(batch, targets, region_kwargs, coder.from_image(batch["image"]))
    t = objectives.transfer_loss(batch, region_kwargs, coder.from_image(batch["image"]))
    assert {"manipulate/adv", "manipulate/cycle_l1", "manipulate/code"} <= set(g.terms)
    assert {"transfer/swap_stats", "transfer/swap_cycle_l1", "transfer/mcadv_encoder"} <= set(t.terms)
    (g.total + t.total).backward()
    grads = [p.grad for p in generator.local_generators["mouth"].parameters()]
    assert all(x is not None and torch.isfinite(x).all() for x in grads) and any(x.abs().sum() > 0 for x in grads)


def test_editor_from_checkpoint_equals_the_module(tmp_path):
    module = tiny_joint_module(SIZE, ema_decay=0.5)
    _trainer(tmp_path, max_steps=2, limit_val_batches=0).fit(module, _pairs())
    assert module.ema.initialized
    saved = _save(module, tmp_path / "j.ckpt", tmp_path)
    editor = ExpressionEditor.from_checkpoint(saved)
    images = torch.rand(2, 3, 48, 40) * 2 - 1  # any size: edited at 32 px, the change pasted back
    assert torch.equal(editor.edit(images, expression="sad"), module.edit(images, expression="sad"))
    assert torch.equal(editor.regions(images), module.regions(images))
    assert editor.region_names == module.region_names and editor.image_size == SIZE
    with pytest.raises(CheckpointError, match="not found"):
        ExpressionEditor.from_checkpoint(tmp_path / "missing.ckpt")
