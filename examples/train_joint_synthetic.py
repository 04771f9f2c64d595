"""Train the joint segmentation-conditioned GAN on SynthFACS on a CPU, then write a result grid.

    python examples/train_joint_synthetic.py --minutes 5 --out runs/joint_synthetic

Two stages, both with Lightning's ``Trainer`` and a wall-clock budget (``max_time``):

1. ``--segmenter-minutes`` of face-parsing pre-training (``SegmenterModule``, UNet) so the region masks mean
   something when the GAN starts (the paper's model also starts from a trained parser);
2. ``--minutes`` of ``JointModule`` training (task ``both``, ``region_source="segmenter"``, ``joint=True``:
   GAN gradients keep updating the segmenter), 64 px, small widths.

Writes ``<out>/samples.png`` (rows: validation faces; columns: source | neutral happy sad surprise fear
disgust anger contempt | reference | transfer | region masks), ``<out>/joint.ckpt`` and CSV logs under
``<out>/``. A few CPU minutes give a GAN at its very beginning: expect colour/attention changes in the
regions rather than convincing expressions (see docs/training.md for realistic budgets).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torchvision
from pytorch_lightning.loggers import CSVLogger

from segexpr.data.synthetic import SyntheticFacesDataModule
from segexpr.files import atomic_path, refuse_existing
from segexpr.modules.joint import JointModule
from segexpr.modules.samples import sample_grid, sample_grid_columns
from segexpr.modules.segmenter import SegmenterModule


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="JointModule training time (wall clock)")
    parser.add_argument("--segmenter-minutes", type=float, default=1.0, help="segmenter pre-training time (0: none)")
    parser.add_argument("--out", type=Path, default=Path("runs/joint_synthetic"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--task", default="both", choices=("both", "manipulate", "transfer"))
    parser.add_argument("--region-source", default="segmenter", choices=("segmenter", "landmarks", "none"))
    parser.add_argument("--frozen-segmenter", action="store_true", help="joint=False: no GAN gradients into the segmenter")
    parser.add_argument("--adv-loss", default="wgan-gp", choices=("wgan-gp", "hinge", "nonsaturating"))
    parser.add_argument("--n-critic", type=int, default=2, help="D steps per G step (5 for long runs)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace samples.png and joint.ckpt in --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    grid_path, checkpoint = args.out / "samples.png", args.out / "joint.ckpt"
    try:  # before any training: an earlier run's results are only replaced on request
        refuse_existing([grid_path, checkpoint], overwrite=args.overwrite)
    except FileExistsError as err:
        raise SystemExit(f"train_joint_synthetic.py: {err}") from None
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    common = {"logger": CSVLogger(args.out, name="logs"), "enable_checkpointing": False, "accelerator": "cpu",
              "enable_model_summary": False, "log_every_n_steps": 10}

    segmenter = None
    if args.region_source == "segmenter":
        segmenter = SegmenterModule(arch="unet", segmenter_kwargs={"base_channels": 16, "depth": 3}, lr=2e-3,
                                    scheduler="none", num_overlays=0)
        if args.segmenter_minutes > 0:
            parsing = SyntheticFacesDataModule(size=args.size, train_length=4000, val_length=32, test_length=32,
                                               seed=args.seed, augment=False, batch_size=16)
            pl.Trainer(max_time={"seconds": int(args.segmenter_minutes * 60)}, max_epochs=-1, limit_val_batches=0,
                       **common).fit(segmenter, datamodule=parsing)

    module = JointModule(
        segmenter={"name": "unet", "base_channels": 16, "depth": 3} if segmenter is not None else None,
        generator={"base_channels": 16, "n_down": 2, "n_res": 2, "local_channels": 16, "local_n_res": 1,
                   "crop_size": 24},
        coder={"code_dim": 32, "base_channels": 16, "n_down": 3},
        discriminator={"base_channels": 16, "n_layers": 4, "local_channels": 16, "local_n_layers": 2,
                       "feature_hidden": 32},
        image_size=args.size, task=args.task, region_source=args.region_source, joint=not args.frozen_segmenter,
        adv_loss=args.adv_loss,
        n_critic=args.n_critic, lr=args.lr, ema_decay=0.99, sample_every_n_steps=0,
    )
    if segmenter is not None:  # start from the pre-trained parser
        module.initialize_segmenter(segmenter.segmenter.state_dict())
    data = SyntheticFacesDataModule(size=args.size, train_length=20000, val_length=40, test_length=40,
                                    seed=args.seed, pairs=True, augment=False, batch_size=args.batch_size)
    start = time.time()
    trainer = pl.Trainer(max_time={"seconds": int(args.minutes * 60)}, max_epochs=-1, limit_val_batches=1,
                         val_check_interval=200, **common)
    trainer.fit(module, datamodule=data)
    elapsed = time.time() - start

    data.setup("validate")
    batch = next(iter(data.val_dataloader()))
    grid = sample_grid(module, batch, num_samples=4)
    with atomic_path(grid_path, overwrite=args.overwrite) as tmp:
        torchvision.utils.save_image(grid, tmp)
    with atomic_path(checkpoint, overwrite=args.overwrite) as tmp:
        trainer.save_checkpoint(tmp)
    metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
    print(f"trained {module._train_batches} batches ({trainer.global_step} optimiser steps) in {elapsed / 60:.1f} min")
    print("columns:", " | ".join(sample_grid_columns(module, batch)))
    print("last metrics:", metrics)
    print(f"wrote {grid_path} and {checkpoint}")
    return grid_path


if __name__ == "__main__":
    main()
