"""Training mechanics of the joint model: which passes touch the segmenter, where gradients may flow.

* the segmenter's BatchNorm statistics move only with the generator step's pass on real images (not with the
  discriminator steps' no-grad passes, not with passes on fakes);
* the local critics crop at detached boxes (GAN gradients reach the segmenter only through the masks that
  condition the generator);
* the cycle and swap-back passes reuse the source's region inputs (the segmenter never parses a fake).
"""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

import segexpr.gan.objectives as objectives_module
from segexpr.data.synthetic import SyntheticFaces
from tiny import tiny_joint_module

SIZE = 32


@pytest.fixture(scope="module")
def pair_batches():
    return list(DataLoader(SyntheticFaces(size=SIZE, length=8, seed=0, pairs=True, identities=4), batch_size=4))


def _tracked(segmenter: nn.Module) -> int:
    return sum(int(m.num_batches_tracked) for m in segmenter.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def test_segmenter_batchnorm_moves_only_in_the_generator_step(pair_batches):
    module = tiny_joint_module(SIZE, task="both", n_critic=2, ema_decay=None)
    norms = [m for m in module.segmenter.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms, "the test needs a BatchNorm segmenter"
    before = _tracked(module.segmenter)
    pl.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0
               ).fit(module, DataLoader(pair_batches, batch_size=None))
    assert module._train_batches == 2  # batch 1: D only; batch 2: D + G
    # One pass per BatchNorm layer: the G step's parse of the real images. The two D steps parse without
    # gradients in eval mode; no pass parses a fake.
    assert _tracked(module.segmenter) - before == len(norms)
    assert module.segmenter.training  # the mode is restored after the eval-mode passes


def test_segment_without_grad_restores_the_mode_and_keeps_statistics(pair_batches):
    module = tiny_joint_module(SIZE, task="manipulate").train()
    running = [b.clone() for name, b in module.segmenter.named_buffers() if "running" in name]
    module._segment(pair_batches[0]["image"], with_grad=False)
    assert module.segmenter.training
    assert all(torch.equal(a, b) for a, b in zip(running, [b for n, b in module.segmenter.named_buffers()
                                                            if "running" in n]))


def test_critics_crop_at_detached_boxes_and_fakes_are_not_reparsed(pair_batches, monkeypatch):
    module = tiny_joint_module(SIZE, task="both")
    batch = pair_batches[0]
    seen = []
    real_crop = objectives_module.crop
    monkeypatch.setattr(objectives_module, "crop",
                        lambda images, boxes, size: seen.append(boxes.requires_grad) or real_crop(images, boxes, size))
    calls = []
    module.segmenter.register_forward_hook(lambda *args: calls.append(1))
    region_kwargs, _ = module._region_inputs(batch["image"], None, with_grad=True)
    assert region_kwargs["region_masks"].requires_grad
    targets = module._sample_manipulation_targets(batch)
    code_source = module.coder.from_image(batch["image"])
    out = module.generator(batch["image"], code_source, **region_kwargs)
    assert out.boxes.requires_grad  # the generator's own crops do move with the masks
    loss = (module.objectives.manipulation_loss(batch, targets, region_kwargs, code_source).total
            + module.objectives.transfer_loss(batch, region_kwargs, code_source).total)
    assert seen and not any(seen)  # every critic crop used detached boxes
    assert len(calls) == 1  # the source's parse only: cycle and swap-back reuse it
    loss.backward()  # gradients still reach the segmenter, through the masks conditioning the generator
    assert sum(float(p.grad.abs().sum()) for p in module.segmenter.parameters() if p.grad is not None) > 0


def test_swap_consistency_ignores_the_expression_and_au_heads(pair_batches):
    # A swap carries the reference's expression: only the real/fake statistics are matched, so the term does not
    # depend on the critic's expression or AU heads.
    module = tiny_joint_module(SIZE, task="transfer")
    batch = pair_batches[0]
    region_kwargs, _ = module._region_inputs(batch["image"], None, with_grad=False)
    code_source = module.coder.from_image(batch["image"])

    def swap_stats():
        torch.manual_seed(0)
        with torch.no_grad():
            return module.objectives.transfer_loss(batch, region_kwargs, code_source).terms["transfer/swap_stats"]

    before = swap_stats()
    critic = module.discriminator.global_d
    with torch.no_grad():
        for head in (critic.expression_head, critic.au_head):
            for p in head.parameters():
                p.add_(torch.randn_like(p))
    assert torch.equal(swap_stats(), before)
    with torch.no_grad():
        for p in critic.adv_head.parameters():
            p.add_(torch.randn_like(p))
    assert not torch.equal(swap_stats(), before)  # the real/fake statistics do count


def test_each_image_is_encoded_once_per_step(pair_batches):
    # task="both", n_critic=1: the G step encodes the sources once (edit, self-reconstruction, swap) plus each
    # fake its cycle runs on (the edit and the swap); the D step reuses the G step's fakes and feature.
    module = tiny_joint_module(SIZE, task="both", n_critic=1, ema_decay=None)
    sizes = []
    module.generator.global_generator.encoder.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    pl.Trainer(max_epochs=1, limit_train_batches=1, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0
               ).fit(module, DataLoader(pair_batches, batch_size=None))
    # G step: the sources, then the edit and the swap as one batch (their cycles run as one call); D step: none
    assert sizes == [4, 8]


def test_the_critic_step_reuses_the_generator_steps_fakes(pair_batches):
    # n_critic=2 over two batches: batch 1 is a critic-only step that generates its two fakes (edit, swap) without
    # gradients; batch 2 makes the generator step (edit + cycle, self-reconstruction + swap + swap-back = 5
    # passes) and its critic step judges those same fakes, detached, instead of generating them again.
    module = tiny_joint_module(SIZE, task="both", n_critic=2, ema_decay=None)
    calls, judged = [], []
    module.generator.register_forward_hook(lambda m, i, o: calls.append((module._train_batches, o.image.detach().clone())))
    module.discriminator.global_d.register_forward_hook(
        lambda m, i, o: judged.append((module._train_batches, torch.is_grad_enabled(), i[0].detach().clone())))
    pl.Trainer(max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0
               ).fit(module, DataLoader(pair_batches, batch_size=None))
    # batch 1: one call for its two fakes; batch 2: one call for edit, self-reconstruction and swap, one for the
    # cycle and the swap-back (segexpr.gan.passes)
    assert [b for b, _ in calls] == [0, 1, 1]
    edit, swap = calls[1][1][:4], calls[1][1][8:]
    # critic step of batch 2: real, edit and swap, concatenated into one call (GANObjectives._critic_calls)
    critic_inputs = [x for b, grad, x in judged if b == 1 and grad]

    def judged_as_block(fakes):
        return any(torch.equal(x[i:i + len(fakes)], fakes) for x in critic_inputs for i in range(0, len(x), len(fakes)))

    assert judged_as_block(edit) and judged_as_block(swap)


def test_generator_reuses_given_features(pair_batches):
    module = tiny_joint_module(SIZE, task="manipulate").eval()
    images = pair_batches[0]["image"]
    region_kwargs, _ = module._region_inputs(images, None, with_grad=False)
    code = module.coder.from_label(torch.tensor([1, 2, 3, 4]))
    with torch.no_grad():
        plain = module.generator(images, code, **region_kwargs)
        reused = module.generator(images, code, **region_kwargs, au_free=module.generator.encode(images))
    assert torch.equal(plain.image, reused.image)
