"""Two DataModules at once: expression data for the GAN, parsing data for the segmenter's supervision.

The joint AffectNet + CelebAMask-HQ recipe trains the GAN on AffectNet (expressions, no masks) while the
segmenter keeps its mask supervision from CelebAMask-HQ, so joint GAN training cannot erode parsing. Each
train batch is ``{"gan": <batch>, "parsing": <batch>}``, built by Lightning's own ``CombinedLoader``;
``JointModule`` recognises that shape.
"""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import CombinedLoader

_MODES = ("max_size_cycle", "min_size")


class CombinedDataModule(pl.LightningDataModule):
    """Pair an expression DataModule with a parsing DataModule.

    Args:
        expression: DataModule whose batches train the GAN (e.g. ``AffectNetDataModule``, ``RaFDDataModule``).
        parsing: DataModule whose batches carry ``mask`` (e.g. ``CelebAMaskHQDataModule``).
        mode: ``"max_size_cycle"`` (default: an epoch is the longer loader, the shorter one cycles) or
            ``"min_size"`` (stop at the shorter one).

    Validation and test use the expression DataModule's loaders (edits are judged on expression data) and
    the parsing DataModule's, as ``{"gan": ..., "parsing": ...}`` batches in ``"min_size"`` mode.
    """

    def __init__(self, expression: pl.LightningDataModule, parsing: pl.LightningDataModule,
                 mode: str = "max_size_cycle") -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        for name, dm in (("expression", expression), ("parsing", parsing)):
            if not isinstance(dm, pl.LightningDataModule):
                raise TypeError(f"{name} must be a LightningDataModule, got {type(dm).__name__}")
        self.expression = expression
        self.parsing = parsing
        self.mode = mode

    def prepare_data(self) -> None:
        self.expression.prepare_data()
        self.parsing.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for dm in (self.expression, self.parsing):
            dm.trainer = self.trainer
            dm.setup(stage)

    def _combine(self, loader_name: str, mode: str) -> CombinedLoader:
        return CombinedLoader({"gan": getattr(self.expression, loader_name)(),
                               "parsing": getattr(self.parsing, loader_name)()}, mode)

    def train_dataloader(self) -> CombinedLoader:
        return self._combine("train_dataloader", self.mode)

    def val_dataloader(self) -> CombinedLoader:
        return self._combine("val_dataloader", "min_size")

    def test_dataloader(self) -> CombinedLoader:
        return self._combine("test_dataloader", "min_size")
