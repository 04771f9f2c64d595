"""Lightning callbacks that turn training into something a person can look at."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from segexpr.visualize import label_columns


class ResultImage(pl.Callback):
    """Write a labelled result grid PNG of a ``JointModule`` on validation images.

    Rows are validation faces; columns are source | one edit per target expression | reference | transfer |
    region masks (see :func:`segexpr.modules.samples.sample_grid`). The image is rewritten at the end of every
    validation run (so a long run shows progress) and at the end of training.

    Args:
        path: PNG to write (parent folders are created).
        num_samples: rows of the grid.
    """

    def __init__(self, path: str = "outputs/result.png", num_samples: int = 4) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.path = Path(path)
        self.num_samples = num_samples

    def _batch(self, trainer: pl.Trainer):
        datamodule = trainer.datamodule
        if datamodule is None:
            raise ValueError("ResultImage needs the Trainer to run with a datamodule (for validation images)")
        datamodule.setup("validate")
        return next(iter(datamodule.val_dataloader()))

    @rank_zero_only
    def write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path:
        """Render the grid now and write it to :attr:`path`."""
        from segexpr.modules.samples import sample_grid, sample_grid_columns

        batch = self._batch(trainer)
        grid = sample_grid(pl_module, batch, num_samples=self.num_samples)
        image = label_columns(grid, sample_grid_columns(pl_module, batch), tile_width=batch["image"].shape[-1])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        image.save(self.path)
        return self.path

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        path = self.write(trainer, pl_module)
        rank_zero_info(f"segexpr: result image written to {path}")
