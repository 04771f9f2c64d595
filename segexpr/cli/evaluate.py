"""``segexpr evaluate``: score a JointModule checkpoint, print a markdown table and write JSON.

``segexpr evaluate --ckpt JOINT.ckpt [--data synthetic|CONFIG.yaml]`` runs the SynthFACS benchmark
(:class:`~segexpr.evaluation.SynthFACSEditBenchmark`) or, with a LightningCLI-style data config, the real-data
subset (:func:`~segexpr.evaluation.evaluate_datamodule`). Edits are judged by the standard judge shipped with
segexpr (:func:`~segexpr.evaluation.standard_judge`) unless ``--recognizer`` names another; the output gives
the judge's own accuracy on ground truth, per-expression accuracy, the confusion matrix (``--plot`` draws it)
and the spread across the judge ensemble's members.
"""
from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
from torch import nn

from segexpr.labels import EXPRESSIONS, NUM_EXPRESSIONS
from segexpr.evaluation import (
    BenchmarkResult,
    SynthFACSEditBenchmark,
    evaluate_datamodule,
    load_joint,
    load_recognizer,
    markdown_table,
    standard_judge,
)
from segexpr.files import atomic_path, refuse_existing, write_text
from segexpr.io.checkpoints import CheckpointError
from segexpr.metrics import assert_independent


def _load_datamodule(path: Path) -> pl.LightningDataModule:
    """A DataModule from a YAML config: ``data: {class_path, init_args}`` (LightningCLI style) or those keys at top."""
    import yaml

    config = yaml.safe_load(path.read_text())
    spec = config.get("data", config) if isinstance(config, dict) else None
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{path}: expected a 'data:' section with class_path/init_args (as LightningCLI writes it)")
    module_name, _, class_name = str(spec["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"{path}: cannot import data class_path {spec['class_path']!r}: {err}") from err
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningDataModule)):
        raise ValueError(f"{path}: {spec['class_path']} is not a LightningDataModule")
    return cls(**dict(spec.get("init_args") or {}))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="segexpr evaluate", description=(
        "Evaluate a JointModule checkpoint: expression accuracy / AU error judged by an independent recogniser, "
        "PSNR/SSIM against SynthFACS ground truth, unwanted change, FID/KID, parsing mIoU, transfer and identity "
        "leakage. Prints a markdown table and writes JSON."))
    parser.add_argument("--ckpt", type=Path, required=True, help="JointModule checkpoint")
    parser.add_argument("--recognizer", type=Path, default=None,
                        help="judge edits with this independently trained AUDiscriminatorModule checkpoint instead of "
                             "the standard judge shipped with segexpr")
    parser.add_argument("--no-judge", action="store_true",
                        help="skip the judge: only the recogniser-free metrics are reported")
    parser.add_argument("--plot", type=Path, default=None, metavar="PNG",
                        help="also draw the judge's confusion matrix of the label edits to this PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out / --plot file")
    parser.add_argument("--data", default="synthetic", help="'synthetic' (SynthFACS held-out identities, exact ground "
                        "truth) or a YAML file with a LightningCLI 'data:' section (real data, a subset of metrics)")
    parser.add_argument("--size", type=int, default=None, help="benchmark image size (default: the model's)")
    parser.add_argument("--count", type=int, default=32, help="source faces (SynthFACS: each edited to 8 expressions)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--fid-features", default="auto", choices=("auto", "recognizer", "inception", "none"))
    parser.add_argument("--out", type=Path, default=Path("results.json"), help="JSON output path")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.no_judge and args.recognizer is not None:
        parser.error("--no-judge and --recognizer exclude each other")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        parser.error(f"--plot must name a .png file, got {args.plot}")
    try:  # before any work: nothing is lost and no time is wasted
        refuse_existing([p for p in (args.out, args.plot) if p is not None], overwrite=args.overwrite)
    except FileExistsError as err:
        parser.error(str(err))
    return args


def _check_data(args: argparse.Namespace) -> None:
    """Refuse a bad ``--data`` before loading any checkpoint."""
    if args.data != "synthetic":
        data_path = Path(args.data)
        if data_path.suffix.lower() not in (".yaml", ".yml"):
            raise SystemExit(f"segexpr evaluate: unknown --data {args.data!r}; expected 'synthetic' or a .yaml config")
        if not data_path.is_file():
            raise SystemExit(f"segexpr evaluate: --data config not found: {data_path}")


