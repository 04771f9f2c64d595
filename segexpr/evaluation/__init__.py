"""Evaluating a trained :class:`~segexpr.modules.JointModule`: the SynthFACS edit benchmark, real-data evaluation,
the independent judge, and a Lightning callback that logs the benchmark during ``validate``/``test``.

* :mod:`~segexpr.evaluation.benchmark` -- :class:`SynthFACSEditBenchmark` (held-out SynthFACS identities with
  exact ground-truth edits) and :class:`BenchmarkResult`.
* :mod:`~segexpr.evaluation.real_data` -- :func:`evaluate_datamodule`, the subset without ground truth.
* :mod:`~segexpr.evaluation.judge` -- :func:`standard_judge`, the default judge of every judged figure (an
  ensemble of torchvision classifiers of other families than the GAN critic, shipped with the package), and
  :func:`train_judge` / :data:`STANDARD_RECIPE` that rebuild it.
* :mod:`~segexpr.evaluation.recognizer` -- :func:`train_recognizer` (a judge of the critic's family, kept for
  comparison), :func:`load_recognizer`, :func:`load_joint`.
* :mod:`~segexpr.evaluation.callback` -- :class:`EditMetricsCallback`.
* :mod:`~segexpr.evaluation.report` -- :data:`METRIC_DESCRIPTIONS`, :func:`markdown_table`.

The ``segexpr evaluate`` command (prints a markdown table and writes JSON) is :mod:`segexpr.cli.evaluate`.

Metric keys (all floats; see ``docs/evaluation.md`` for each metric):

==========================  ====================================================================================
``edit_expression_accuracy`` judge's argmax on the edit == target expression (needs a recogniser)
``edit_au_mae``              judge's AUs on the edit vs the target prototype AUs (needs a recogniser)
``edit_psnr/ssim/l1``        edit vs ``render(identity, prototype)`` (SynthFACS only)
``edit_unwanted_change``     L1 source -> edit outside ``changeable_area`` (exact on SynthFACS)
``fid``, ``kid_mean/std``    real = ground-truth renders, fake = edits (features named in the result)
``identity_cosine`` ...      :class:`~segexpr.metrics.IdentityPreservation` with the judge's features
``transfer_*``               the same for transfers (AU error / accuracy vs the reference's labels)
``leakage_*``                linear probe: expression from the AU-free feature (goal: chance)
``parsing_miou``             the module's segmenter on the ground-truth masks
``judge_accuracy_gt``        the judge on the ground-truth renders themselves: the ceiling of edit accuracy
==========================  ====================================================================================
"""
from __future__ import annotations

from segexpr.evaluation.benchmark import BenchmarkResult, SynthFACSEditBenchmark
from segexpr.evaluation.callback import EditMetricsCallback
from segexpr.evaluation.common import EditFn, TransferFn
from segexpr.evaluation.judge import JudgeEnsemble, standard_judge, train_judge
from segexpr.evaluation.real_data import evaluate_datamodule
from segexpr.evaluation.recognizer import load_joint, load_recognizer, train_recognizer
from segexpr.evaluation.report import METRIC_DESCRIPTIONS, RECOGNIZER_KEYS, markdown_table

__all__ = [
    "SynthFACSEditBenchmark", "BenchmarkResult", "EditMetricsCallback", "train_recognizer", "load_recognizer",
    "load_joint", "evaluate_datamodule", "markdown_table", "METRIC_DESCRIPTIONS", "RECOGNIZER_KEYS", "EditFn",
    "TransferFn", "JudgeEnsemble", "standard_judge", "train_judge",
]
