"""Adversarial, classification, reconstruction, swap-consistency and attention losses."""
__all__: list = []
