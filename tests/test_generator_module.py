"""GeneratorModule trains alone as a self-reconstruction autoencoder; its val/predict paths work."""
import math

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segexpr.data.synthetic import SyntheticFaces
from segexpr.models.generators import ExpressionCoder
from segexpr.gan.objectives import image_code_loss
from segexpr.modules.generator import GeneratorModule, generator_region_inputs

SIZE = 32


@pytest.fixture(scope="module")
def batches():
    return list(DataLoader(SyntheticFaces(size=SIZE, length=8, seed=0, identities=4), batch_size=4))


def tiny(region_source="segmenter", **kwargs):
    return GeneratorModule(
        generator_kwargs={"region_source": region_source, "base_channels": 8, "n_down": 2, "n_res": 1,
                          "local_channels": 8, "local_n_res": 1, "crop_size": 16},
        coder_kwargs={"code_dim": 16, "base_channels": 8, "n_down": 2}, **kwargs)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="lr must be > 0"):
        tiny(lr=0.0)
    with pytest.raises(ValueError, match="lambda_rec must be >= 0"):
        tiny(lambda_rec=-1.0)
    with pytest.raises(ValueError, match="region_source"):
        tiny(region_source="keypoints")
    with pytest.raises(ValueError, match="code_dim"):
        GeneratorModule(generator_kwargs={"code_dim": 8}, coder_kwargs={"code_dim": 16})


def test_region_inputs_from_batch_labels(batches):
    batch = batches[0]
    seg = generator_region_inputs(tiny("segmenter").generator, batch)
    assert seg["region_masks"].shape == (4, 4, SIZE, SIZE) and set(seg["region_masks"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(generator_region_inputs(tiny("landmarks").generator, batch)["landmarks"], batch["landmarks"])
    with pytest.raises(KeyError, match="mask"):
        generator_region_inputs(tiny("segmenter").generator, {"image": batch["image"]})


def test_image_code_loss_by_hand():
    coder = ExpressionCoder(code_dim=4, base_channels=4, n_down=1)
    images = torch.zeros(2, 3, 8, 8)
    code = coder.from_image(images)
    assert image_code_loss(coder, code, {"image": images}).item() == 0.0  # no labels -> nothing to supervise
    aus = torch.rand(2, 17)
    expected = (torch.nn.functional.mse_loss(coder.to_aus(code), aus)
                + torch.nn.functional.mse_loss(code, coder.from_aus(aus)))
    assert image_code_loss(coder, code, {"aus": aus}).item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("region_source", ["segmenter", "landmarks", "none"])
def test_trains_alone_and_reconstruction_improves(batches, region_source):
    module = tiny(region_source, lr=2e-3)
    batch = batches[0]
    with torch.no_grad():
        before = module._losses(batch)[1]["recon_l1"].item()
    params = [p.detach().clone() for p in module.parameters()]
    trainer = pl.Trainer(max_steps=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=1)
    trainer.fit(module, DataLoader(batches[:1] * 1, batch_size=None), DataLoader(batches[1:], batch_size=None))
    assert any(not torch.equal(p, q) for p, q in zip(params, module.parameters()))
    with torch.no_grad():
        after = module._losses(batch)[1]["recon_l1"].item()
    assert after < before, (before, after)
    metrics = trainer.callback_metrics
    assert math.isfinite(float(metrics["val/recon_l1"])) and float(metrics["val/psnr"]) > 0
    assert 0 <= float(metrics["val/code_au_mae"]) <= 1
    predictions = trainer.predict(module, DataLoader(batches[1:], batch_size=None))
    assert predictions[0].shape == batches[1]["image"].shape
    assert predictions[0].min() >= -1 and predictions[0].max() <= 1


def test_exponential_moving_average_with_warmup():
    from segexpr.modules.ema import ExponentialMovingAverage

    live = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        live.weight.fill_(0.0)
    ema = ExponentialMovingAverage({"net": live}, decay=0.9)
    assert not ema.initialized
    ema.update({"net": live})  # first update copies
    assert ema.initialized and ema["net"].weight.item() == 0.0
    with torch.no_grad():
        live.weight.fill_(1.0)
    ema.update({"net": live})  # n=1: decay min(0.9, 2/11)
    assert ema["net"].weight.item() == pytest.approx(1 - 2 / 11)
    assert not ema["net"].weight.requires_grad
    plain = ExponentialMovingAverage({"net": torch.nn.Linear(1, 1, bias=False)}, decay=0.9, warmup=False)
    plain.update({"net": live})
    with torch.no_grad():
        live.weight.fill_(2.0)
    plain.update({"net": live})
    assert plain["net"].weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage({"net": live}, decay=1.0)
    state = ema.state_dict()
    assert any(key.endswith("n_averaged") for key in state)


def test_ema_updates_match_averaged_model_without_reading_the_device():
    # The EMA's own update equals torch's AveragedModel.update_parameters with the same average function, reads no
    # scalar from the device (no host synchronisation on a GPU) and resumes its warm-up count from a state_dict.
    from torch.optim.swa_utils import AveragedModel
    from torch.utils._python_dispatch import TorchDispatchMode

    from segexpr.modules.ema import ExponentialMovingAverage

    class ScalarReads(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ScalarReads.count += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    # (torch's update cannot lerp BatchNorm's integer num_batches_tracked: compare on running statistics only)
    live = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    live[1].register_buffer("num_batches_tracked", None)
    ema = ExponentialMovingAverage({"net": live}, decay=0.9)
    reference = AveragedModel(torch.nn.ModuleDict({"net": live}), multi_avg_fn=ema._warmup_multi_avg, use_buffers=True)
    for _ in range(5):
        with torch.no_grad():
            for p in live.parameters():
                p.add_(torch.randn_like(p))
        live(torch.randn(8, 3))  # BatchNorm running statistics change too
        with ScalarReads():
            ema.update({"net": live})
        reference.update_parameters(torch.nn.ModuleDict({"net": live}))
    assert ScalarReads.count == 0
    for a, b in zip(ema.averaged.state_dict().values(), reference.state_dict().values()):
        torch.testing.assert_close(a, b)
    restored = ExponentialMovingAverage({"net": live}, decay=0.9)
    restored.load_state_dict(ema.state_dict())
    restored.update({"net": live})
    ema.update({"net": live})  # the 6th update's warm-up decay on both
    for a, b in zip(restored.state_dict().values(), ema.state_dict().values()):
        torch.testing.assert_close(a, b)
    # An integer buffer (BatchNorm's batch counter) follows the live module instead of failing the update.
    counted = torch.nn.BatchNorm1d(2)
    ema = ExponentialMovingAverage({"net": counted}, decay=0.9)
    for _ in range(3):
        counted(torch.randn(4, 2))
        ema.update({"net": counted})
    assert int(ema["net"].num_batches_tracked) == 3
