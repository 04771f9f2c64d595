"""JointModule: configuration errors, gradient paths, region sources, code swapping, training, checkpoints, API."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segexpr.data.labels import EXPRESSIONS, NUM_AUS, expression_prototype
from segexpr.data.synthetic import SyntheticFaces, render
from segexpr.data.transforms import to_batch_tensors
from segexpr.losses.gan import adversarial_g_loss
from segexpr.models.generators import ExpressionCoder
from segexpr.gan.objectives import image_code_loss
from segexpr.models.factory import build_network
from segexpr.modules.joint import JointModule
from segexpr.modules.samples import sample_grid, sample_grid_columns
from tiny import tiny_combined_layouts, tiny_joint_module

SIZE = 32


def tiny_module(task="both", region_source="segmenter", joint=True, segmenter=True, **kwargs) -> JointModule:
    return tiny_joint_module(SIZE, segmenter=segmenter, task=task, region_source=region_source, joint=joint, **kwargs)


@pytest.fixture(scope="module")
def pair_batches():
    """Two cached paired SynthFACS batches of 4 (rendered once for the whole file)."""
    dataset = SyntheticFaces(size=SIZE, length=8, seed=0, pairs=True, identities=4)
    return list(DataLoader(dataset, batch_size=4))


def loader(batches):
    return DataLoader(batches, batch_size=None)


def face(identity: int, expression: int) -> torch.Tensor:
    return to_batch_tensors(render(identity, expression_prototype(expression), SIZE))["image"]


# ----------------------------------------------------------------------------------------------- configuration
@pytest.mark.parametrize("kwargs, message", [
    ({"task": "edit"}, "unknown task 'edit'"),
    ({"region_source": "boxes"}, "unknown region_source 'boxes'"),
    ({"adv_loss": "lsgan"}, "unknown adv_loss 'lsgan'"),
    ({"n_critic": 0}, "n_critic must be an integer >= 1"),
    ({"ema_decay": 1.0}, "ema_decay must be in"),
    ({"lambda_cyc": -1.0}, "lambda_cyc must be >= 0"),
    ({"au_loss": "huber"}, "unknown au_loss"),
    ({"segmenter": False}, "region_source='segmenter' needs a segmenter"),
])
def test_invalid_configuration_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_module(**kwargs)


# ----------------------------------------------------------------------------------------------- gradient paths
@pytest.mark.parametrize("joint", [True, False])
def test_generator_loss_reaches_segmenter_only_when_joint(pair_batches, joint):
    module = tiny_module(task="manipulate", joint=joint)
    batch = pair_batches[0]
    region_kwargs, _ = module._region_inputs(batch["image"], None, with_grad=True)
    out = module.generator(batch["image"], module.coder.from_label(torch.tensor([1, 2, 3, 4])), **region_kwargs)
    # training's path: the local critics judge crops at detached boxes, so gradients reach the segmenter only
    # through the masks that condition the generator
    local_adv, _ = module.discriminator.local_scores(module.objectives.local_crops(out.image, out.boxes))
    loss = (adversarial_g_loss("wgan-gp", module.discriminator.global_d(out.image)["adv"])
            + adversarial_g_loss("wgan-gp", local_adv))
    loss.backward()
    grads = [p.grad for p in module.segmenter.parameters()]
    if joint:
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    else:
        assert all(g is None or float(g.abs().sum()) == 0 for g in grads)
        assert not any(p.requires_grad for p in module.segmenter.parameters())


@pytest.mark.parametrize("joint", [False, True])
def test_training_with_joint_false_leaves_the_segmenter_bit_identical(pair_batches, joint):
    """Real training batches after the warm-ups (critic warm-up 1 batch; segmenter warm-up 2 batches, which
    JointModule runs only for a trainable segmenter), with a segmentation loss and n_critic 2 (D-only and G
    batches): joint=False keeps every segmenter weight and BatchNorm buffer as it was; joint=True (the control)
    changes both."""
    module = tiny_module(task="both", joint=joint, n_critic=2, segmenter_warmup_steps=2, critic_warmup_steps=1,
                         lambda_seg=1.0)
    module.initialize_segmenter(module.segmenter.state_dict())  # the frozen case needs a parser's weights
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in module.segmenter.modules())
    before = {k: v.detach().clone() for k, v in module.segmenter.state_dict().items()}
    generator_before = {k: v.detach().clone() for k, v in module.generator.state_dict().items()}
    trainer = pl.Trainer(max_epochs=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(module, loader(pair_batches))
    assert module._train_batches == 8  # 2 batches x 4 epochs: 5 or more GAN batches after the warm-ups
    after = module.segmenter.state_dict()
    assert any(not torch.equal(v, generator_before[k]) for k, v in module.generator.state_dict().items())
    changed = sorted(k for k, v in before.items() if not torch.equal(v, after[k]))
    if joint:
        assert any(k.endswith("running_mean") for k in changed) and any(k.endswith(".weight") for k in changed)
    else:
        assert changed == [], f"joint=False changed the segmenter's {changed[:5]}"


def test_landmark_boxes_follow_the_landmarks(pair_batches):
    module = tiny_module(region_source="landmarks", segmenter=False).eval()
    batch = pair_batches[0]
    images, landmarks = batch["image"], batch["landmarks"]
    code = module.coder.from_label(torch.tensor([1, 1, 1, 1]))
    shifted = landmarks + torch.tensor([4.0, 0.0])  # 4 px to the right
    with torch.no_grad():
        boxes = module.generator(images, code, landmarks=landmarks).boxes
        moved = module.generator(images, code, landmarks=shifted).boxes
    # normalised x = 2 * x_pixel / W - 1, so +4 px moves every centre by 8 / W; sizes are unchanged
    assert torch.allclose(moved[..., 0] - boxes[..., 0], torch.full_like(boxes[..., 0], 8 / SIZE), atol=1e-5)
    assert torch.allclose(moved[..., 1:], boxes[..., 1:], atol=1e-6)
    masks, masks_moved = module.regions(images, landmarks), module.regions(images, shifted)
    xs = torch.arange(SIZE, dtype=torch.float32)
    centre = (masks.sum(2) * xs).sum(-1) / masks.sum((2, 3))
    centre_moved = (masks_moved.sum(2) * xs).sum(-1) / masks_moved.sum((2, 3))
    assert torch.allclose(centre_moved - centre, torch.full_like(centre, 4.0), atol=0.5)
    assert not torch.equal(module.edit(images, "happy", landmarks=landmarks), module.edit(images, "happy", landmarks=shifted))
    with pytest.raises(KeyError, match="landmarks"):
        module.edit(images, "happy")


# ------------------------------------------------------------------------------------------------ code swapping
def test_transfer_uses_the_reference_code(pair_batches):
    module = tiny_module(task="transfer", region_source="none", segmenter=False)
    batch = pair_batches[0]
    images, references = batch["image"], batch["reference_image"]
    out = module.transfer(images, references)
    assert not torch.allclose(out, module.transfer(images, references.flip(0)))
    # the output is G(a, code(b)) exactly
    expected = module.generator(images, module.coder.from_image(references)).image.clamp(-1, 1)
    assert torch.allclose(out, expected.detach(), atol=1e-6)


def test_reference_identity_matters_less_than_its_aus():
    """After training the coder's loss, a new identity with the same AUs moves the transfer far less than new AUs."""
    torch.manual_seed(0)
    train = list(DataLoader(SyntheticFaces(size=SIZE, length=256, seed=0, identities=128), batch_size=16, shuffle=True))
    coder: ExpressionCoder = build_network("coder", {"code_dim": 16, "base_channels": 16, "n_down": 3})
    generator = build_network("generator", {"region_source": "none", "base_channels": 8, "n_down": 2, "n_res": 1,
                                            "code_dim": 16})
    optimizer = torch.optim.Adam(coder.parameters(), lr=3e-3, betas=(0.5, 0.999))
    for step in range(200):  # the coder's part of the generator step: image_code_loss (readout + AU-code alignment)
        batch = train[step % len(train)]
        loss = image_code_loss(coder, coder.from_image(batch["image"]), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    module = JointModule(segmenter=None, generator=generator, coder=coder, task="transfer", region_source="none",
                         n_critic=1, ema_decay=None, sample_every_n_steps=0, image_size=SIZE,
                         discriminator={"base_channels": 8, "n_layers": 3, "feature_hidden": 16})
    pairs = list(DataLoader(SyntheticFaces(size=SIZE, length=8, seed=1, identities=4, pairs=True), batch_size=4))
    pl.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(module, loader(pairs))

    sources = torch.stack([face(9000 + k, 0) for k in range(4)])  # identities never seen in training
    identity_change = au_change = 0.0
    for expression, other in ((1, 3), (2, 6), (5, 4), (3, 1)):
        reference = face(9100, expression).expand(4, -1, -1, -1)
        same_aus_new_identity = face(9200, expression).expand(4, -1, -1, -1)
        same_identity_new_aus = face(9100, other).expand(4, -1, -1, -1)
        out = module.transfer(sources, reference)
        identity_change += float((out - module.transfer(sources, same_aus_new_identity)).abs().mean())
        au_change += float((out - module.transfer(sources, same_identity_new_aus)).abs().mean())
    assert au_change > 0
    print(f"identity_change={identity_change:.3g} au_change={au_change:.3g}")
    assert identity_change < 0.5 * au_change, (identity_change, au_change)


# ------------------------------------------------------------------------------------- training + checkpoints
def _snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def _changed(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return any(not torch.equal(p.detach(), b) for p, b in zip(module.parameters(), before))


@pytest.mark.parametrize("task, region_source, adv_loss", [
    ("manipulate", "segmenter", "wgan-gp"),
    ("transfer", "segmenter", "hinge"),
    ("both", "segmenter", "wgan-gp"),
    ("both", "landmarks", "nonsaturating"),
    ("both", "none", "wgan-gp"),
])
def test_training_steps_checkpoint_roundtrip(pair_batches, tmp_path, task, region_source, adv_loss):
    module = tiny_module(task=task, region_source=region_source, adv_loss=adv_loss,
                         segmenter=region_source == "segmenter", lambda_seg=0.0)  # seg changes come from GAN losses only
    if region_source == "segmenter":  # no mask loss: its own weights stand in for a pretrained parser (the anchor)
        module.initialize_segmenter(module.segmenter.state_dict())
    parts = {"global_d": module.discriminator.global_d, "generator": module.generator, "coder": module.coder}
    if region_source != "none":
        parts["local_d"] = module.discriminator.local_d
    if task != "manipulate":
        parts["feature_classifier"] = module.discriminator.feature_classifier
    if region_source == "segmenter":
        parts["segmenter"] = module.segmenter
    before = {name: _snapshot(part) for name, part in parts.items()}
    optimizers_per_batch = 2 if task == "manipulate" else 3  # D (+ feature classifier) + G; global_step counts each
    trainer = pl.Trainer(max_steps=optimizers_per_batch, logger=False, enable_checkpointing=True,
                         default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader(pair_batches[:1]))  # one batch: every optimiser steps once
    assert module._train_batches == 1
    metrics = dict(trainer.callback_metrics)
    assert "train/d_loss" in metrics and "train/g_loss" in metrics
    assert all(math.isfinite(float(v)) for v in metrics.values()), metrics
    for name, snapshot in before.items():
        assert _changed(parts[name], snapshot), f"{name} did not change"
    assert module.ema is not None and module.ema.initialized

    val = trainer.validate(module, loader(pair_batches[:1]), verbose=False)[0]
    assert math.isfinite(val["val/recon_l1"]) and 0 <= val["val/d_acc_edit"] <= 1
    if region_source == "segmenter":
        assert 0 <= val["val/parsing_miou"] <= 1
    if task != "manipulate":
        assert math.isfinite(val["val/transfer_l1_gt"])
    if task != "transfer":
        assert math.isfinite(val["val/edit_l1_gt"])
    assert list((tmp_path / "samples").glob("val_samples_step*.png")), "no sample grid written"

    path = tmp_path / "joint.ckpt"
    trainer.save_checkpoint(path)
    restored = JointModule.load_from_checkpoint(path)
    images, landmarks = pair_batches[1]["image"], pair_batches[1]["landmarks"]
    assert torch.equal(module.edit(images, expression=3, landmarks=landmarks),
                       restored.edit(images, expression=3, landmarks=landmarks))
    assert restored._train_batches == module._train_batches
    assert torch.equal(restored.ema.averaged.n_averaged, module.ema.averaged.n_averaged)


def test_paired_edit_targets_come_from_the_data(pair_batches):
    """SynthFACS pairs set the label targets (edit_expression) and their answers: the label's render for label
    edits, the reference-AU render (transfer_target) for AU edits whose donor is the reference."""
    batch = pair_batches[0]
    module = tiny_module(task="manipulate", region_source="none", segmenter=False, label_target_probability=0.5)
    targets = module._sample_manipulation_targets(batch)
    assert torch.equal(targets["labels"], batch["edit_expression"])
    use_label = targets["use_label"]
    assert 0 < int(use_label.sum()) < len(use_label), "draws should mix labels and AU donors in this batch"
    assert targets["truth_valid"].all()
    assert torch.equal(targets["truth"][use_label], batch["edit_target"][use_label])
    assert torch.equal(targets["truth"][~use_label], batch["transfer_target"][~use_label])
    # AU donors drawn from the batch itself have no rendered answer: only label edits are paired.
    module = tiny_module(task="manipulate", region_source="none", segmenter=False, au_donor="batch",
                         label_target_probability=0.5)
    targets = module._sample_manipulation_targets(batch)
    assert torch.equal(targets["truth_valid"], targets["use_label"])
    bad = {**batch, "edit_expression": torch.full_like(batch["edit_expression"], 8)}
    with pytest.raises(ValueError, match=r"edit_expression.*labels in \[0, 8\)"):
        module._sample_manipulation_targets(bad)


def test_paired_edit_loss_adds_the_weighted_ground_truth_l1(pair_batches):
    """lambda_paired adds exactly lambda * L1(edit, ground truth) to the generator's manipulate loss; at 0 (the
    papers' unpaired setting) the L1 is only logged. Training logs both accordingly."""
    batch = pair_batches[0]
    totals, outs = {}, {}
    for weight in (0.0, 50.0):
        torch.manual_seed(0)
        module = tiny_module(task="manipulate", region_source="none", segmenter=False, lambda_paired=weight)
        targets = module._sample_manipulation_targets(batch)
        region_kwargs, _ = module._region_inputs(batch["image"], None, with_grad=False)
        torch.manual_seed(1)
        with torch.no_grad():
            # the objective is a plain callable over the networks and the batch (no Trainer needed)
            result = module.objectives.manipulation_loss(batch, targets, region_kwargs,
                                                         module.coder.from_image(batch["image"]))
            outs[weight], totals[weight] = result.terms, result.total
    assert "manipulate/paired_l1" not in outs[0.0] and "manipulate/paired_l1" in outs[50.0]
    paired = outs[50.0]["manipulate/paired_l1"]
    assert torch.allclose(outs[0.0]["edit_l1_gt"], paired)
    assert 0.01 < float(paired) < 2
    assert torch.allclose(totals[50.0] - totals[0.0], 50.0 * paired, rtol=1e-4, atol=1e-5)

    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, loader([batch]))
    assert {"train/edit_l1_gt", "train/manipulate/paired_l1"} <= set(trainer.callback_metrics)


def test_a_paired_loss_on_data_without_answers_is_refused_by_name(pair_batches):
    """lambda_paired > 0 with no edit_target/transfer_target in the batch would silently train unpaired."""
    batch = {k: v for k, v in pair_batches[0].items() if k not in ("edit_target", "transfer_target")}
    module = tiny_module(task="manipulate", region_source="none", segmenter=False, lambda_paired=5.0)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(KeyError, match="lambda_paired > 0.*neither 'edit_target' nor 'transfer_target'"):
        trainer.fit(module, loader([batch]))
    unpaired = tiny_module(task="manipulate", region_source="none", segmenter=False)
    pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(unpaired, loader([batch]))


def test_segmenter_warmup_trains_only_the_segmenter(pair_batches):
    module = tiny_module(task="both", segmenter_warmup_steps=2, ema_decay=None)
    parts = {"segmenter": module.segmenter, "generator": module.generator, "coder": module.coder,
             "discriminator": module.discriminator}
    before = {name: _snapshot(part) for name, part in parts.items()}
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, loader(pair_batches))  # two batches: warm-up only (one optimiser step each)
    assert module._train_batches == 2 and "train/warmup_seg_loss" in trainer.callback_metrics
    assert _changed(module.segmenter, before["segmenter"])
    for name in ("generator", "coder", "discriminator"):
        assert not _changed(parts[name], before[name]), f"{name} changed during the segmenter warm-up"
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, loader(pair_batches[:1]))  # third batch: the GAN schedule starts
    assert _changed(module.generator, before["generator"]) and _changed(module.discriminator, before["discriminator"])


