"""Run several structurally identical modules (one per region) as one batched call.

The regions' local generators and local critics have the same architecture and different weights. Looping over
them launches every kernel once per region; :func:`stacked_call` stacks their parameters along a new leading
dimension (inside the forward pass, so gradients reach each module's own parameters and the state-dict keys are
unchanged) and evaluates the shared architecture once with ``torch.func.functional_call`` under ``torch.func.vmap``
(convolutions with a batched weight become one grouped convolution, linears one batched matmul).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap


def can_stack(modules: Sequence[nn.Module]) -> bool:
    """Whether ``modules`` can run as one batched call: at least two, same parameter/buffer names and shapes,
    no parametrisations (e.g. spectral norm, whose power iteration updates buffers in place)."""
    if len(modules) < 2:
        return False
    first = modules[0]
    if any(hasattr(m, "parametrizations") for m in first.modules()):
        return False
    shapes = [(n, t.shape, t.dtype) for n, t in (*first.named_parameters(), *first.named_buffers())]
    return all([(n, t.shape, t.dtype) for n, t in (*m.named_parameters(), *m.named_buffers())] == shapes
               for m in modules[1:])


def stacked_call(modules: Sequence[nn.Module], args: Sequence[Any], in_dims: Sequence[int | None],
                 out_dims: int = 0, method: str = "forward") -> Any:
    """``[getattr(m, method)(*args_r) for m in modules]`` as one vmapped call.

    Args:
        modules: structurally identical modules (:func:`can_stack`), ``R`` of them.
        args: the call's positional arguments; a tensor with ``in_dims[i] = d`` holds module ``r``'s argument at
            index ``r`` of dimension ``d``; ``None`` passes the argument unchanged to every module.
        in_dims: one entry per argument.
        out_dims: the dimension of the outputs that indexes the modules.
        method: the method to call (``"forward"`` by default).

    Returns:
        The outputs of the method (same structure), stacked along ``out_dims``.
    """
    base = modules[0]
    params, buffers = _stacked_tensors(modules, "named_parameters"), _stacked_tensors(modules, "named_buffers")

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *call_args: Any) -> Any:
        if method == "forward":
            return functional_call(base, (p, b), tuple(call_args))
        return _call_method(base, p, b, method, call_args)

    return vmap(one, in_dims=(0, 0, *in_dims), out_dims=out_dims)(params, buffers, *args)


def _stacked_tensors(modules: Sequence[nn.Module], kind: str) -> dict[str, torch.Tensor]:
    """``{name: stack of the modules' tensors of that name}`` for ``kind`` ``"named_parameters"`` or
    ``"named_buffers"``. Each module's tensors are listed once: looking them up again for every name (a walk of
    the module tree each time) cost more than the batched call itself."""
    per_module = [dict(getattr(module, kind)()) for module in modules]
    return {name: torch.stack([tensors[name] for tensors in per_module]) for name in per_module[0]}


class _MethodCall(nn.Module):
    """Wraps ``module.method`` as a ``forward`` so ``functional_call`` can swap the module's tensors."""

    def __init__(self, module: nn.Module, method: str) -> None:
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args: Any) -> Any:
        return getattr(self.module, self.method)(*args)


def _call_method(base: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], method: str,
                 args: Sequence[Any]) -> Any:
    wrapper = _MethodCall(base, method)
    tensors = {f"module.{k}": v for k, v in {**params, **buffers}.items()}
    return functional_call(wrapper, tensors, tuple(args))
