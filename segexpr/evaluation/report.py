"""Reporting evaluation results: the meaning of every metric key and the markdown table of a result.

* :data:`METRIC_DESCRIPTIONS` -- one line per metric key (``↑`` higher is better, ``↓`` lower is better).
* :data:`RECOGNIZER_KEYS` -- the keys that need an independent recogniser.
* :func:`markdown_table` -- ``| metric | value | meaning |`` rows, known keys first.
"""
from __future__ import annotations

import math
from typing import Mapping

#: One-line meaning of each metric key, for tables (``↑`` higher is better, ``↓`` lower is better).
METRIC_DESCRIPTIONS: dict[str, str] = {
    "edit_expression_accuracy": "↑ judge says the edit shows the target expression (chance 1/8)",
    "edit_au_mae": "↓ judge's AUs on the edit vs the target AUs",
    "edit_psnr": "↑ dB, edit vs render(source identity, target AUs)",
    "edit_ssim": "↑ edit vs ground-truth render",
    "edit_l1": "↓ edit vs ground-truth render",
    "edit_unwanted_change": "↓ L1 source→edit where no AU can change anything",
    "fid": "↓ FID, ground-truth renders vs edits",
    "kid_mean": "↓ KID (mean over subsets)",
    "kid_std": "KID standard deviation over subsets",
    "identity_cosine": "↑ cosine(source, edit) of the judge's features",
    "impostor_cosine": "cosine(edit, other identities' sources)",
    "identity_gap": "↑ identity_cosine - impostor_cosine",
    "identity_distance": "↓ dlib face descriptor distance (not ArcFace), source vs edit; < 0.6 = same person",
    "transfer_expression_accuracy": "↑ judge says the transfer shows the reference's expression",
    "transfer_au_mae": "↓ judge's AUs on the transfer vs the reference's AUs",
    "transfer_psnr": "↑ dB, transfer vs render(source identity, reference AUs)",
    "transfer_ssim": "↑ transfer vs ground-truth render",
    "transfer_l1": "↓ transfer vs ground-truth render",
    "transfer_unwanted_change": "↓ L1 source→transfer where no AU can change anything",
    "leakage_accuracy": "linear probe: expression from the AU-free feature (held-out identities)",
    "leakage_chance": "1 / 8",
    "leakage_majority": "always answering the most frequent probe-training class",
    "leakage": "→0 probe accuracy - max(chance, majority)",
    "parsing_miou": "↑ the module's segmenter on the ground-truth masks",
    "judge_accuracy_gt": "the judge on the ground-truth renders (ceiling of edit accuracy)",
    "judge_au_mae_gt": "the judge's AU error on the ground-truth renders (floor of edit AU error)",
    "judge_accuracy_source": "the judge on the unedited test sources",
}

#: Keys that need a recogniser (logged only when one is given).
RECOGNIZER_KEYS = ("edit_expression_accuracy", "edit_au_mae", "identity_cosine", "impostor_cosine", "identity_gap",
                   "transfer_expression_accuracy", "transfer_au_mae", "judge_accuracy_gt", "judge_au_mae_gt",
                   "judge_accuracy_source")


def markdown_table(metrics: Mapping[str, float], descriptions: Mapping[str, str] = METRIC_DESCRIPTIONS) -> str:
    """A two/three-column markdown table of ``metrics`` (known keys first, in :data:`METRIC_DESCRIPTIONS` order)."""
    keys = [k for k in descriptions if k in metrics] + [k for k in metrics if k not in descriptions]
    lines = ["| metric | value | meaning |", "| --- | ---: | --- |"]
    for key in keys:
        lines.append(f"| {key} | {format_value(metrics[key])} | {descriptions.get(key, '')} |")
    return "\n".join(lines)


def format_value(value: float) -> str:
    """A metric for a table: 2 decimals from 10 up, else 4; ``inf``/``nan`` as words."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