def test_segmenter_warmup_needs_masks(pair_batches):
    with pytest.raises(ValueError, match="segmenter_warmup_steps must be an integer >= 0"):
        tiny_module(segmenter_warmup_steps=-1)
    module = tiny_module(task="both", segmenter_warmup_steps=1)
    batch = {k: v for k, v in pair_batches[0].items() if k != "mask"}
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(KeyError, match="segmenter_warmup_steps > 0 needs batches with 'mask'"):
        trainer.fit(module, loader([batch]))


def test_n_critic_schedules_generator_steps(pair_batches):
    module = tiny_module(task="manipulate", region_source="none", segmenter=False, n_critic=2, ema_decay=None)
    generator_before = _snapshot(module.generator)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, loader(pair_batches))  # one batch: a D step only
    assert not _changed(module.generator, generator_before)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, loader(pair_batches))  # second batch: D + G
    assert _changed(module.generator, generator_before)


def test_a_training_batch_builds_its_region_layout_once_and_steps_fused_adam(pair_batches, monkeypatch):
    # task both: the edit, its cycle, the self-reconstruction, the swap and the swap-back all use the source's
    # region inputs, so the masks are feathered (and boxes fitted) once per batch, not once per pass
    import segexpr.models.generators.hierarchical as hierarchical

    feathered = []
    real = hierarchical.feather_masks
    monkeypatch.setattr(hierarchical, "feather_masks", lambda *a, **k: feathered.append(1) or real(*a, **k))
    module = tiny_module(task="both")
    generator_before = _snapshot(module.generator)
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, limit_train_batches=1)
    trainer.fit(module, loader(pair_batches[:1]))  # n_critic 1: one G step, then the critic reuses its fakes
    assert _changed(module.generator, generator_before)
    assert len(feathered) == 1
    # CPU parameters: every GAN optimiser is Adam's fused kernel, not its per-parameter loop
    assert len(trainer.optimizers) == 3 and all(opt.defaults["fused"] for opt in trainer.optimizers)


