"""LightningModules: each part trains alone, and ``JointModule`` composes the networks under one GAN schedule."""
from segexpr.modules.discriminator import AUDiscriminatorModule, real_region_boxes
from segexpr.modules.ema import ExponentialMovingAverage
from segexpr.modules.generator import GeneratorModule, generator_region_inputs
from segexpr.modules.joint import TASKS, JointModule
from segexpr.modules.samples import log_image_grid, sample_grid, sample_grid_columns
from segexpr.modules.segmenter import SegmenterModule

__all__ = [
    "AUDiscriminatorModule", "ExponentialMovingAverage", "GeneratorModule", "JointModule", "SegmenterModule",
    "TASKS", "generator_region_inputs", "log_image_grid", "real_region_boxes", "sample_grid", "sample_grid_columns",
]
