"""``segexpr upgrade-checkpoint OLD NEW``: rewrite a segexpr 0.1 JointModule checkpoint for today's JointModule."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from segexpr.io.checkpoints import CheckpointError, upgrade_checkpoint


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="segexpr upgrade-checkpoint",
        description="Write a copy of a segexpr 0.1 JointModule checkpoint (parts as SegmenterModule/GeneratorModule/"
                    "AUDiscriminatorModule class_path dicts) whose hyperparameters today's "
                    "JointModule.load_from_checkpoint reads. The weights are unchanged; the old file is kept.")
    parser.add_argument("source", type=Path, help="segexpr 0.1 JointModule checkpoint")
    parser.add_argument("target", type=Path, help="new checkpoint (must not exist)")
    args = parser.parse_args(argv)
    try:
        print(upgrade_checkpoint(args.source, args.target))
    except (CheckpointError, FileExistsError) as err:
        raise SystemExit(f"segexpr upgrade-checkpoint: {err}") from None
    return 0
