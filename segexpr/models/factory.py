"""Networks from plain configuration dicts, the form ``JointModule`` and its YAML take them in.

A config is the keyword arguments of the part's factory, with ``name`` selecting the architecture::

    build_network("segmenter", {"name": "unet", "base_channels": 16})
    build_network("generator", {"name": "hierarchical", "base_channels": 32, "crop_size": 24})
    build_network("coder", {"code_dim": 32})
    build_network("discriminator", {"image_size": 64, "n_layers": 4})

The built network remembers its config as ``network.config`` (so a JointModule given ready networks can still
record how to rebuild them). A key the factory does not take is refused with an error naming it and the
accepted keys: a configuration key never silently does nothing.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from torch import nn

from segexpr.labels import ALL_REGION_GROUPS
from segexpr.models.discriminators import AUDiscriminator, create_discriminator
from segexpr.models.generators import ExpressionCoder, HierarchicalGenerator, create_generator
from segexpr.models.segmenters import create_segmenter

__all__ = ["EDITING_NETWORKS", "NETWORK_KINDS", "build_editing_networks", "build_generator_and_coder", "build_network",
           "build_part", "build_region_segmenter", "network_config"]


def _create_coder(**kwargs: Any) -> ExpressionCoder:
    return ExpressionCoder(**kwargs)


#: part -> (factory, default ``name`` or None when the factory takes no name, class whose signature lists options)
_FACTORIES: dict[str, tuple[Callable[..., nn.Module], str | None, tuple[type, ...]]] = {
    "segmenter": (create_segmenter, "bisenet", ()),
    "generator": (create_generator, "hierarchical", (HierarchicalGenerator,)),
    "coder": (_create_coder, None, (ExpressionCoder,)),
    "discriminator": (create_discriminator, "au", (AUDiscriminator,)),
}
NETWORK_KINDS: tuple[str, ...] = tuple(_FACTORIES)


def _accepted(kind: str, config: Mapping[str, Any]) -> list[str]:
    if kind == "segmenter":
        from segexpr.models.segmenters import SEGMENTERS
        cls = SEGMENTERS.get(str(config.get("name", "bisenet")).lower())
        # the factory's own options (e.g. an architecture variant) count as well as the class's
        classes = ((cls,) if cls is not None else ()) + (create_segmenter,)
    else:
        classes = _FACTORIES[kind][2]
    skip = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    names = {n for c in classes for n, p in inspect.signature(c).parameters.items() if n != "self" and p.kind not in skip}
    return sorted(names | ({"name"} if _FACTORIES[kind][1] else set()))


def build_network(kind: str, config: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the ``kind`` network (``segmenter``/``generator``/``coder``/``discriminator``) from ``config``.

    Raises:
        ValueError: unknown ``kind``, or a key the factory does not accept (named, with the accepted keys).
        TypeError: ``config`` is not a mapping.
    """
    if kind not in _FACTORIES:
        raise ValueError(f"unknown network kind {kind!r}; expected one of {NETWORK_KINDS}")
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise TypeError(f"the {kind} config must be a dict of its factory's arguments, got {type(config).__name__}")
    if "class_path" in config or "init_args" in config:
        raise ValueError(f"the {kind} config is a class_path/init_args dict (segexpr < 0.2 wrapped each part in its "
                         f"LightningModule); give the network's own arguments instead, e.g. "
                         f"{{'name': ..., 'base_channels': ...}}. Old checkpoints: segexpr.io.upgrade_checkpoint")
    factory, default_name, _ = _FACTORIES[kind]
    kwargs = dict(config)
    accepted = _accepted(kind, kwargs)
    unknown = sorted(k for k in kwargs if accepted and k not in accepted)
    if unknown:
        raise ValueError(f"{kind} config: unknown key(s) {unknown}; the {kind} network accepts {accepted}")
    if default_name is not None:
        name = kwargs.pop("name", default_name)
        network = factory(name, **kwargs)
    else:
        network = factory(**kwargs)
    network.config = dict(config)
    return network


def network_config(network: nn.Module | None) -> dict[str, Any] | None:
    """The config a network was built from (``build_network`` records it), else ``None``."""
    config = getattr(network, "config", None)
    return dict(config) if isinstance(config, Mapping) else None


#: The networks that edit an image (what inference needs), in construction order.
EDITING_NETWORKS: tuple[str, ...] = ("segmenter", "generator", "coder")


def build_part(kind: str, value: Any, defaults: Mapping[str, Any], owner: str = "JointModule") -> nn.Module:
    """One network from its config dict (``defaults`` filled in), or ``value`` itself when it is a network.

    ``region_source`` and ``image_size`` are the owner's: a config that sets them differently is refused.
    """
    if isinstance(value, nn.Module):
        return value
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(f"{kind} must be a config dict or a network, got {type(value).__name__}")
    config = dict(value or {})
    for key, default in defaults.items():
        if key in config and config[key] != default and key in ("region_source", "image_size"):
            raise ValueError(f"the {kind} config has {key}={config[key]!r} but {owner} has {key}={default!r}")
        config.setdefault(key, default)
    return build_network(kind, config)


def build_editing_networks(segmenter: Any, generator: Any, coder: Any, region_source: str,
                           owner: str = "JointModule") -> dict[str, nn.Module | None]:
    """The segmenter, generator and coder (configs or networks), built to fit each other.

    The generator takes ``region_source`` and the coder's ``code_dim``; ``region_source="segmenter"`` needs a
    segmenter and regions with a parsing-class group. The one construction shared by training
    (:func:`segexpr.modules.joint_setup.build_joint_networks` builds the discriminator between the two steps, so
    the random initialisation keeps its order) and inference (:mod:`segexpr.inference.checkpoints`).
    """
    nets = build_generator_and_coder(generator, coder, region_source, owner)
    return {"segmenter": build_region_segmenter(segmenter, nets["generator"], region_source, owner), **nets}


def build_generator_and_coder(generator: Any, coder: Any, region_source: str, owner: str = "JointModule"
                              ) -> dict[str, nn.Module]:
    """The coder, then the generator with ``region_source`` and the coder's ``code_dim``, checked to agree."""
    coder_net = build_part("coder", coder, {}, owner)
    generator_net = build_part("generator", generator, {"region_source": region_source,
                                                         "code_dim": coder_net.code_dim}, owner)
    if generator_net.region_source != region_source:
        raise ValueError(f"the generator was built with region_source={generator_net.region_source!r} but {owner} "
                         f"has region_source={region_source!r}")
    if generator_net.code_dim != coder_net.code_dim:
        raise ValueError(f"generator code_dim {generator_net.code_dim} differs from the coder's {coder_net.code_dim}")
    return {"generator": generator_net, "coder": coder_net}


def build_region_segmenter(segmenter: Any, generator: nn.Module, region_source: str, owner: str = "JointModule"
                           ) -> nn.Module | None:
    """The segmenter (config or network; ``None`` stays ``None``), checked against the generator's regions:
    ``region_source="segmenter"`` needs one, and every region needs a parsing-class group."""
    segmenter_net = build_part("segmenter", segmenter, {}, owner) if segmenter is not None else None
    if region_source == "segmenter":
        if segmenter_net is None:
            raise ValueError("region_source='segmenter' needs a segmenter (a config dict such as "
                             "{'name': 'unet'} or a network returning parsing logits)")
        unknown = [r for r in generator.regions if r not in ALL_REGION_GROUPS]
        if unknown:
            raise ValueError(f"regions {unknown} have no parsing-class group in ALL_REGION_GROUPS "
                             f"(known: {sorted(ALL_REGION_GROUPS)})")
    return segmenter_net