def test_non_finite_loss_names_the_loss_and_step(pair_batches):
    module = tiny_module(task="manipulate", region_source="none", segmenter=False)
    bad = dict(pair_batches[0])
    bad["aus"] = bad["aus"].clone()
    bad["aus"][0, 0] = float("nan")
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    # n_critic=1: the generator step comes first on every batch, and its coder readout meets the NaN AU first
    with pytest.raises(FloatingPointError, match=r"non-finite generator loss \(image_code\) at global step 0"):
        trainer.fit(module, loader([bad]))


def test_transfer_task_requires_references(pair_batches):
    module = tiny_module(task="transfer", region_source="none", segmenter=False)
    batch = {k: v for k, v in pair_batches[0].items() if not k.startswith("reference") and k != "transfer_target"}
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    with pytest.raises(KeyError, match="reference_image"):
        trainer.fit(module, loader([batch]))


# ------------------------------------------------------------------------------------------------ public API
def test_edit_transfer_regions_api(pair_batches):
    module = tiny_module(task="both").train()
    images = torch.rand(2, 3, 40, 52) * 2 - 1  # not the training size
    by_name = module.edit(images, expression="happy")
    assert by_name.shape == images.shape and by_name.min() >= -1 and by_name.max() <= 1
    assert module.training, "train mode must be restored"
    assert torch.equal(by_name, module.edit(images, expression=EXPRESSIONS.index("happy")))
    assert torch.equal(by_name, module.edit(images, expression=torch.tensor([1, 1])))
    prototype = torch.from_numpy(expression_prototype("surprise"))
    assert torch.equal(module.edit(images, aus=prototype), module.edit(images, aus=prototype.expand(2, NUM_AUS)))
    assert not torch.allclose(by_name, module.edit(images, expression="sad"))
    same_size = pair_batches[0]["image"]
    assert module.edit(same_size, expression=0).shape == same_size.shape
    assert module.transfer(images, pair_batches[0]["reference_image"][:2]).shape == images.shape
    masks = module.regions(images)
    assert masks.shape == (2, 4, 40, 52) and masks.min() >= 0 and masks.max() <= 1
    for bad in ({}, {"expression": 1, "aus": prototype}):
        with pytest.raises(ValueError, match="exactly one"):
            module.edit(images, **bad)
    with pytest.raises(ValueError, match="unknown expression 'smug'"):
        module.edit(images, expression="smug")
    with pytest.raises(ValueError, match="aus must be"):
        module.edit(images, aus=torch.zeros(3, NUM_AUS))
    global_only = tiny_module(region_source="none", segmenter=False)
    assert global_only.regions(images).shape == (2, 0, 40, 52)


