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


#: Checkpoint entry where the files that initialised a module's weights are recorded (provenance only).
PROVENANCE_KEY = "segexpr_initialized_from"


def strip_weight_sources(checkpoint: dict[str, Any], *paths: tuple[str, ...]) -> dict[str, Any]:
    """Move weight-file arguments out of a checkpoint's hyperparameters into ``checkpoint[PROVENANCE_KEY]``.

    A pretrained file initialises weights once, at construction; the checkpoint then holds those weights.
    Leaving the path in the hyperparameters would make ``load_from_checkpoint`` read the file again (and fail
    once it is gone), so each ``paths`` entry (keys into the hyperparameters, e.g. ``("pretrained",)`` or
    ``("segmenter", "pretrained_backbone")``) is set to ``None`` there and recorded under ``PROVENANCE_KEY``.
    Nested dicts are copied, never modified in place (they are shared with the live ``hparams``).
    """
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, Mapping):
        return {}
    hparams = checkpoint["hyper_parameters"] = dict(hparams)
    recorded = dict(checkpoint.get(PROVENANCE_KEY) or {})
    for path in paths:
        holder = hparams
        for key in path[:-1]:
            if not isinstance(holder.get(key), Mapping):
                holder = None
                break
            holder[key] = dict(holder[key])
            holder = holder[key]
        if holder is not None and holder.get(path[-1]) not in (None, False):
            recorded[".".join(path)] = holder[path[-1]]
            holder[path[-1]] = None
    if recorded:
        checkpoint[PROVENANCE_KEY] = recorded
    return recorded
