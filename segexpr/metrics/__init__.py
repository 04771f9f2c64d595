"""Evaluation metrics (torchmetrics ``Metric`` subclasses that sync under DDP). See ``docs/evaluation.md``.

* parsing: :class:`ParsingMetrics` (mIoU, per-class F1);
* pixels: :class:`GroundTruthMetrics` (PSNR/SSIM/L1 vs ground truth), :class:`UnwantedChange`
  (L1 outside the expression area, :func:`expression_area`);
* distributions: :func:`build_fid` / :func:`build_kid` with a pluggable :class:`FeatureExtractor`
  (:class:`InceptionFeatures`, :class:`RecognizerFeatures`, :class:`ModuleFeatures`);
* expression: :class:`ExpressionEditMetrics` (accuracy / AU error judged by an independent recogniser,
  :func:`assert_independent`), :class:`IdentityLeakage` (linear probe on the AU-free feature);
* identity: :class:`IdentityPreservation` (embedding cosine, with an impostor baseline).
"""
from segexpr.metrics.distribution import (
    INCEPTION_WEIGHTS_ENV,
    FeatureExtractor,
    InceptionFeatures,
    InceptionWeightsUnavailable,
    ModuleFeatures,
    RecognizerFeatures,
    build_feature_extractor,
    build_fid,
    build_kid,
    find_inception_weights,
    inception_available,
)
from segexpr.metrics.expression import (
    ExpressionEditMetrics,
    IdentityLeakage,
    assert_independent,
    linear_probe_accuracy,
    recognise,
)
from segexpr.metrics.identity import IdentityPreservation
from segexpr.metrics.image import GroundTruthMetrics, UnwantedChange, expression_area
from segexpr.metrics.parsing import ParsingMetrics, parsing_scores

__all__ = [
    "ParsingMetrics", "parsing_scores",
    "GroundTruthMetrics", "UnwantedChange", "expression_area",
    "FeatureExtractor", "InceptionFeatures", "RecognizerFeatures", "ModuleFeatures", "InceptionWeightsUnavailable",
    "INCEPTION_WEIGHTS_ENV", "build_feature_extractor", "build_fid", "build_kid", "find_inception_weights",
    "inception_available",
    "ExpressionEditMetrics", "IdentityLeakage", "assert_independent", "linear_probe_accuracy", "recognise",
    "IdentityPreservation",
]
