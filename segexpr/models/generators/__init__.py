"""Generators: expression codes, the global generator, differentiable region crops and the hierarchical model."""
from __future__ import annotations

from typing import Any

from torch import nn

from segexpr.models.generators.codes import ExpressionCoder
from segexpr.models.generators.global_generator import FiLMResidualBlock, GlobalGenerator, GlobalOutput
from segexpr.models.generators.hierarchical import REGION_SOURCES, GeneratorOutput, HierarchicalGenerator, RegionLayout
from segexpr.models.generators.local import LocalGenerator

GENERATORS: tuple[str, ...] = ("hierarchical", "global")


def create_generator(name: str = "hierarchical", **kwargs: Any) -> nn.Module:
    """Build a generator by name.

    Args:
        name: ``"hierarchical"`` -> :class:`HierarchicalGenerator` (``kwargs`` as its constructor);
            ``"global"`` -> a :class:`HierarchicalGenerator` with ``region_source="none"``, so both names
            return the same interface (``forward(image, code, ...) -> GeneratorOutput``, ``encode``,
            ``au_free_channels``).
        **kwargs: constructor arguments.
    """
    if name == "hierarchical":
        return HierarchicalGenerator(**kwargs)
    if name == "global":
        source = kwargs.pop("region_source", "none")
        if source != "none":
            raise ValueError(f"create_generator('global') is global-only; got region_source={source!r}")
        return HierarchicalGenerator(region_source="none", **kwargs)
    raise ValueError(f"unknown generator {name!r}; expected one of {GENERATORS}")


__all__ = [
    "ExpressionCoder", "FiLMResidualBlock", "GENERATORS", "GeneratorOutput", "GlobalGenerator", "GlobalOutput",
    "HierarchicalGenerator", "LocalGenerator", "REGION_SOURCES", "RegionLayout", "create_generator",
]
