"""JointModule checkpoints -> networks: the one place that reads a JointModule checkpoint's hyperparameters.

* :func:`read_joint_checkpoint` reads the file safely (``weights_only=True``), upgrades segexpr 0.1
  hyperparameters in memory and checks that it holds a JointModule. Every JointModule loader goes through it:
  :meth:`ExpressionEditor.from_checkpoint <segexpr.inference.editor.ExpressionEditor.from_checkpoint>` (the
  ``segexpr edit``/``transfer`` commands and the demo) and :func:`segexpr.modules.joint.load_joint_module`
  (evaluation's ``load_joint``, which needs the whole LightningModule).
* :func:`editing_networks` builds the networks inference needs (segmenter, generator, coder; no discriminator, no
  optimiser state) from those hyperparameters with the factories in :mod:`segexpr.models.factory` -- the same
  construction JointModule uses -- and loads their weights, the EMA copies of generator and coder when the
  checkpoint's EMA holds an average.

This module knows the key names JointModule saves (``segmenter.``, ``generator.``, ``coder.``, and
``ema.averaged.module.`` for the EMA copies); nothing else in segexpr parses them. It never imports
:mod:`segexpr.modules`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from segexpr.io.checkpoints import (CheckpointError, is_legacy_joint_hparams, network_state, read_checkpoint,
                                    upgrade_joint_hparams)
from segexpr.models.factory import EDITING_NETWORKS, build_editing_networks

__all__ = ["EMA_COUNT_KEY", "EMA_PREFIX", "EditingNetworks", "editing_networks", "load_editing_networks",
           "read_joint_checkpoint"]

#: JointModule saves the EMA copies of its generator and coder under this prefix (``ema.averaged.module.generator.``).
EMA_PREFIX = "ema.averaged.module."
#: How many updates the EMA has averaged; 0 (or absent) means its copies are still the initial weights.
EMA_COUNT_KEY = "ema.averaged.n_averaged"
#: The networks JointModule keeps an EMA of.
EMA_NETWORKS = ("generator", "coder")
#: JointModule's ``image_size`` default (a checkpoint without the key was trained at it).
DEFAULT_IMAGE_SIZE = 128


@dataclass
class EditingNetworks:
    """The networks that edit, from one checkpoint, in eval mode: ``segmenter`` is ``None`` for a model without one."""

    generator: nn.Module
    coder: nn.Module
    segmenter: nn.Module | None
    image_size: int
    region_source: str
    ema: bool  # generator and coder hold the EMA weights


def read_joint_checkpoint(path: str | Path) -> dict[str, Any]:
    """A JointModule checkpoint read safely, its hyperparameters upgraded in memory (segexpr 0.1 -> today).

    Returns the checkpoint dict (``state_dict``, ``hyper_parameters``, Lightning's other entries). Raises
    :class:`~segexpr.io.checkpoints.CheckpointError` naming the file when it is unreadable or holds no JointModule.
    """
    ckpt = dict(read_checkpoint(path))
    hparams = dict(ckpt.get("hyper_parameters") or {})
    if is_legacy_joint_hparams(hparams):
        hparams = upgrade_joint_hparams(hparams)
    if "region_source" not in hparams and "_class_path" not in hparams:
        raise CheckpointError(f"{path} does not hold a JointModule (hyperparameters {sorted(hparams)[:8]}); "
                              "a JointModule checkpoint is needed")
    ckpt["hyper_parameters"] = hparams
    return ckpt


def editing_networks(ckpt: Mapping[str, Any], path: str | Path = "checkpoint") -> EditingNetworks:
    """Build and load the editing networks of a checkpoint returned by :func:`read_joint_checkpoint` (CPU, eval)."""
    hparams = ckpt["hyper_parameters"]
    if "region_source" not in hparams or "generator" not in hparams:
        raise CheckpointError(f"{path} does not hold a JointModule (hyperparameters {sorted(hparams)[:8]})")
    try:
        nets = build_editing_networks(hparams.get("segmenter"), hparams["generator"], hparams.get("coder"),
                                      hparams["region_source"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: hyperparameters do not describe a JointModule: {err}") from err
    state = ckpt["state_dict"]
    averaged = state.get(EMA_COUNT_KEY)
    ema = averaged is not None and int(averaged) > 0
    for name in EDITING_NETWORKS:
        if nets[name] is None:
            continue
        prefix = f"{EMA_PREFIX}{name}." if ema and name in EMA_NETWORKS else f"{name}."
        try:
            nets[name].load_state_dict(network_state(state, prefix))
        except RuntimeError as err:
            raise CheckpointError(f"{path}: the {name} weights do not fit its config: {err}") from err
        nets[name].eval()
    return EditingNetworks(generator=nets["generator"], coder=nets["coder"], segmenter=nets["segmenter"],
                           image_size=int(hparams.get("image_size", DEFAULT_IMAGE_SIZE)),
                           region_source=str(hparams["region_source"]), ema=ema)


def load_editing_networks(path: str | Path, device: str | torch.device = "cpu") -> EditingNetworks:
    """:func:`editing_networks` of the checkpoint at ``path``, moved to ``device``."""
    nets = editing_networks(read_joint_checkpoint(path), path)
    for network in (nets.generator, nets.coder, nets.segmenter):
        if network is not None:
            network.to(device)
    return nets
