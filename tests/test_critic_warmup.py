"""``critic_warmup_steps``: the first batches train the critic's expression / AU heads on real images only.

In the unpaired setting the generator learns expressions only through the critic's heads; trained from scratch
beside the adversarial game they stay near chance for hundreds of batches (docs/results.md, issue 17). The
warm-up makes no fakes and touches only the critic's global trunk and heads.
"""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segexpr.data.synthetic import SyntheticFaces
from tiny import tiny_joint_module

SIZE = 32


@pytest.fixture(scope="module")
def batches():
    return list(DataLoader(SyntheticFaces(size=SIZE, length=32, seed=0, pairs=True, identities=8), batch_size=8))


def _fit(module, batches, n):
    pl.Trainer(max_epochs=1, limit_train_batches=n, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, accelerator="cpu"
               ).fit(module, DataLoader(batches, batch_size=None))


def _snapshot(network):
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def _changed(before, network):
    return {k for k, v in network.state_dict().items() if not torch.equal(before[k], v)}


def test_warmup_batches_train_only_the_critics_heads_and_make_no_fakes(batches):
    torch.manual_seed(0)
    module = tiny_joint_module(SIZE, task="both", critic_warmup_steps=3, ema_decay=None)
    generator_calls = []
    module.generator.register_forward_hook(lambda *args: generator_calls.append(1))
    generator, critic, segmenter = (_snapshot(m) for m in (module.generator, module.discriminator, module.segmenter))
    _fit(module, batches[:3], 3)
    assert module._train_batches == 3
    assert not generator_calls and not _changed(generator, module.generator)
    assert not _changed(segmenter, module.segmenter)  # no segmenter warm-up asked for
    changed = _changed(critic, module.discriminator)
    assert any(k.startswith("global_d.trunk") for k in changed)
    assert any(k.startswith("global_d.expression_head") for k in changed)
    assert any(k.startswith("global_d.au_head") for k in changed)
    # No adversarial term, no local critic, no feature classifier: those are the GAN's, after the warm-up.
    assert not any(k.startswith(("global_d.adv_head", "local_d", "feature_classifier")) for k in changed)
    # The fourth batch is a GAN batch again: the generator runs.
    _fit(module, batches[3:4], 1)
    assert generator_calls and module._train_batches == 4


def test_the_warmup_teaches_the_critic_the_expressions(batches):
    """Cross-entropy of the critic's expression head on held-out real faces falls with the warm-up."""
    held_out = next(iter(DataLoader(SyntheticFaces(size=SIZE, length=64, seed=1, split="test"), batch_size=64)))

    def critic_ce(module):
        with torch.no_grad():
            logits = module.discriminator.global_d(held_out["image"])["expression"]
        return float(torch.nn.functional.cross_entropy(logits, held_out["expression"]))

    torch.manual_seed(0)
    critic = {"base_channels": 16, "n_layers": 3, "local_channels": 8, "local_n_layers": 2, "feature_hidden": 16}
    warmed = tiny_joint_module(SIZE, task="manipulate", critic_warmup_steps=100, lr=1e-3, ema_decay=None,
                               discriminator=critic)
    start = critic_ce(warmed)
    train = list(DataLoader(SyntheticFaces(size=SIZE, length=800, seed=0, split="train"), batch_size=8))
    _fit(warmed, train, 100)
    assert warmed._train_batches == 100
    assert critic_ce(warmed) < start - 0.25, (start, critic_ce(warmed))


def test_both_warmups_share_the_batches_and_the_gan_starts_after_the_longer(batches):
    torch.manual_seed(0)
    module = tiny_joint_module(SIZE, task="manipulate", critic_warmup_steps=1, segmenter_warmup_steps=2,
                               ema_decay=None)
    calls = {"generator": 0, "critic": 0, "segmenter": 0}
    module.generator.register_forward_hook(lambda *a: calls.__setitem__("generator", calls["generator"] + 1))
    module.discriminator.global_d.register_forward_hook(lambda *a: calls.__setitem__("critic", calls["critic"] + 1))
    module.segmenter.register_forward_hook(lambda *a: calls.__setitem__("segmenter", calls["segmenter"] + 1))
    _fit(module, batches[:2], 2)
    # batch 1: parsing step + critic step; batch 2: parsing step only (critic warm-up over, parser still warming)
    assert calls == {"generator": 0, "critic": 1, "segmenter": 2}


def test_bad_critic_warmup_values_and_unlabelled_data_are_refused(batches):
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="critic_warmup_steps"):
            tiny_joint_module(SIZE, critic_warmup_steps=bad)
    module = tiny_joint_module(SIZE, task="transfer", critic_warmup_steps=2, ema_decay=None)
    unlabelled = [{k: v for k, v in b.items() if k not in ("expression", "aus")} for b in batches[:1]]
    with pytest.raises(KeyError, match="critic_warmup_steps > 0 needs batches with 'expression' or 'aus'"):
        _fit(module, unlabelled, 1)
