"""Exact-resume scenario for ``tests/test_resume.py``: full run, killed run, resumed run (tiny JointModule, CPU).

    python tests/scripts/resume_run.py full   --dir D   # 9 uninterrupted batches -> D/full.pt
    python tests/scripts/resume_run.py kill   --dir D   # checkpoints every 5 optimiser steps, SIGKILLed after batch 5
    python tests/scripts/resume_run.py resume --dir D   # fit(ckpt_path="last") -> D/resume.pt

The model is ``task="both"`` (three optimisers), ``n_critic=2`` (the batch counter decides the generator
steps), EMA on, a BatchNorm UNet segmenter trained jointly, and augmented SynthFACS pairs (augmentation depends
on the epoch): 3 batches per epoch, 3 epochs, so the kill and the resume fall mid-epoch and the run crosses epoch
boundaries afterwards. Each run records the ``sample_seed`` keys of the batches it trained on.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytorch_lightning as pl  # noqa: E402
from pytorch_lightning.callbacks import ModelCheckpoint  # noqa: E402

from segexpr.data.synthetic import SyntheticFacesDataModule  # noqa: E402
from segexpr.modules.joint import JointModule  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/tiny.py
from tiny import tiny_joint_module  # noqa: E402

SIZE = 32
KILL_AFTER_BATCH = 5  # 1-based count of training batches after which the "kill" run dies
EVERY_N_STEPS = 5     # optimiser steps: 2 per batch (D + feature classifier) + 1 every 2nd batch (G)


class Recorder(pl.Callback):
    def __init__(self, kill_after: int | None = None) -> None:
        self.keys: list[list[int]] = []
        self.kill_after = kill_after

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.keys.append(batch["sample_seed"].tolist())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Runs before ModelCheckpoint's hook (Lightning orders checkpoint callbacks last): the batch just trained
        # is not in any checkpoint, as when a machine dies mid-step.
        if self.kill_after is not None and pl_module._train_batches == self.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def build() -> tuple[JointModule, SyntheticFacesDataModule]:
    pl.seed_everything(0, verbose=False)
    module = tiny_joint_module(SIZE, task="both", n_critic=2, ema_decay=0.9, lr=1e-3)
    data = SyntheticFacesDataModule(size=SIZE, train_length=12, val_length=4, test_length=4, pairs=True,
                                    augment=True, identities=4, batch_size=4, seed=5)
    return module, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("full", "kill", "resume"))
    parser.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    module, data = build()
    recorder = Recorder(KILL_AFTER_BATCH if args.mode == "kill" else None)
    callbacks: list[pl.Callback] = [recorder]
    if args.mode != "full":
        callbacks.append(ModelCheckpoint(dirpath=args.dir / "ckpt", every_n_train_steps=EVERY_N_STEPS, save_last=True))
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=3, limit_val_batches=0, num_sanity_val_steps=0,
                         logger=False, enable_checkpointing=args.mode != "full", callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data, ckpt_path="last" if args.mode == "resume" else None)
    torch.save({"state_dict": module.state_dict(), "optimizers": [o.state_dict() for o in trainer.optimizers],
                "train_batches": module._train_batches, "global_step": trainer.global_step,
                "epoch": trainer.current_epoch, "keys": recorder.keys}, args.dir / f"{args.mode}.pt")


if __name__ == "__main__":
    main()
