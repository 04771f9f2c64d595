"""Networks: segmenters, generators, discriminators and region masks. Build them by name with the factories."""
from segexpr.models.discriminators import AUDiscriminator, FeatureClassifier, GlobalDiscriminator, LocalDiscriminator
from segexpr.models.generators import ExpressionCoder, HierarchicalGenerator, create_generator
from segexpr.models.segmenters import BiSeNet, UNet, create_segmenter, list_segmenters

__all__ = [
    "AUDiscriminator", "BiSeNet", "ExpressionCoder", "FeatureClassifier", "GlobalDiscriminator",
    "HierarchicalGenerator", "LocalDiscriminator", "UNet", "create_generator", "create_segmenter", "list_segmenters",
]
