"""Gradient synchronisation for manually optimised multi-optimiser GANs under DDP.

Why not DDP's own reducer
-------------------------
``DistributedDataParallel`` averages gradients with autograd hooks that expect *one* backward pass per forward
in which every parameter (or, with ``find_unused_parameters=True``, every *used* parameter) receives a gradient
exactly once. A GAN step breaks both assumptions: :class:`~segexpr.modules.JointModule` runs two or three
backward passes per ``training_step`` (discriminator, feature classifier, generator), with the other
optimisers' parameters frozen by ``toggle_optimizer``; the generator step runs every ``n_critic`` batches
only. DDP then fails with "Expected to have finished reduction in the prior iteration" or "marked ready twice"
errors (Lightning issues #20328, #20866). ``find_unused_parameters=True`` hides some of this at the cost of a
graph traversal per backward, and still mis-handles several backwards per forward.

What segexpr does instead
-------------------------
* Keep Lightning's ``DDPStrategy`` and the DDP wrapper: process-group setup, the initial parameter and buffer
  broadcast from rank 0 (identical initial weights on every rank), distributed samplers, ``sync_batchnorm``.
* Switch the reducer off for the module (:func:`disable_reducer`) at the start of every ``training_step``:
  ``require_backward_grad_sync = False`` is the flag ``DDP.no_sync()`` toggles, so neither Lightning's
  ``prepare_for_backward`` (called in every ``manual_backward``) nor DDP's post-forward ever arms the reducer,
  and its autograd hooks stay inert. (Lightning sets the flag back to ``True`` after each ``training_step`` in
  ``_DDPForwardRedirection.on_after_outer_forward``, hence "every step", not once.)
* Right before each ``optimizer.step()``, average the gradients of exactly the parameters that optimiser is
  about to step (:func:`all_reduce_gradients`), flattened into one buffer: one collective per optimiser step.
  A parameter that has a gradient on some rank but ``None`` on another (data-dependent branches) is treated as
  zero there, and one that has no gradient on *any* rank keeps ``None`` (so Adam skips it, as it would in a
  single-process run). The per-parameter "has a gradient" flags travel in the same buffer.

With equal local batch sizes (``drop_last=True``) and per-sample mean losses, the averaged gradient is the
gradient of the global-batch mean, so N ranks with batch ``B`` train like one process with batch ``N * B``
(``tests/test_ddp.py`` checks this to float tolerance). Losses built on *batch statistics* (swap-consistency
moments, the multi-class adversarial batch mean, OHEM's hardest-pixel selection, BatchNorm without
``sync_batchnorm``) are computed over each rank's local batch, as BatchNorm would be.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["adam", "all_reduce_gradients", "broadcast_buffers", "check_finite", "disable_reducer", "distributed_world_size", "gan_optimizers",
           "optimizer_step"]

def distributed_world_size() -> int:
    """Size of the default process group, or 1 when ``torch.distributed`` is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def disable_reducer(model: nn.Module | None) -> bool:
    """Turn off DDP's gradient reducer on ``model`` (the DDP-wrapped module); returns whether it was DDP.

    Sets ``require_backward_grad_sync = False`` (what ``DDP.no_sync()`` sets) permanently, so the reducer is
    never prepared for a backward pass. Gradients must then be averaged with :func:`all_reduce_gradients`.
    """
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        model.require_backward_grad_sync = False
        return True
    return False


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    seen: set[int] = set()
    params = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


@torch.no_grad()
def all_reduce_gradients(optimizer: torch.optim.Optimizer | Iterable[torch.Tensor],
                         group: object | None = None) -> int:
    """Average the gradients of ``optimizer``'s parameters over the process group with one ``all_reduce``.

    Args:
        optimizer: a ``torch.optim.Optimizer`` (or Lightning's ``LightningOptimizer``), or an iterable of
            parameters. The parameter order must be the same on every rank (it is: same model, same optimiser).
        group: process group (default: the world).

    Returns the number of parameters that hold a gradient afterwards. A no-op (returning the local count) when
    ``torch.distributed`` is not initialised or the world has one process.
    """
    inner = getattr(optimizer, "optimizer", optimizer)  # LightningOptimizer wraps the torch optimiser
    params = _optimizer_params(inner) if isinstance(inner, torch.optim.Optimizer) else list(inner)
    world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
    if world == 1 or not params:
        return sum(p.grad is not None for p in params)
    reference = next((p.grad for p in params if p.grad is not None), params[0])
    # at least float32 (bf16/fp16 gradients are summed in float32), never less than the gradients (64-true)
    device, dtype = reference.device, torch.promote_types(reference.dtype, torch.float32)
    pieces = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for p in params]
    flags = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=device)
    buffer = torch.cat([piece.to(device) for piece in pieces] + [flags])
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=group)
    buffer /= world
    offset = 0
    count = 0
    has_grad = (buffer[-len(params):] > 0).tolist()  # one device->host copy, not one per parameter
    for index, p in enumerate(params):
        n = p.numel()
        if has_grad[index]:
            grad = buffer[offset:offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = grad.clone()
            else:
                p.grad.copy_(grad)
            count += 1
        offset += n
    return count


@torch.no_grad()
def broadcast_buffers(module: nn.Module, src: int = 0, group: object | None = None) -> None:
    """Copy ``module``'s floating-point buffers from rank ``src`` to every rank (one flattened broadcast).

    DDP does this before every forward while its reducer is armed; with :func:`disable_reducer` segexpr calls
    it once per training batch instead, so BatchNorm running statistics (and other float buffers) stay identical
    on every rank, as under plain DDP. A no-op outside a multi-process group.
    """
    if distributed_world_size() == 1:
        return
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.broadcast(flat, src=src, group=group)
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b).to(b.dtype))
        offset += b.numel()


