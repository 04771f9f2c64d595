"""Losses used by segexpr, each a small documented function.

Segmentation losses live in :mod:`segexpr.losses.segmentation`; adversarial, classification,
reconstruction, swap-consistency and attention losses in :mod:`segexpr.losses.gan`.
"""
from segexpr.losses.segmentation import *  # noqa: F401,F403
from segexpr.losses.gan import *  # noqa: F401,F403
