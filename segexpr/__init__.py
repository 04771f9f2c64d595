"""segexpr: segmentation-conditioned hierarchical GANs and disentangled expression transfer."""
__version__ = "0.1.0"