def test_sample_grid_layout(pair_batches):
    module = tiny_module(task="both")
    batch = pair_batches[0]
    grid = sample_grid(module, batch, num_samples=2)
    columns = sample_grid_columns(module, batch)
    assert columns == ["source", *EXPRESSIONS, "reference", "transfer", "regions"]
    pad = 2
    assert grid.shape == (3, 2 * (SIZE + pad) + pad, len(columns) * (SIZE + pad) + pad)
    assert grid.min() >= 0 and grid.max() <= 1


def test_lightning_cli_builds_joint_module_from_yaml(tmp_path):
    from segexpr.cli import lightning_cli

    config = tmp_path / "joint.yaml"
    config.write_text(f"""
model:
  class_path: segexpr.modules.joint.JointModule
  init_args:
    task: manipulate
    region_source: segmenter
    n_critic: 2
    image_size: {SIZE}
    segmenter: {{name: unet, base_channels: 8, depth: 2}}
    generator: {{base_channels: 8, n_down: 2, n_res: 1, local_channels: 8, local_n_res: 1, crop_size: 16}}
    coder: {{code_dim: 16, base_channels: 8, n_down: 2}}
    discriminator: {{base_channels: 8, n_layers: 3, local_channels: 8, au_free_channels: 32}}
data:
  class_path: segexpr.data.synthetic.SyntheticFacesDataModule
  init_args: {{size: {SIZE}, train_length: 8, val_length: 4, test_length: 4}}
trainer:
  logger: false
  default_root_dir: {tmp_path}
""")
    cli = lightning_cli(["--config", str(config)], run=False)
    module = cli.model
    assert isinstance(module, JointModule)
    assert module.hparams.n_critic == 2 and module.segmenter_trainable
    assert module.hparams.segmenter == {"name": "unet", "base_channels": 8, "depth": 2}
    assert module.generator.region_source == "segmenter" and module.image_size == SIZE


def test_combined_expression_and_parsing_data(tmp_path):
    """AffectNet-style GAN batches plus CelebAMask-HQ-style mask batches (each in its real layout): the GAN
    trains on the first, the segmentation loss on the second; validate and test log parsing mIoU."""
    data = tiny_combined_layouts(tmp_path, SIZE)
    module = tiny_module(task="manipulate")
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1,
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    before = [p.detach().clone() for p in module.segmenter.parameters()]
    trainer.fit(module, datamodule=data)
    assert torch.isfinite(trainer.callback_metrics["train/seg_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, module.segmenter.parameters()))
    assert "val/parsing_miou" in trainer.callback_metrics
    results = trainer.test(module, datamodule=data, verbose=False)[0]
    assert {"test/recon_l1", "test/d_acc_edit", "test/parsing_miou"} <= set(results)
