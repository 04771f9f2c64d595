"""The tiny JointModule the tests train: widths 8, one residual block, 16-px crops (seconds per step on a CPU)."""
from __future__ import annotations

from typing import Any

from segexpr.modules.joint import JointModule

#: Network configs of the tiny model (JointModule fills in region_source, code_dim, regions, ...).
TINY_NETWORKS: dict[str, dict[str, Any]] = {
    "generator": {"base_channels": 8, "n_down": 2, "n_res": 1, "local_channels": 8, "local_n_res": 1, "crop_size": 16},
    "coder": {"code_dim": 16, "base_channels": 8, "n_down": 2},
    "discriminator": {"base_channels": 8, "n_layers": 3, "local_channels": 8, "local_n_layers": 2, "feature_hidden": 16},
}


def tiny_joint_module(size: int = 32, segmenter: bool = True, segmenter_norm: str | None = None,
                      **kwargs: Any) -> JointModule:
    """A ``JointModule`` for ``size``-px images; ``kwargs`` go to ``JointModule`` (``n_critic`` defaults to 1,
    ``sample_every_n_steps`` to 0). ``segmenter_norm`` picks the UNet's normalisation (e.g. ``"group"``)."""
    kwargs.setdefault("n_critic", 1)
    kwargs.setdefault("sample_every_n_steps", 0)
    seg: dict[str, Any] = {"name": "unet", "base_channels": 8, "depth": 2}
    if segmenter_norm is not None:
        seg["norm"] = segmenter_norm
    networks = {k: dict(v) for k, v in TINY_NETWORKS.items()}
    networks.update({k: kwargs.pop(k) for k in TINY_NETWORKS if k in kwargs})  # a network config given replaces
    return JointModule(segmenter=seg if segmenter else None, image_size=size, **networks, **kwargs)


def save_tiny_checkpoint(path, size: int = 32, **kwargs: Any):
    """An untrained tiny JointModule (with a segmenter) saved by a Trainer as a real checkpoint at ``path``."""
    import pytorch_lightning as pl
    import torch

    from segexpr.data.synthetic import SyntheticFacesDataModule

    torch.manual_seed(0)
    module = tiny_joint_module(size, **kwargs)
    data = SyntheticFacesDataModule(size=size, train_length=4, val_length=4, test_length=4, pairs=True,
                                    augment=False, batch_size=4)
    trainer = pl.Trainer(max_steps=0, logger=False, enable_checkpointing=False, limit_val_batches=0,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(path)
    return path


def tiny_combined_layouts(root, size: int = 32):
    """A ``CombinedDataModule`` over tiny SynthFACS exports in AffectNet's and CelebAMask-HQ's release layouts
    (12 and 8 images under ``root``), batch 2, no augmentation."""
    from segexpr.data import AffectNetDataModule, CelebAMaskHQDataModule, CombinedDataModule
    from segexpr.data.export import export_synthetic

    export_synthetic("affectnet", root / "affectnet", 12, 64, seed=0)
    export_synthetic("celebamask-hq", root / "cmhq", 8, 64, seed=0)
    return CombinedDataModule(
        expression=AffectNetDataModule(str(root / "affectnet"), image_size=size, batch_size=2, augment=False),
        parsing=CelebAMaskHQDataModule(str(root / "cmhq"), image_size=size, batch_size=2, augment=False,
                                       cache_dir=str(root / "cache")))
