"""Several generator passes as one call on their concatenated batches.

One training step runs the generator five times on batches of the same size with the same region inputs: the
edit, the self-reconstruction and the swap on the source images (one encoding, three codes), then the cycle and
the swap-back on two of those results (both back to the source's code). Every sample of a
:class:`~segexpr.models.generators.HierarchicalGenerator` pass is computed on its own (instance and group norms, no
batch statistics, no randomness), so running passes as one call on the concatenated batch gives each pass's
outputs as a separate call would, within float rounding, with a fifth to a half of the calls: on a CPU the
per-call cost of the many small kernels is a large share of the generator's time.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import torch

from segexpr.models.generators.hierarchical import GeneratorOutput, RegionLayout


class Pass(NamedTuple):
    """One generator call: ``image`` ``[B, 3, H, W]``, ``code`` ``[B, code_dim]``; ``au_free`` is
    ``generator.encode(image)`` when already computed (``None``: the generator encodes ``image``)."""

    image: torch.Tensor
    code: torch.Tensor
    au_free: torch.Tensor | None = None


def repeat_region_inputs(region_kwargs: Mapping[str, Any], times: int) -> dict[str, Any]:
    """The generator's region keyword arguments (``region_masks``, ``landmarks``, ``layout``) for ``times``
    copies of the batch, concatenated along the batch axis (gradients reach the given tensors from every copy)."""
    def repeat(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.repeat(times, *([1] * (tensor.dim() - 1)))

    repeated: dict[str, Any] = {}
    for key, value in region_kwargs.items():
        if value is None:
            repeated[key] = None
        elif isinstance(value, RegionLayout):
            repeated[key] = RegionLayout(boxes=repeat(value.boxes), fusion_weights=repeat(value.fusion_weights))
        elif isinstance(value, torch.Tensor):
            repeated[key] = repeat(value)
        else:
            raise TypeError(f"region input {key!r}: expected a tensor, a RegionLayout or None, got {type(value).__name__}")
    return repeated


def generator_passes(generator: torch.nn.Module, passes: Sequence[Pass], region_kwargs: Mapping[str, Any]
                     ) -> list[GeneratorOutput]:
    """``[generator(p.image, p.code, **region_kwargs, au_free=p.au_free) for p in passes]`` as one call.

    Every pass must have the batch size of the region inputs (they are the same images' regions, or the regions
    of results made from those images), and either all passes or none give ``au_free``.

    Returns:
        One :class:`GeneratorOutput` per pass, in order.
    """
    if not passes:
        return []
    if len(passes) == 1:
        only = passes[0]
        return [generator(only.image, only.code, **region_kwargs, au_free=only.au_free)]
    given = [p.au_free is not None for p in passes]
    if any(given) and not all(given):
        raise ValueError("generator_passes: give au_free for every pass or for none")
    sizes = [p.image.shape[0] for p in passes]
    if len(set(sizes)) != 1:
        raise ValueError(f"generator_passes: every pass needs the same batch size, got {sizes}")
    out = generator(torch.cat([p.image for p in passes]), torch.cat([p.code for p in passes]),
                    **repeat_region_inputs(region_kwargs, len(passes)),
                    au_free=torch.cat([p.au_free for p in passes]) if all(given) else None)
    return out.split(sizes)