def optimizer_step(optimizer, world_size: int) -> None:
    """Average this optimiser's gradients over DDP ranks (one collective when ``world_size > 1``), then step it.

    ``optimizer`` is what ``LightningModule.optimizers()`` returns (Lightning's wrapper handles precision
    plugins: under a 16-mixed ``GradScaler`` the gradients are still scaled here, which averaging does not mind;
    the wrapper's ``step()`` unscales and skips non-finite steps on every rank alike).
    """
    if world_size > 1:
        all_reduce_gradients(optimizer)
    optimizer.step()


def gan_optimizers(discriminator: nn.Module, generator: nn.Module, coder: nn.Module, segmenter: nn.Module | None,
                   transfer: bool, lr: float, betas: tuple[float, float], segmenter_lr: float | None = None,
                   feature_classifier_lr: float | None = None) -> dict[str, torch.optim.Optimizer]:
    """Adam optimisers of the GAN, in stepping order.

    ``discriminator`` (global + local critics); ``feature_classifier`` (only when ``transfer``); ``generator``
    (generator + coder, plus ``segmenter`` as a second parameter group with ``segmenter_lr`` when it is trained
    jointly). The segmenter is a group of the generator optimiser rather than a fourth optimiser because
    ``toggle_optimizer`` enables exactly one optimiser's parameters: a separate segmenter optimiser would be
    frozen during the generator step, cutting the GAN -> segmenter gradient path.
    """
    d_params = list(discriminator.global_d.parameters()) + list(discriminator.local_d.parameters())
    optimizers = {"discriminator": adam(d_params, lr=lr, betas=betas)}
    if transfer:
        optimizers["feature_classifier"] = adam(list(discriminator.feature_classifier.parameters()),
                                                lr=feature_classifier_lr or lr, betas=betas)
    groups = [{"params": list(generator.parameters()) + list(coder.parameters())}]
    if segmenter is not None:
        groups.append({"params": list(segmenter.parameters()), "lr": segmenter_lr or lr})
    optimizers["generator"] = adam(groups, lr=lr, betas=betas)
    return optimizers


#: Devices whose Adam has a fused kernel (one call for every parameter instead of a loop over them).
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def adam(params: list[Any], **kwargs: Any) -> torch.optim.Adam:
    """``torch.optim.Adam``, fused where every parameter's device has the fused kernel.

    On a CPU, Adam's default is a Python loop over the parameters (its ``foreach`` path is for CUDA), and the GAN
    takes two or three optimiser steps per batch over hundreds of small tensors; the fused kernel gives the same
    update within float rounding (what it saves: ``examples/benchmarks/step_rewrites.py``).
    """
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fused = bool(tensors) and all(p.device.type in FUSED_ADAM_DEVICES and p.is_floating_point() for p in tensors)
    return torch.optim.Adam(params, fused=fused or None, **kwargs)


def check_finite(terms: dict[str, torch.Tensor], total: torch.Tensor, which: str, where: str) -> None:
    """Raise ``FloatingPointError`` naming the non-finite terms of a ``which`` loss (before its backward).

    Under DDP every rank raises when any rank's loss is non-finite (one tiny all-reduce): a rank that raised
    alone would leave the others waiting forever in the next gradient all-reduce.
    """
    finite = bool(torch.isfinite(total))
    world = distributed_world_size()
    if world > 1:
        flag = torch.tensor([0.0 if finite else 1.0], device=total.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if finite and float(flag) > 0:
            raise FloatingPointError(f"JointModule: non-finite {which} loss on another rank at {where} "
                                     f"(this rank {dist.get_rank()} of {world} stops with it)")
    if finite:
        return
    bad = [name for name, value in terms.items() if not bool(torch.isfinite(value).all())]
    rank = f" on rank {dist.get_rank()} of {world}" if world > 1 else ""
    raise FloatingPointError(f"JointModule: non-finite {which} loss ({', '.join(bad) or 'total'}){rank} at {where}: "
                             f"{ {k: float(v.detach()) for k, v in terms.items()} }")
