"""The ``segexpr`` console command.

``segexpr fit|validate|test|predict --config FILE`` is Lightning's own ``LightningCLI``; the remaining
subcommands (``export-synthetic``, and the editing/evaluation commands added by later modules) are small
argparse programs dispatched by name. This module stays thin: each subcommand's logic lives in its module.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

#: subcommand -> "module:function" taking ``argv`` (the arguments after the subcommand).
EXTRA_COMMANDS = {
    "export-synthetic": "segexpr.data.export:main",
    "edit": "segexpr.cli.edit:edit_main",
    "transfer": "segexpr.cli.edit:transfer_main",
    "evaluate": "segexpr.cli.evaluate:main",
    "demo": "segexpr.demo:main",
    "upgrade-checkpoint": "segexpr.cli.upgrade:main",
}


def lightning_cli(args: Sequence[str] | None = None, run: bool = True):
    """Build Lightning's CLI over every segexpr LightningModule and DataModule (subclass mode)."""
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    return LightningCLI(
        pl.LightningModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=list(args) if args is not None else None,
        run=run,
        save_config_kwargs={"overwrite": True},
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in EXTRA_COMMANDS:
        module_name, func_name = EXTRA_COMMANDS[argv[0]].split(":")
        return int(getattr(importlib.import_module(module_name), func_name)(argv[1:]) or 0)
    lightning_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
