"""Result grids of a JointModule (source | 8 edits | reference | transfer | regions) and sending them to loggers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
import torchvision

from segexpr.labels import EXPRESSIONS, NUM_EXPRESSIONS, ALL_REGION_GROUPS
from segexpr.visualize import overlay

__all__ = ["log_image_grid", "sample_grid", "sample_grid_columns"]

def _region_class_map(masks: torch.Tensor, region_names: Sequence[str], threshold: float = 0.5) -> torch.Tensor:
    """Soft region masks ``[B, R, H, W]`` -> an order-A class map coloured with each region's first class."""
    classes = torch.tensor([ALL_REGION_GROUPS[r][0] if r in ALL_REGION_GROUPS else 1 for r in region_names],
                           device=masks.device, dtype=torch.long)
    best, index = masks.max(dim=1)
    return torch.where(best > threshold, classes[index], torch.zeros_like(index))


def sample_grid_columns(module: Any, batch: Mapping[str, Any]) -> list[str]:
    """Column titles of :func:`sample_grid` for this module and batch."""
    columns = ["source"] + list(EXPRESSIONS)
    if module.uses_transfer and batch.get("reference_image") is not None:
        columns += ["reference", "transfer"]
    if module.region_names and (module.hparams.region_source != "landmarks" or batch.get("landmarks") is not None):
        columns.append("regions")
    return columns


def sample_grid(module: Any, batch: Mapping[str, Any], num_samples: int = 4) -> torch.Tensor:
    """A result grid, float ``[3, H', W']`` in ``[0, 1]``.

    Rows are samples (the first ``num_samples`` of ``batch``); columns are (see :func:`sample_grid_columns`):
    source | one edit per target expression (8, AffectNet order) | reference | transfer (when the module
    trains transfer and the batch has ``reference_image``) | region-mask overlay (the masks :meth:`JointModule.regions`
    returns, coloured like the parsing classes; omitted for ``region_source="none"``).
    """
    images = batch["image"][:num_samples].to(module.device, torch.float32)
    count = images.shape[0]
    landmarks = batch.get("landmarks")
    landmarks = landmarks[:count] if landmarks is not None else None
    columns = [images]
    for expression in range(NUM_EXPRESSIONS):
        columns.append(module.edit(images, expression=expression, landmarks=landmarks))
    if module.uses_transfer and batch.get("reference_image") is not None:
        references = batch["reference_image"][:count].to(module.device, torch.float32)
        columns += [references, module.transfer(images, references, landmarks=landmarks)]
    if module.region_names and (module.hparams.region_source != "landmarks" or landmarks is not None):
        masks = module.regions(images, landmarks=landmarks)
        columns.append(overlay(images, _region_class_map(masks, module.region_names), alpha=0.6))
    tiles = torch.stack([c.detach().float().cpu().clamp(-1, 1) for c in columns], dim=1).flatten(0, 1)
    return torchvision.utils.make_grid((tiles + 1) / 2, nrow=len(columns), padding=2, pad_value=1.0).clamp(0, 1)


def log_image_grid(module: pl.LightningModule, grid: torch.Tensor, tag: str, caption: str | None = None) -> list[Path]:
    """Send ``grid`` (float ``[3, H, W]`` in ``[0, 1]``) to the module's loggers; returns PNG paths written.

    W&B loggers get ``log_image``, TensorBoard loggers ``add_image``; with any other logger (or none) the grid
    is saved as ``<trainer.log_dir>/samples/<tag>_step<step>.png`` (``/`` in the tag becomes ``_``).
    Call from global rank zero only.
    """
    from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

    step = module.global_step
    written: list[Path] = []
    needs_png = not module.loggers
    for logger in module.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=tag, images=[grid], step=step, caption=[caption] if caption else None)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, grid, global_step=step)
        else:
            needs_png = True
    if needs_png:
        log_dir = module.trainer.log_dir or module.trainer.default_root_dir
        path = Path(log_dir) / "samples" / f"{tag.replace('/', '_')}_step{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        torchvision.utils.save_image(grid, path)
        written.append(path)
    return written
