"""Train a face parser in Python: the script equivalent of ``examples/configs/segmenter_synthetic.yaml``.

    python examples/train_segmenter.py --arch bisenet --max-steps 3000
    python examples/train_segmenter.py --arch bisenet --celebamask-root /data/CelebAMask-HQ --accelerator gpu \
        --devices 4 --size 512 --batch-size 16 --max-steps 80000

After training, the test split is evaluated (mIoU and per-class F1) and the segmenter is exported to ONNX.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from segexpr.inference import to_onnx
from segexpr.modules.segmenter import SegmenterModule

WIDTHS = {  # CPU-sized defaults for SynthFACS; pass --full-width for the standard sizes
    "bisenet": {"backbone_width": 16, "context_channels": 32, "fusion_channels": 64, "spatial_stride": 4},
    "unet": {"base_channels": 8, "depth": 4},
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="bisenet", choices=sorted(WIDTHS))
    parser.add_argument("--full-width", action="store_true", help="standard widths (BiSeNet = face-parsing size)")
    parser.add_argument("--celebamask-root", default=None, help="train on CelebAMask-HQ instead of SynthFACS")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    parser.add_argument("--loss", default="ohem_ce", choices=["ce", "ohem_ce", "ohem_ce+dice"])
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--devices", default="auto")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--out", default="lightning_logs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed)
    module = SegmenterModule(arch=args.arch, loss=args.loss, lr=args.lr, optimizer=args.optimizer, warmup_steps=20,
                             segmenter_kwargs={} if args.full_width else WIDTHS[args.arch])
    if args.celebamask_root:
        from segexpr.data.celebamask_hq import CelebAMaskHQDataModule
        data = CelebAMaskHQDataModule(root=args.celebamask_root, image_size=args.size, batch_size=args.batch_size,
                                      num_workers=args.num_workers, seed=args.seed)
    else:
        from segexpr.data.synthetic import SyntheticFacesDataModule
        data = SyntheticFacesDataModule(size=args.size, train_length=2000, val_length=100, test_length=200,
                                        seed=args.seed, batch_size=args.batch_size, num_workers=args.num_workers)
    logger = CSVLogger(args.out, name=f"segmenter_{args.arch}")
    trainer = pl.Trainer(accelerator=args.accelerator, devices=args.devices, max_steps=args.max_steps,
                         val_check_interval=min(250, args.max_steps), check_val_every_n_epoch=None,
                         log_every_n_steps=25, logger=logger,
                         callbacks=[ModelCheckpoint(monitor="val/miou", mode="max", save_last=True),
                                    LearningRateMonitor("step")])
    trainer.fit(module, datamodule=data)
    results = trainer.test(module, datamodule=data, ckpt_path="best")[0]
    print(f"test mIoU {results['test/miou']:.4f}, mean F1 {results['test/mean_f1']:.4f}")
    if trainer.is_global_zero:
        path = to_onnx(module, Path(logger.log_dir) / "segmenter.onnx", image_size=args.size)
        print(f"ONNX model written to {path}")


if __name__ == "__main__":
    main()
