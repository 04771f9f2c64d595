"""Train face parsers on SynthFACS on the CPU and report held-out-identity mIoU, per-class F1, wall time.

    python examples/benchmarks/segmenter_synthetic.py                      # both archs, 10 min each, 128 px
    python examples/benchmarks/segmenter_synthetic.py --arch unet --minutes 3

Protocol: ``--train-images`` SynthFACS images of the *train* identity pool and ``--test-images`` images of
the *test* pool (disjoint identities) are rendered once into memory (render time is reported separately).
Each architecture then trains with :class:`~segexpr.modules.segmenter.SegmenterModule` under Lightning for
``--minutes`` of wall time (``Trainer(max_time=...)``) with AdamW and a poly learning-rate decay over
*elapsed time* (so the schedule ends on time whatever the machine's speed). Training uses random horizontal flips
(with the left/right class swap). The test split is evaluated once at the end with
:class:`~segexpr.metrics.parsing.ParsingMetrics` (mIoU and F1 over the classes present). Not a test: the
figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from segexpr.io.images import images_to_uint8, uint8_to_images
from segexpr.labels import FLIP_CLASS_PERMUTATION
from segexpr.data.synthetic import SyntheticFaces
from segexpr.modules.segmenter import SegmenterModule


@dataclass
class Preset:
    """Per-architecture CPU settings (narrow nets, no pretrained weights)."""

    segmenter_kwargs: dict
    lr: float
    batch_size: int
    loss: str = "ohem_ce"
    extra: dict = field(default_factory=dict)


PRESETS = {
    "bisenet": Preset(dict(backbone_width=16, context_channels=32, fusion_channels=64, spatial_stride=4), lr=3e-3,
                      batch_size=8),
    "unet": Preset(dict(base_channels=8, depth=4), lr=3e-3, batch_size=8),
}


class InMemory(Dataset):
    """Pre-rendered items (uint8 images, uint8 masks); optional random flips with the l/r class swap."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, flip: bool, seed: int) -> None:
        self.images, self.masks, self.flip = images, masks, flip
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.as_tensor(FLIP_CLASS_PERMUTATION)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        image = uint8_to_images(self.images[i])
        mask = self.masks[i].long()
        if self.flip and bool(torch.rand((), generator=self.generator) < 0.5):
            image, mask = image.flip(-1), self.perm[mask.flip(-1)]
        return {"image": image, "mask": mask}


def render(split: str, length: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = SyntheticFaces(size=size, length=length, seed=seed, split=split)
    images = torch.empty(length, 3, size, size, dtype=torch.uint8)
    masks = torch.empty(length, size, size, dtype=torch.uint8)
    for i in range(length):
        item = ds[i]
        images[i] = images_to_uint8(item["image"])
        masks[i] = item["mask"].to(torch.uint8)
    return images, masks


class TimePolySchedule(pl.Callback):
    """Poly learning-rate decay over wall time: ``lr = peak * (1 - elapsed / budget) ** power``.

    A step-count schedule cannot end on time when the machine's speed is unknown (or shared), so the
    benchmark decays the learning rate by elapsed training time instead, after ``warmup_steps`` linear steps.
    """

    def __init__(self, seconds: float, power: float = 0.9, warmup_steps: int = 20) -> None:
        self.seconds, self.power, self.warmup_steps = seconds, power, warmup_steps
        self.start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:
            self.start = time.perf_counter()
        fraction = min((time.perf_counter() - self.start) / self.seconds, 1.0)
        factor = (1.0 - fraction) ** self.power
        if trainer.global_step < self.warmup_steps:
            factor *= (trainer.global_step + 1) / self.warmup_steps
        for group in trainer.optimizers[0].param_groups:
            group["lr"] = pl_module.hparams.lr * factor


def run(arch: str, args: argparse.Namespace, train: tuple, test: tuple) -> dict:
    preset = PRESETS[arch]
    pl.seed_everything(args.seed, verbose=False)
    module = SegmenterModule(arch=arch, loss=preset.loss, lr=args.lr or preset.lr, optimizer="adamw",
                             weight_decay=1e-4, scheduler="none", segmenter_kwargs=preset.segmenter_kwargs,
                             num_overlays=0, **preset.extra)
    batch_size = args.batch_size or preset.batch_size
    train_loader = DataLoader(InMemory(*train, flip=True, seed=args.seed), batch_size=batch_size, shuffle=True,
                              drop_last=True, generator=torch.Generator().manual_seed(args.seed))
    test_loader = DataLoader(InMemory(*test, flip=False, seed=0), batch_size=16)
    seconds = args.minutes * 60
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=-1, max_epochs=-1,
                         max_time={"seconds": math.ceil(seconds)}, callbacks=[TimePolySchedule(seconds)], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, deterministic=False)
    start = time.perf_counter()
    trainer.fit(module, train_loader)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    results = trainer.test(module, test_loader, verbose=False)[0]
    return {"arch": arch, "params_M": sum(p.numel() for p in module.segmenter.parameters()) / 1e6,
            "steps": trainer.global_step, "batch_size": batch_size,
            "train_seconds": train_seconds, "test_seconds": time.perf_counter() - start, **results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["bisenet", "unet"], choices=sorted(PRESETS))
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall time per architecture")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--test-images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=None, help="default: per-arch preset")
    parser.add_argument("--lr", type=float, default=None, help="default: per-arch preset")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"SynthFACS {args.size}px, {args.train_images} train / {args.test_images} held-out-identity test images, "
          f"{args.minutes:g} min per arch, {torch.get_num_threads()} threads, torch {torch.__version__}")
    start = time.perf_counter()
    train = render("train", args.train_images, args.size, args.seed)
    test = render("test", args.test_images, args.size, args.seed)
    print(f"rendered in {time.perf_counter() - start:.1f} s")
    for arch in args.arch:
        r = run(arch, args, train, test)
        print(f"\n== {arch}: {r['params_M']:.2f} M params, {r['steps']} steps at batch "
              f"{r['batch_size']}, train {r['train_seconds']:.0f} s, test {r['test_seconds']:.1f} s")
        print(f"   test mIoU {r['test/miou']:.4f}  mean F1 {r['test/mean_f1']:.4f}  "
              f"pixel acc {r['test/pixel_accuracy']:.4f}")
        f1 = {k[len('test/f1_'):]: v for k, v in r.items() if k.startswith("test/f1_")}
        print("   F1 " + "  ".join(f"{k} {v:.3f}" for k, v in f1.items()))


if __name__ == "__main__":
    main()