def _load_models(args: argparse.Namespace) -> tuple[nn.Module, nn.Module | None]:
    """The JointModule and the judge (or ``None``); a judge that is not independent of the GAN is refused."""
    try:
        module = load_joint(args.ckpt, map_location=args.device)
        if args.no_judge:
            recognizer = None
        elif args.recognizer is not None:
            recognizer = load_recognizer(args.recognizer, map_location=args.device)
        else:
            recognizer = standard_judge(map_location=args.device)
    except CheckpointError as err:
        raise SystemExit(f"segexpr evaluate: {err}") from err
    if recognizer is not None:
        try:
            assert_independent(recognizer, module.discriminator)
        except ValueError as err:
            raise SystemExit(f"segexpr evaluate: --recognizer is not independent of the GAN: {err}") from err
    return module, recognizer


def _evaluate(args: argparse.Namespace, module: nn.Module, recognizer: nn.Module | None
              ) -> tuple[BenchmarkResult, dict[str, Any]]:
    """The result on ``--data`` and the description of that data for the JSON."""
    if args.data == "synthetic":
        size = args.size or module.image_size
        benchmark = SynthFACSEditBenchmark(size=size, count=args.count, seed=args.seed, batch_size=args.batch_size)
        result = benchmark.evaluate(module, recognizer, fid_features=args.fid_features, device=args.device)
        return result, {"data": "synthetic", "split": "test (held-out identities)", "size": size,
                        "sources": args.count, "edits": args.count * NUM_EXPRESSIONS, "seed": args.seed}
    datamodule = _load_datamodule(Path(args.data))
    result = evaluate_datamodule(module, datamodule, recognizer, count=args.count, fid_features=args.fid_features,
                                 device=args.device)
    return result, {"data": str(args.data), "sources": args.count}


def main(argv: Sequence[str] | None = None) -> int:
    """``segexpr evaluate``: see :func:`parse_args`. Returns 0; errors raise with a message naming the problem."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    _check_data(args)
    module, recognizer = _load_models(args)
    result, data = _evaluate(args, module, recognizer)
    command = "segexpr evaluate " + " ".join(shlex.quote(a) for a in argv)
    table = markdown_table(result.metrics)
    print(f"## segexpr evaluate: {args.ckpt}\n")
    print(table)
    judge_name = "none" if recognizer is None else (str(args.recognizer) if args.recognizer else "standard judge")
    print(f"\njudge: {judge_name} ({result.judge or 'none'}); FID/KID features: {result.features or 'none'}")
    print(judge_summary(result))
    if result.confusion is not None:
        print("\n" + confusion_table(result.confusion))
    for note in result.notes:
        print(f"note: {note}")
    payload = {"command": command, "checkpoint": str(args.ckpt), **data, **result.as_dict(),
               "judge": judge_name, "judge_network": result.judge}
    write_text(args.out, json.dumps(payload, indent=2, allow_nan=False) + "\n", overwrite=args.overwrite)
    print(f"wrote {args.out}")
    if args.plot is not None and result.confusion is not None:
        from segexpr.visualize import confusion_image

        with atomic_path(args.plot, overwrite=args.overwrite) as tmp:
            confusion_image(result.confusion, EXPRESSIONS, title=f"judged expression of label edits: {args.ckpt.name}"
                            ).save(tmp, format="PNG")
        print(f"wrote {args.plot}")
    return 0


def judge_summary(result: BenchmarkResult) -> str:
    """The judge's own ground-truth accuracy and its members' spread on the edits, one line each."""
    metrics, lines = result.metrics, []
    if "judge_accuracy_gt" in metrics:
        lines.append(f"judge accuracy on ground-truth renders: {metrics['judge_accuracy_gt']:.3f} "
                     "(the ceiling of the edits' expression accuracy)")
    if result.member_accuracy:
        values = result.member_accuracy.values()
        lines.append(f"judge ensemble: {len(result.member_accuracy)} members read the edits at "
                     f"{min(values):.3f}-{max(values):.3f} (ensemble "
                     f"{metrics.get('edit_expression_accuracy', float('nan')):.3f})")
    return "\n".join(lines)


def confusion_table(confusion: list[list[int]]) -> str:
    """Markdown table: one row per target expression, one column per judged expression, then its accuracy."""
    head = "| target \\ judged | " + " | ".join(EXPRESSIONS) + " | accuracy |"
    lines = [head, "|" + " --- |" * (len(EXPRESSIONS) + 2)]
    for name, row in zip(EXPRESSIONS, confusion):
        total = sum(row)
        accuracy = f"{row[EXPRESSIONS.index(name)] / total:.2f}" if total else "-"
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + f" | {accuracy} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
