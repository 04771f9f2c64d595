"""Input checks that never stop a GPU: the condition is evaluated on the device."""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["check_on_device"]


def check_on_device(condition: torch.Tensor, message: str, detail: Callable[[], str] | None = None) -> None:
    """Raise ``ValueError(message + detail())`` when the 0-d bool ``condition`` is false.

    On a CPU tensor the condition is read at once (reading it costs nothing there) and ``detail()`` (e.g. the
    offending values) is appended. On an accelerator the check is ``torch._assert_async``: the device raises
    when it gets there, and the host never waits for it (no synchronisation in the training loop); the error
    then carries ``message`` only.
    """
    if condition.device.type != "cpu":
        torch._assert_async(condition, message)
    elif not bool(condition):
        raise ValueError(message + (detail() if detail is not None else ""))
