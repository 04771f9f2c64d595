"""Segmentation losses (OHEM cross-entropy, Dice)."""
__all__: list = []
