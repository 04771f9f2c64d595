"""Mixed precision (bf16-mixed, 16-mixed) with manual optimisation and the gradient penalty; non-finite losses;
optional torch.compile. CPU-only here: the GPU-specific paths are listed in docs/scaling.md."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
from pytorch_lightning.plugins.precision import MixedPrecision
import torch
from torch.utils.data import DataLoader

from segexpr.data.synthetic import SyntheticFaces
from segexpr.losses.gan import gradient_penalty
from segexpr.modules.joint import JointModule
from tiny import tiny_joint_module

SIZE = 32


def tiny(**kwargs) -> JointModule:
    return tiny_joint_module(SIZE, **kwargs)


@pytest.fixture(scope="module")
def batches():
    dataset = SyntheticFaces(size=SIZE, length=8, seed=0, pairs=True, identities=4)
    return list(DataLoader(dataset, batch_size=4))


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


def fit(module: JointModule, batches, precision: str, **trainer_kwargs) -> LossRecorder:
    recorder = LossRecorder()
    if precision == "16-mixed":
        # Lightning maps Trainer(accelerator="cpu", precision="16-mixed") to bf16-mixed; pass the plugin to run
        # real fp16 autocast with a GradScaler on CPU (the GPU path is the same plugin with device="cuda").
        trainer_kwargs["plugins"] = [MixedPrecision("16-mixed", device="cpu",
                                                    scaler=torch.amp.GradScaler("cpu", init_scale=2.0 ** 12))]
        precision = None
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=precision, max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[recorder], **trainer_kwargs)
    trainer.fit(module, DataLoader(batches, batch_size=None))
    recorder.trainer = trainer
    return recorder


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_with_finite_losses(batches, precision):
    torch.manual_seed(0)
    module = tiny(task="both")
    before = {k: v.clone() for k, v in module.state_dict().items() if v.is_floating_point()}
    recorder = fit(module, batches, precision)
    plugin = recorder.trainer.precision_plugin
    assert isinstance(plugin, MixedPrecision) and plugin.precision == precision
    assert (plugin.scaler is not None) == (precision == "16-mixed")
    assert len(recorder.losses) == len(batches)
    for step in recorder.losses:
        assert {"train/d_loss", "train/g_loss", "train/d_gp", "train/fc_loss"} <= step.keys()
        assert all(math.isfinite(v) for v in step.values()), step
    # weights stay float32 (autocast, not a cast of the model) and every part trained
    for prefix in ("generator.", "discriminator.global_d.", "discriminator.local_d.", "segmenter.", "coder."):
        changed = [k for k, v in module.state_dict().items() if k.startswith(prefix) and v.is_floating_point()
                   and not torch.equal(v, before[k])]
        assert changed, f"{prefix} did not train under {precision}"
    assert all(p.dtype == torch.float32 for p in module.parameters())


def test_double_precision_trains_every_part_in_float64(batches):
    # "64-true" casts the weights and the batch's float tensors to float64; labels that the code turns into
    # floats (AU targets, the penalty's interpolation) must follow the weights instead of staying float32
    torch.manual_seed(0)
    module = tiny(task="both")
    recorder = fit(module, batches, "64-true")
    assert all(p.dtype == torch.float64 for p in module.parameters())
    assert len(recorder.losses) == len(batches)
    for step in recorder.losses:
        assert {"train/d_loss", "train/g_loss", "train/d_gp"} <= step.keys()
        assert all(math.isfinite(v) for v in step.values()), step


def test_gradient_penalty_keeps_float64():
    critic = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 2, 1), torch.nn.LeakyReLU(0.2),
                                 torch.nn.Conv2d(8, 1, 3, 1, 1)).double()
    real, fake = torch.randn(4, 3, SIZE, SIZE, dtype=torch.float64), torch.randn(4, 3, SIZE, SIZE, dtype=torch.float64)
    assert gradient_penalty(critic, real, fake).dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gradient_penalty_is_float32_under_autocast(dtype):
    torch.manual_seed(0)
    critic = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 4, 2, 1), torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(8, 1, 3, 1, 1))
    real, fake = torch.randn(4, 3, SIZE, SIZE), torch.randn(4, 3, SIZE, SIZE)
    alpha = torch.rand(4)
    reference = gradient_penalty(critic, real, fake, alpha=alpha)
    with torch.autocast("cpu", dtype=dtype):
        mixed = gradient_penalty(critic, real, fake, alpha=alpha)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, reference, rtol=0.05, atol=1e-3)


def test_non_finite_loss_names_the_step_and_the_loss(batches):
    module = tiny(task="manipulate", region_source="none", segmenter=False)
    poisoned = [dict(b) for b in batches]
    poisoned[1]["image"] = poisoned[1]["image"].clone()
    poisoned[1]["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError) as info:
        fit(module, poisoned, "32-true")
    message = str(info.value)
    # n_critic=1: every batch makes the generator step first, which meets the NaN pixel first
    assert "non-finite generator loss" in message
    assert "global step 2" in message and "training batch 1" in message  # batch 0 made a G and a D step
    assert "adv" in message


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_flag_builds_and_trains(batches, backend):
    torch.manual_seed(0)
    module = tiny(task="manipulate", compile=backend)
    recorder = fit(module, batches[:1], "32-true")
    assert module._compiled
    assert all(math.isfinite(v) for v in recorder.losses[0].values())
    # in-place compilation keeps the state-dict keys (checkpoints load into uncompiled modules)
    assert not any("_orig_mod" in k for k in module.state_dict())


def test_invalid_compile_option_is_rejected():
    with pytest.raises(ValueError, match="compile must be a bool or a torch.compile backend name"):
        tiny(compile=3)
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        tiny(compile="aot_eager", compile_mode="fast")
    with pytest.raises(ValueError, match="compile_mode='reduce-overhead' needs compile"):
        tiny(compile_mode="reduce-overhead")


def test_compile_mode_reaches_torch_compile(monkeypatch):
    """``compile_mode`` is handed to every network's ``torch.compile`` with the backend."""
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kwargs: calls.append((type(self).__name__, kwargs)))
    module = tiny(task="manipulate", compile="aot_eager", compile_mode="max-autotune-no-cudagraphs")
    module.configure_model()
    assert calls and all(kwargs == {"backend": "aot_eager", "mode": "max-autotune-no-cudagraphs"}
                         for _, kwargs in calls)
    assert {name for name, _ in calls} >= {type(module.generator).__name__, type(module.discriminator).__name__}
