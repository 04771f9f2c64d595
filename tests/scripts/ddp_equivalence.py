"""Train a tiny JointModule for a few batches on CPU, single-process or DDP (gloo), and save the weights.

Run by ``tests/test_ddp.py`` as a subprocess (Lightning's DDP launcher re-runs this script once per extra
rank)::

    python tests/scripts/ddp_equivalence.py --devices 2 --batch-size 4 --out /tmp/ddp
    python tests/scripts/ddp_equivalence.py --devices 1 --batch-size 8 --out /tmp/single

Every rank writes ``<out>/rank<r>.pt`` with the module's initial and final state dicts, the optimiser states,
the number of training batches and the ``sample_seed`` keys of every batch it trained on. The configuration uses only per-sample losses (``--task``: ``manipulate`` by default, ``both`` adds the transfer task with its
feature classifier; references are each pair's own; UNet with GroupNorm, ``lambda_seg=0``: OHEM's hardest-pixel
selection is batch-dependent; donor AUs from the pair's reference), so 2 ranks x batch B must train exactly like
1 process x batch 2B up to float summation order. ``--precision 64-true`` makes that order's effect negligible
(float32 noise on a gradient that is ~0 can flip the sign of Adam's step on it).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, when run from anywhere

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.strategies import DDPStrategy  # noqa: E402

from segexpr.data.synthetic import SyntheticFacesDataModule  # noqa: E402
from segexpr.modules.joint import JointModule  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/tiny.py
from tiny import tiny_joint_module  # noqa: E402

SIZE = 32


def build_module(**overrides) -> JointModule:
    # lambda_swap=0: swap consistency (a) matches batch moments of the critic's scores, which DDP takes per rank
    # (like BatchNorm without syncing), so it is the one transfer term that is not per-sample.
    kwargs = dict(task="manipulate", region_source="segmenter", n_critic=2, lambda_seg=0.0, ema_decay=0.9,
                  sample_every_n_steps=0, lr=1e-3, lambda_swap=0.0)
    kwargs.update(overrides)
    # GroupNorm: per-sample statistics, so 2 ranks x 4 equal 1 process x 8 (SyncBatchNorm needs a GPU)
    module = tiny_joint_module(SIZE, segmenter_norm="group", **kwargs)
    # lambda_seg=0: its own initial weights stand in for a pretrained parser (the parsing anchor JointModule asks for)
    module.initialize_segmenter(module.segmenter.state_dict())
    return module


class RecordKeys(pl.Callback):
    """Remember the per-sample keys of every training batch (to check the global batches match), and, at every
    backward pass, whether the model ran under DDP with its reducer off (read while the wrapper exists)."""

    def __init__(self) -> None:
        self.keys: list[list[int]] = []
        self.reducer_off: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.keys.append(batch["sample_seed"].tolist())

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        from torch.nn.parallel import DistributedDataParallel

        model = trainer.strategy.model
        self.reducer_off.append(isinstance(model, DistributedDataParallel) and not model.require_backward_grad_sync)


class PoisonBatch(pl.Callback):
    """Fill one rank's second training batch with NaN (a rank-local failure)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == self.rank and batch_idx == 1:
            batch["image"].fill_(float("nan"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch-size", type=int, required=True, help="per-rank batch size")
    parser.add_argument("--batches", type=int, default=4, help="training batches per rank")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--strategy", default=None, help="force 'ddp' (also with one device)")
    parser.add_argument("--nan-rank", type=int, default=None, help="make this rank's second batch NaN")
    parser.add_argument("--task", default="manipulate", choices=["manipulate", "transfer", "both"])
    parser.add_argument("--precision", default="32-true", help="Lightning precision (64-true: float64 training)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    module = build_module(task=args.task)
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
    data = SyntheticFacesDataModule(size=SIZE, train_length=args.batches * args.batch_size * args.devices,
                                    val_length=4, test_length=4, pairs=True, augment=False, identities=4,
                                    batch_size=args.batch_size, seed=3)
    strategy = (DDPStrategy(process_group_backend="gloo", find_unused_parameters=False)
                if args.devices > 1 or args.strategy == "ddp" else "auto")
    recorder = RecordKeys()
    callbacks: list[pl.Callback] = [recorder] + ([PoisonBatch(args.nan_rank)] if args.nan_rank is not None else [])
    trainer = pl.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy, max_epochs=1, callbacks=callbacks,
                         precision=args.precision,
                         limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
                "initial_state_dict": initial,
                "optimizer_names": list(module._named_optimizers()),
                "optimizers": [opt.state_dict() for opt in trainer.optimizers],
                "train_batches": module._train_batches,
                "world_size": trainer.world_size,
                "batch_keys": recorder.keys,
                "reducer_off": recorder.reducer_off},
               args.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
