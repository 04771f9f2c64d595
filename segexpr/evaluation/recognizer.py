"""The independent judge of the evaluation, and safe loading of the checkpoints being evaluated.

* :func:`train_recognizer` -- trains the *independent judge*: an :class:`~segexpr.modules.AUDiscriminatorModule`
  on the SynthFACS ``train`` split alone (never the GAN's discriminator, which the generator learnt to fool).
* :func:`load_recognizer` / :func:`load_joint` -- load a judge / a :class:`~segexpr.modules.JointModule`
  checkpoint with ``weights_only`` and check that it holds the expected class.
* :func:`judge_for` / :func:`describe_recognizer` -- the judge as the metrics use it (fed images at the size it
  was trained at) and its one-line description for results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from segexpr.data.synthetic import SyntheticFaces
from segexpr.io.checkpoints import CheckpointError, load_module, read_checkpoint
from segexpr.modules.discriminator import AUDiscriminatorModule


class _ResizedRecognizer(nn.Module):
    """Feeds the judge images at the size it was trained at (its ``forward`` and ``features``)."""

    def __init__(self, recognizer: nn.Module, size: int) -> None:
        super().__init__()
        self.recognizer, self.size = recognizer, int(size)
        self.image_size = self.size

    def _resize(self, images: Tensor) -> Tensor:
        if images.shape[-1] == self.size and images.shape[-2] == self.size:
            return images
        return F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=True).clamp(-1, 1)

    def forward(self, images: Tensor) -> Any:
        return self.recognizer(self._resize(images))

    def features(self, images: Tensor) -> Tensor:
        return self.recognizer.features(self._resize(images))

    @property
    def num_features(self) -> int:
        return int(self.recognizer.num_features)


def judge_for(recognizer: nn.Module | None, size: int) -> nn.Module | None:
    """The recogniser, wrapped to resize inputs when it was trained at another size."""
    if recognizer is None:
        return None
    trained = getattr(recognizer, "image_size", None)
    return _ResizedRecognizer(recognizer, trained) if trained and int(trained) != size else recognizer


def describe_recognizer(recognizer: nn.Module | None) -> str | None:
    """``"<class> (<n> M parameters, trained at <size> px[, read at <input> px][, manifest <version>])"``, or
    ``None`` without a recogniser (``input_size`` and ``version``: see :class:`~segexpr.evaluation.JudgeEnsemble`)."""
    if recognizer is None:
        return None
    size = getattr(recognizer, "image_size", "?")
    params = sum(p.numel() for p in recognizer.parameters())
    extra = ""
    read = getattr(recognizer, "input_size", None)
    if read is not None and read != size:
        extra += f", read at {read} px"
    version = getattr(recognizer, "version", None)
    if version:
        extra += f", manifest {version}"
    return f"{type(recognizer).__name__} ({params / 1e6:.2f} M parameters, trained at {size} px{extra})"


def train_recognizer(
    size: int = 64,
    minutes: float | None = None,
    max_steps: int = -1,
    *,
    batch_size: int = 32,
    train_length: int = 4000,
    seed: int = 1,
    discriminator_kwargs: Mapping[str, Any] | None = None,
    lr: float = 1e-3,
    dataset: Dataset | None = None,
    out: str | Path | None = None,
) -> AUDiscriminatorModule:
    """Train an independent expression / AU judge on the SynthFACS ``train`` split and return it (eval mode).

    It is an :class:`AUDiscriminatorModule` trained *alone* on real renders (expression cross-entropy + AU
    regression of the global heads; no local heads): it never saw a generated image, so a generator cannot
    have learnt to fool it. The benchmark evaluates on ``test``-split identities, which it never saw either.

    Args:
        size: image side. minutes: wall-clock budget (Lightning ``max_time``); max_steps: step budget (-1: none).
            At least one of the two must be set.
        batch_size, train_length, seed, lr: training data and optimiser settings.
        discriminator_kwargs: ``AUDiscriminator`` arguments (default: 16 base channels, 4 layers, no regions).
        dataset: train on this dataset instead (items with ``image`` and ``expression``/``aus``).
        out: also save a Lightning checkpoint there (load it with :func:`load_recognizer`).
    """
    if minutes is None and (max_steps is None or max_steps < 0):
        raise ValueError("train_recognizer needs a budget: minutes= and/or max_steps=")
    pl.seed_everything(seed, workers=True, verbose=False)
    kwargs = {"base_channels": 16, "n_layers": 4, "regions": ()}
    kwargs.update(dict(discriminator_kwargs or {}))
    recognizer = AUDiscriminatorModule(image_size=size, discriminator_kwargs=kwargs, lr=lr, local=False)
    if dataset is None:
        dataset = SyntheticFaces(size=size, length=train_length, seed=seed, split="train")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                        generator=torch.Generator().manual_seed(seed))
    trainer = pl.Trainer(max_time={"seconds": max(1, int(minutes * 60))} if minutes is not None else None,
                         max_steps=max_steps if max_steps is not None else -1, max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, accelerator="cpu")
    trainer.fit(recognizer, loader)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(out)
    return recognizer.eval()


def load_recognizer(path: str | Path, map_location: str | torch.device = "cpu") -> AUDiscriminatorModule:
    """Load a judge checkpoint safely (``weights_only``); it must hold an :class:`AUDiscriminatorModule`."""
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters") or {}
    if "discriminator_kwargs" not in hparams and "_class_path" not in hparams:
        kind = "a JointModule" if "region_source" in hparams else "not an AUDiscriminatorModule"
        raise CheckpointError(f"{path} holds {kind} (hyperparameters {sorted(hparams)[:8]}); --recognizer needs an "
                              "independently trained AUDiscriminatorModule checkpoint "
                              "(see segexpr.evaluation.train_recognizer)")
    return load_module(path, expected=AUDiscriminatorModule, map_location=map_location, checkpoint=ckpt)


def load_joint(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load a :class:`~segexpr.modules.JointModule` checkpoint safely (``weights_only``); see
    :func:`segexpr.modules.joint.load_joint_module` (which reads it with the one JointModule checkpoint reader,
    :func:`segexpr.inference.checkpoints.read_joint_checkpoint`)."""
    from segexpr.modules.joint import load_joint_module

    return load_joint_module(path, map_location=map_location)
