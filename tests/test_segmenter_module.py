"""SegmenterModule: training/validation/predict through Lightning, logging, overfitting SynthFACS, CLI."""
from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from torch.utils.data import DataLoader, Dataset

from segexpr.data.labels import CELEBAMASK_HQ_CLASSES
from segexpr.modules.segmenter import SegmenterModule

SMALL = {
    "bisenet": dict(backbone_width=8, context_channels=16, fusion_channels=16),
    "unet": dict(base_channels=8, depth=3),
}
REPO = Path(__file__).resolve().parents[1]


class _Blobs(Dataset):
    """Deterministic toy parsing data: a coloured square (class 1) and disc (class 10) on background."""

    def __init__(self, n: int = 8, size: int = 32) -> None:
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        s = self.size
        mask = torch.zeros(s, s, dtype=torch.long)
        x0, y0 = torch.randint(0, s // 2, (2,), generator=g).tolist()
        mask[y0:y0 + s // 3, x0:x0 + s // 3] = 1
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        cy, cx = torch.randint(s // 4, 3 * s // 4, (2,), generator=g).tolist()
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < (s // 6) ** 2] = 10
        colours = torch.tensor([[-0.8, -0.8, -0.8], [0.6, 0.2, -0.2]] + [[0.0, 0.0, 0.0]] * 8 + [[-0.2, 0.7, 0.9]]
                               + [[0.0, 0.0, 0.0]] * 8)
        image = colours[mask].permute(2, 0, 1) + 0.05 * torch.randn(3, s, s, generator=g)
        return {"image": image.float(), "mask": mask}


def _loaders(n=8, size=32, batch_size=4):
    return DataLoader(_Blobs(n, size), batch_size=batch_size), DataLoader(_Blobs(n, size), batch_size=batch_size)


def _trainer(tmp_path, **kw):
    defaults = dict(accelerator="cpu", devices=1, max_steps=2, limit_val_batches=1, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, default_root_dir=str(tmp_path),
                    logger=CSVLogger(str(tmp_path), name="csv"), num_sanity_val_steps=0)
    defaults.update(kw)
    return pl.Trainer(**defaults)


@pytest.mark.parametrize("arch,loss", [("bisenet", "ohem_ce"), ("unet", "ohem_ce+dice"), ("bisenet", "ce")])
def test_fit_logs_metrics_and_png_overlays(arch, loss, tmp_path):
    module = SegmenterModule(arch=arch, loss=loss, segmenter_kwargs=SMALL[arch], num_overlays=2)
    train, val = _loaders()
    trainer = _trainer(tmp_path, val_check_interval=2)
    trainer.fit(module, train, val)
    logged = trainer.logged_metrics
    assert {"train/loss", "val/loss", "val/miou", "val/mean_f1", "val/pixel_accuracy"} <= set(logged)
    assert "val/f1_skin" in logged and "val/f1_nose" in logged and "val/f1_background" in logged
    assert ("train/loss_aux" in logged) == (arch == "bisenet")
    assert 0.0 <= float(logged["val/miou"]) <= 1.0
    pngs = list(Path(trainer.logger.log_dir).glob("overlays/val_step*.png"))
    assert len(pngs) == 1


def test_overlays_go_to_wandb_and_tensorboard(tmp_path):
    calls = []

    class FakeWandb(WandbLogger):
        def __init__(self):  # no wandb run is created
            pass

        def log_image(self, key, images, step=None, **kwargs):
            calls.append(("wandb", key, images[0].shape, step))

    class _Writer:
        def add_image(self, tag, img, global_step=None):
            calls.append(("tb", tag, img.shape, global_step))

    class FakeTB(TensorBoardLogger):
        def __init__(self):
            pass

        @property
        def experiment(self):
            return _Writer()

    module = SegmenterModule(arch="unet", segmenter_kwargs=SMALL["unet"])
    module.trainer = pl.Trainer(logger=False, default_root_dir=str(tmp_path), enable_progress_bar=False)
    module.trainer.loggers = [FakeWandb(), FakeTB()]
    images, mask = torch.rand(2, 3, 16, 16) * 2 - 1, torch.randint(0, 19, (2, 16, 16))
    module._log_overlays(images, mask, mask)
    assert [c[:2] for c in calls] == [("wandb", "val/overlays"), ("tb", "val/overlays")]
    assert calls[0][2] == (3, 2 * 18 + 2, 3 * 18 + 2)  # 2 rows x (image | target | prediction), 2 px padding
    assert not list(Path(tmp_path).rglob("*.png"))


def test_predict_returns_class_maps(tmp_path):
    module = SegmenterModule(arch="unet", segmenter_kwargs=SMALL["unet"])
    trainer = _trainer(tmp_path, logger=False)
    preds = trainer.predict(module, DataLoader(_Blobs(3, 24), batch_size=2))
    assert [p.shape for p in preds] == [(2, 24, 24), (1, 24, 24)]
    assert all(p.dtype == torch.int64 for p in preds)
    assert module.predict_step(torch.zeros(1, 3, 20, 30), 0).shape == (1, 20, 30)


def test_poly_schedule_reaches_zero_at_max_steps(tmp_path):
    module = SegmenterModule(arch="unet", optimizer="sgd", lr=0.1, warmup_steps=2,
                             segmenter_kwargs=SMALL["unet"])
    train, _ = _loaders(n=16)
    lrs = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = _trainer(tmp_path, max_steps=6, logger=False, callbacks=[Record()], limit_val_batches=0)
    trainer.fit(module, train)
    expected = [0.1 * 0.5, 0.1 * 1.0] + [0.1 * (1 - s / 6) ** 0.9 for s in range(2, 6)]
    assert lrs == pytest.approx(expected)
    assert isinstance(trainer.optimizers[0], torch.optim.SGD)
    assert trainer.optimizers[0].param_groups[1]["weight_decay"] == 0.0  # norms and biases are not decayed


def test_overfits_synthfaces():
    """A narrow BiSeNet learns 4 SynthFACS images at 48 px in 80 steps (from ~5% to > 95% pixel accuracy)."""
    synthetic = pytest.importorskip("segexpr.data.synthetic")
    ds = synthetic.SyntheticFaces(size=48, length=4, seed=0, split="train")
    batch = {k: torch.stack([torch.as_tensor(ds[i][k]) for i in range(4)]) for k in ("image", "mask")}
    module = SegmenterModule(arch="bisenet", loss="ce", aux_weight=0.0, scheduler="none", segmenter_kwargs=dict(
        backbone_width=16, context_channels=32, fusion_channels=64, spatial_stride=4))
    opt = torch.optim.Adam(module.segmenter.parameters(), lr=1e-2)

    def evaluate() -> tuple[float, float]:
        module.segmenter.eval()
        with torch.no_grad():
            preds = module(batch["image"]).argmax(1)
        module.val_metrics.reset()
        module.val_metrics.update(preds, batch["mask"])
        return (preds == batch["mask"]).float().mean().item(), module.val_metrics.compute()["miou"].item()

    accuracy_before, _ = evaluate()
    for _ in range(80):
        module.segmenter.train()
        opt.zero_grad()
        module.training_step(batch, 0).backward()
        opt.step()
    accuracy, miou = evaluate()
    assert accuracy_before < 0.5
    assert accuracy > 0.95, accuracy
    assert miou > 0.7, miou


def test_cli_fit_with_example_config(tmp_path, monkeypatch):
    pytest.importorskip("segexpr.data.synthetic")
    from segexpr.cli import lightning_cli

    monkeypatch.setattr("sys.argv", ["segexpr"])
    config = REPO / "examples" / "configs" / "segmenter_synthetic.yaml"
    cli = lightning_cli(args=[
        "fit", "--config", str(config), "--trainer.max_steps", "2", "--trainer.limit_val_batches", "1",
        "--trainer.val_check_interval", "2", "--trainer.default_root_dir", str(tmp_path),
        "--trainer.logger", "false", "--trainer.enable_checkpointing", "false", "--trainer.callbacks", "[]",
        "--data.init_args.size", "32", "--data.init_args.train_length", "8", "--data.init_args.val_length", "4",
        "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
        "--model.init_args.segmenter_kwargs", '{"backbone_width": 8, "context_channels": 16, "fusion_channels": 16}',
    ])
    assert isinstance(cli.model, SegmenterModule)
    assert cli.trainer.global_step == 2
    assert "val/miou" in cli.trainer.logged_metrics


def test_celebamask_config_parses(tmp_path, monkeypatch):
    pytest.importorskip("segexpr.data.celebamask_hq")
    from segexpr.cli import lightning_cli
    from segexpr.models.segmenters.bisenet import RESNET18_FILENAME, resnet18_backbone

    # the config asks for ImageNet weights from the torch hub cache: provide a stand-in file there
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(resnet18_backbone(64).state_dict(), cache / RESNET18_FILENAME)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["segexpr"])
    config = REPO / "examples" / "configs" / "segmenter_celebamask_hq.yaml"
    monkeypatch.chdir(tmp_path)
    # the GPU settings are overridden so the config can be instantiated on a CPU-only machine
    cli = lightning_cli(args=["--config", str(config), "--trainer.accelerator", "cpu",
                              "--trainer.precision", "32-true"], run=False)
    assert isinstance(cli.model, SegmenterModule)
    assert cli.model.hparams.arch == "bisenet" and cli.datamodule.image_size == 512
    assert cli.model.hparams.optimizer == "sgd" and cli.trainer.max_steps == 80000
    assert type(cli.trainer.logger).__name__ == "WandbLogger"


def test_sync_batchnorm_conversion_keeps_outputs():
    module = SegmenterModule(arch="bisenet", segmenter_kwargs=SMALL["bisenet"]).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    ref = module(x)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)  # what Trainer(sync_batchnorm=True) does
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    torch.testing.assert_close(converted.eval()(x), ref)


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="unknown arch 'deeplab'"):
        SegmenterModule(arch="deeplab")
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        SegmenterModule(loss="focal")
    with pytest.raises(ValueError, match="unknown optimizer 'adam8'"):
        SegmenterModule(optimizer="adam8")
    with pytest.raises(ValueError, match="lr must be > 0"):
        SegmenterModule(lr=0.0)
    with pytest.raises(ValueError, match="aux_weight"):
        SegmenterModule(aux_weight=-1)
    with pytest.raises(ValueError, match="num_classes"):
        SegmenterModule(arch="unet", num_classes=1)
    module = SegmenterModule(arch="unet", segmenter_kwargs=SMALL["unet"])
    with pytest.raises(KeyError, match="mask"):
        module.training_step({"image": torch.zeros(1, 3, 16, 16)}, 0)
    with pytest.raises(ValueError, match="does not match"):
        module.training_step({"image": torch.zeros(1, 3, 16, 16), "mask": torch.zeros(1, 8, 8, dtype=torch.long)}, 0)
    assert module.class_names == CELEBAMASK_HQ_CLASSES


def test_pretrained_checkpoint_initialises_the_segmenter(tmp_path):
    import pytorch_lightning as pl

    from segexpr.io import CheckpointError

    source = SegmenterModule(arch="unet", segmenter_kwargs={"base_channels": 8, "depth": 2})
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, max_steps=0)
    trainer.strategy.connect(source)
    trainer.save_checkpoint(tmp_path / "seg.ckpt")
    target = SegmenterModule(arch="unet", segmenter_kwargs={"base_channels": 8, "depth": 2},
                             pretrained=str(tmp_path / "seg.ckpt"))
    for a, b in zip(source.segmenter.state_dict().values(), target.segmenter.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="does not fit"):
        SegmenterModule(arch="unet", segmenter_kwargs={"base_channels": 16, "depth": 2},
                        pretrained=str(tmp_path / "seg.ckpt"))
    with pytest.raises(CheckpointError, match="not found"):
        SegmenterModule(arch="unet", pretrained=str(tmp_path / "missing.ckpt"))
