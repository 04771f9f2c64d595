"""Recording a module's own constructor arguments as its hyperparameters."""
from __future__ import annotations

import inspect
from typing import Any, Mapping


def constructor_arguments(cls: type, frame_locals: Mapping[str, Any]) -> dict[str, Any]:
    """``cls.__init__``'s arguments, read from the ``locals()`` of that ``__init__``.

    Pass the result to ``save_hyperparameters``. Called without arguments, Lightning's ``save_hyperparameters``
    records whatever hyperparameters LightningCLI put in its context, and LightningCLI puts the *top-level*
    model's configuration there while it builds nested modules too: a ``GeneratorModule`` inside a
    ``JointModule`` config would record the ``JointModule``'s arguments and could not be rebuilt from its
    checkpoint. An explicit dict is recorded as given.
    """
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = inspect.signature(cls.__init__).parameters
    return {name: frame_locals[name] for name, p in parameters.items()
            if name != "self" and p.kind not in skip and name in frame_locals}
