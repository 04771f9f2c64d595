"""The GAN's optimisers are torch's fused Adam where torch allows it, and the same Adam as the default."""
from __future__ import annotations

import pytest
import torch

from segexpr.gan.stepping import adam, gan_optimizers
from tiny import tiny_joint_module


def test_joint_module_optimisers_are_fused_on_a_cpu():
    module = tiny_joint_module(32, task="both")
    optimizers = gan_optimizers(module.discriminator, module.generator, module.coder, module.segmenter,
                                transfer=True, lr=1e-4, betas=(0.5, 0.999), segmenter_lr=1e-3)
    assert set(optimizers) == {"discriminator", "feature_classifier", "generator"}
    for name, optimizer in optimizers.items():
        assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["fused"], name
    assert [g["lr"] for g in optimizers["generator"].param_groups] == [1e-4, 1e-3]  # the segmenter's own group


@pytest.mark.parametrize("adamw", [False, True])
def test_fused_update_equals_the_default_update(adamw):
    torch.manual_seed(0)
    start = [torch.randn(16, 8), torch.randn(8)]
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        optimizer = adam(params, adamw=adamw, lr=1e-2, betas=(0.5, 0.999)) if fused else (
            (torch.optim.AdamW if adamw else torch.optim.Adam)(params, lr=1e-2, betas=(0.5, 0.999)))
        assert bool(optimizer.defaults.get("fused")) == fused
        for step in range(5):
            optimizer.zero_grad()
            loss = sum((p * (step + 1)).sin().sum() for p in params)
            loss.backward()
            optimizer.step()
        results.append(params)
    for fused_param, plain_param in zip(*results):
        assert not torch.equal(fused_param, start[0] if fused_param.dim() == 2 else start[1])  # it trained
        torch.testing.assert_close(fused_param, plain_param, rtol=1e-5, atol=1e-6)


def test_parameters_without_fused_kernels_fall_back_to_the_default(monkeypatch):
    calls = []

    class NoFused(torch.optim.Adam):
        def __init__(self, params, **kwargs):
            calls.append(kwargs.get("fused"))
            if kwargs.get("fused"):
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                   "supported devices")
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", NoFused)
    optimizer = adam([torch.nn.Parameter(torch.randn(3))], lr=1e-3)
    assert calls == [True, None] and not optimizer.defaults["fused"]
