"""Exponential moving average (EMA) of generator weights, built on ``torch.optim.swa_utils``."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class ExponentialMovingAverage(nn.Module):
    """EMA copy of several modules: ``ema = decay * ema + (1 - decay) * live`` after each :meth:`update`.

    A thin wrapper over :class:`torch.optim.swa_utils.AveragedModel` with ``get_ema_multi_avg_fn``; the
    averaged copy is a registered submodule, so it is saved in (and restored from) the owner's
    ``state_dict`` / Lightning checkpoint. The copy never requires gradients and is never in an optimiser.
    Buffers are averaged too (``use_buffers=True``), so normalisation statistics follow the weights.

    Args:
        modules: name -> live module (e.g. ``{"generator": g, "coder": c}``); deep-copied once here.
        decay: EMA decay in ``[0, 1)``; larger is slower. The first :meth:`update` copies the live weights.
        warmup: use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (the usual EMA warm-up), so that a
            short run is not dominated by the initial weights (with 0.999 and no warm-up, 200 updates still
            keep 82 % of the initialisation). ``False`` uses ``get_ema_multi_avg_fn(decay)`` unchanged.

    Use ``ema[name]`` to get the averaged copy of the module registered as ``name``, and :attr:`initialized`
    to know whether any update has happened (before that the copy is just the initial weights).
    """

    def __init__(self, modules: Mapping[str, nn.Module], decay: float = 0.999, warmup: bool = True) -> None:
        super().__init__()
        if not 0.0 <= float(decay) < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        multi_avg_fn = self._warmup_multi_avg if self.warmup else get_ema_multi_avg_fn(self.decay)
        self.averaged = AveragedModel(nn.ModuleDict(dict(modules)), multi_avg_fn=multi_avg_fn, use_buffers=True)
        self.averaged.requires_grad_(False)
        # Updates so far, mirrored on the host so that an update never reads ``n_averaged`` from the device (a
        # host synchronisation per generator step on a GPU); re-read once after a checkpoint is loaded.
        self._updates: int | None = 0
        self.register_load_state_dict_post_hook(lambda module, incompatible: setattr(module, "_updates", None))

    def decay_at(self, num_averaged: int) -> float:
        """The decay applied at an update after ``num_averaged`` previous updates."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + num_averaged) / (10.0 + num_averaged))

    @torch.no_grad()
    def _warmup_multi_avg(self, averaged: list, current: list, num_averaged: torch.Tensor) -> None:
        # Same update as get_ema_multi_avg_fn, with the warm-up decay: ema += (1 - decay) * (live - ema).
        torch._foreach_lerp_(averaged, current, 1.0 - self.decay_at(int(num_averaged)))

    @property
    def initialized(self) -> bool:
        """Whether :meth:`update` has run at least once (restored from checkpoints with the weights)."""
        if self._updates is not None:
            return self._updates > 0
        return bool(self.averaged.n_averaged.item() > 0)

    def __getitem__(self, name: str) -> nn.Module:
        return self.averaged.module[name]

    @torch.no_grad()
    def update(self, modules: Mapping[str, nn.Module]) -> None:
        """Fold the current live weights of ``modules`` (same names as at construction) into the average.

        The same arithmetic as ``AveragedModel.update_parameters`` with this class's ``multi_avg_fn`` (the first
        update copies; later ones ``lerp`` floating-point tensors and copy integer buffers), without its two
        device-to-host reads of ``n_averaged``.
        """
        if self._updates is None:
            self._updates = int(self.averaged.n_averaged)  # once after loading a checkpoint
        live_module = nn.ModuleDict(dict(modules))
        averaged = [*self.averaged.module.parameters(), *self.averaged.module.buffers()]
        live = [*live_module.parameters(), *live_module.buffers()]
        if len(averaged) != len(live):
            raise ValueError(f"EMA update: {len(live)} live tensors for {len(averaged)} averaged ones")
        live = [t.detach().to(a.device) for a, t in zip(averaged, live)]
        floating = [i for i, a in enumerate(averaged) if a.is_floating_point()]
        if self._updates == 0:
            torch._foreach_copy_(averaged, live)
        else:
            torch._foreach_lerp_([averaged[i] for i in floating], [live[i] for i in floating],
                                 1.0 - self.decay_at(self._updates))
            rest = [i for i, a in enumerate(averaged) if not a.is_floating_point()]
            if rest:
                torch._foreach_copy_([averaged[i] for i in rest], [live[i] for i in rest])
        self.averaged.n_averaged += 1
        self._updates += 1

    def forward(self, *args, **kwargs):  # pragma: no cover - the EMA is used through __getitem__
        raise RuntimeError("ExponentialMovingAverage is a container; call ema[name](...) instead")
