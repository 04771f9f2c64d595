"""The README's main job, end to end: wall clock, where the time goes, and how good the result is.

    python examples/benchmarks/main_job.py                          # seed 0, the command's own thread choice
    python examples/benchmarks/main_job.py --seeds 0 1 --threads 1 --baseline-json old/main_job.json
    python examples/benchmarks/main_job.py --set model.init_args.n_critic=2 --out-dir /tmp/try   # a recipe change

For each of ``--seeds`` it runs the README's first command, ``segexpr fit --config examples/configs/synthetic.yaml``
(the console command installed beside this interpreter; the config by its absolute path), in a fresh temporary
folder (or ``--work-dir``/seed_N), exactly as a user would:

* seed 0 is the config's own ``seed_everything``: nothing is added; another seed appends
  ``--seed_everything N`` (the output says so);
* ``--threads N`` is passed through; without it the command picks its own thread count (the cores this process
  may use), which is then read from the command's ``segexpr: using N torch thread(s)`` line;
* ``--set KEY=VALUE`` appends ``--KEY VALUE`` (e.g. ``--set model.init_args.n_critic=2``) and ``--config``
  replaces the config: the command then differs from the README's, and the outputs say so at the top.

The wall clock runs from starting the process to its exit, once ``result.png`` and ``checkpoints/last.ckpt`` exist
in its run folder (checked after the exit; a missing one is an error). The run folder's ``phase_times.json``
(:class:`segexpr.callbacks.PhaseTimes`, listed in synthetic.yaml) splits the fit into start-up, warm-up batches,
GAN batches, data wait, validation, result image, checkpoint saving and the rest; ``exit`` is the wall clock after
``on_fit_end`` (teardown, interpreter exit). Then ``last.ckpt`` is judged by the standard judge
(:func:`segexpr.evaluation.standard_judge`) on SynthFACS's 64 held-out identities
(``SynthFACSEditBenchmark(size=<the model's>, count=64, seed=0)``, no FID): expression accuracy of label edits,
transfer AU error, unwanted change, parsing mIoU and the judge's accuracy on the ground truth.

Targets printed beside the numbers: at most 10 minutes of wall clock; expression accuracy per seed against
``--baseline-json`` (this script's JSON, matched by seed, or a ``segexpr evaluate`` JSON, for every seed).

Outputs (script-owned): ``docs/results/main_job.json`` (one object per seed, and the machine: CPU model, cores,
torch threads, load average before each start) and ``docs/results/main_job.md`` (the table). An existing output is
an error naming it unless ``--overwrite``; so is a non-empty ``--work-dir``/seed_N folder; both are checked, and
the judge is loaded, before any training starts. The full run takes the main job's time per seed (tens of minutes
on a loaded CPU): not a test.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[2]
README_CONFIG = ROOT / "examples" / "configs" / "synthetic.yaml"
DEFAULT_OUT_DIR = ROOT / "docs" / "results"
OUT_NAME = "main_job"
TARGET_WALL_S = 600.0
EVAL_COUNT = 64
#: the benchmark's metrics this script reports, in its table's order: key -> column title
METRICS = {"edit_expression_accuracy": "expression acc.", "transfer_au_mae": "transfer AU error",
           "edit_unwanted_change": "unwanted change", "parsing_miou": "parsing mIoU",
           "judge_accuracy_gt": "judge acc. (ground truth)"}
#: phase_times.json phases shown in the table, in order (``exit`` is added here: wall clock after on_fit_end)
PHASE_COLUMNS = ("startup", "setup", "sanity_check", "warmup_batches", "gan_batches", "data_wait", "validation",
                 "result_image", "checkpoint", "other", "exit")
THREAD_LINE = re.compile(r"segexpr: using (\d+) torch thread\(s\) \((.*)\)")


def console_command() -> Path:
    """The installed ``segexpr`` console command beside this interpreter (the venv's bin/)."""
    path = Path(sys.executable).with_name("segexpr")
    if not path.is_file():
        raise FileNotFoundError(f"no segexpr console command beside {sys.executable}: install the package "
                                "(pip install -e .) in this interpreter's environment")
    return path


def parse_sets(items: Sequence[str]) -> list[str]:
    """``["model.init_args.n_critic=2"]`` -> ``["--model.init_args.n_critic", "2"]``."""
    arguments: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE (passed to segexpr fit as --KEY VALUE), got {item!r}")
        arguments += [f"--{key}", value]
    return arguments


def config_seed(config: Path) -> Any:
    """The config's ``seed_everything`` (Lightning's default ``True``, a random seed, when absent)."""
    import yaml

    return (yaml.safe_load(config.read_text()) or {}).get("seed_everything", True)


def fit_command(console: Path, config: Path, seed: int, own_seed: Any, threads: int | None,
                sets: Sequence[str]) -> tuple[list[str], list[str]]:
    """The ``segexpr fit`` command line for ``seed`` and the notes on what it adds to the README's command."""
    command = [str(console), "fit", "--config", str(config)]
    notes = []
    if not (isinstance(own_seed, int) and not isinstance(own_seed, bool) and own_seed == seed):
        command += ["--seed_everything", str(seed)]
        notes.append(f"--seed_everything {seed} appended (the config's own seed is {own_seed})")
    if threads is not None:
        command += ["--threads", str(threads)]
        notes.append(f"--threads {threads} appended (the README's command picks its own)")
    command += list(sets)
    return command, notes


def machine() -> dict[str, Any]:
    """CPU model (/proc/cpuinfo), cores, the cores this process may use, OMP_NUM_THREADS, host, Python, torch."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"cpu_model": model, "cores": os.cpu_count(), "usable_cores": usable,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "host": platform.node(),
            "python": platform.python_version(), "torch": torch.__version__,
            "load_average_at_start": load_average()}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run_fit(command: list[str], folder: Path, timeout_s: float | None) -> tuple[float, int, Path]:
    """Run ``command`` in ``folder`` (output to ``folder/fit.log``); return (wall seconds, exit code, log)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "fit.log"
    with log.open("w") as out:
        start = time.monotonic()
        proc = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except BaseException:  # a timeout or Ctrl-C: end the fit (its own session: it and its children)
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        wall = time.monotonic() - start
    return wall, code, log


def find_run(folder: Path, before: set[Path]) -> Path:
    """The run folder the fit made under ``folder``: the one new ``checkpoints/last.ckpt``."""
    new = sorted(set(folder.rglob("checkpoints/last.ckpt")) - before)
    if len(new) != 1:
        raise RuntimeError(f"expected one new checkpoints/last.ckpt under {folder}, found {[str(p) for p in new]}")
    return new[0].parent.parent


def evaluate(ckpt: Path, judge: Any, count: int) -> tuple[dict[str, float], dict[str, Any]]:
    """The benchmark's metrics of ``ckpt`` judged by ``judge`` on ``count`` held-out identities, and its setting."""
    from segexpr.evaluation import SynthFACSEditBenchmark, load_joint

    start = time.monotonic()
    module = load_joint(ckpt)
    size = int(module.image_size)
    result = SynthFACSEditBenchmark(size=size, count=count, seed=0).evaluate(module, judge, fid_features="none")
    metrics = {key: float(result.metrics[key]) if key in result.metrics else None for key in METRICS}
    return metrics, {"size": size, "identities": count, "seed": 0, "fid_features": "none",
                     "seconds": round(time.monotonic() - start, 2)}


def describe_judge(judge: Any, standard: bool) -> str:
    names = getattr(judge, "names", None)
    members = f" ({', '.join(names)})" if names else ""
    version = getattr(judge, "version", None)
    name = f"standard judge {version}" if standard and version else "standard judge"
    return (name if standard else f"injected judge, not the standard one: {type(judge).__name__}") + members


def load_baseline(path: Path) -> dict[str, Any]:
    """``{seed or "*": expression accuracy}`` from this script's JSON (by seed) or a ``segexpr evaluate`` JSON
    (``"*"``: every seed)."""
    data = json.loads(path.read_text())
    if isinstance(data.get("runs"), list):
        return {int(run["seed"]): run["metrics"].get("edit_expression_accuracy") for run in data["runs"]}
    if isinstance(data.get("metrics"), dict) and "edit_expression_accuracy" in data["metrics"]:
        return {"*": data["metrics"]["edit_expression_accuracy"]}
    raise ValueError(f"{path}: neither this script's JSON (runs) nor a segexpr evaluate JSON (metrics with "
                     "edit_expression_accuracy)")


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: what ran, on what, then one time row and one quality row per seed."""
    lines = [f"# Main job: `segexpr fit --config examples/configs/synthetic.yaml`, end to end", "",
             f"Written by `examples/benchmarks/main_job.py` on {report['date']}. Machine: {report['machine']['cpu_model']}, "
             f"{report['machine']['cores']} cores ({report['machine']['usable_cores']} usable by this process), "
             f"OMP_NUM_THREADS={report['machine']['omp_num_threads'] or 'unset'}, load average before the first start "
             f"{report['machine']['load_average_at_start']}.", ""]
    if report["differs_from_readme"]:
        lines += [f"**The command differs from the README's**: {'; '.join(report['differs_from_readme'])}.", ""]
    else:
        lines += ["Command: the README's (its config by absolute path, run in a fresh folder).", ""]
    for run in report["runs"]:
        for note in run["notes"]:
            lines.append(f"- seed {run['seed']}: {note}")
    lines += [f"- command (seed {report['runs'][0]['seed']}): `segexpr {' '.join(report['runs'][0]['command'][1:])}`"
              if report["runs"] else "",
              f"- quality: {report['judge']}, SynthFACS held-out identities ({report['evaluation']['identities']}, "
              f"{report['evaluation']['size']} px, seed 0, no FID)",
              f"- targets: wall clock <= {TARGET_WALL_S / 60:.0f} min; expression accuracy vs "
              + (f"`{report['baseline']}`" if report["baseline"] else "no baseline (--baseline-json)"),
              "- phases from the run's phase_times.json (segexpr.callbacks.PhaseTimes), seconds; `exit`: wall clock "
              "after on_fit_end", ""]
    lines += ["| seed | torch threads | load avg before | wall clock | <= 10 min | "
              + " | ".join(PHASE_COLUMNS) + " | s / GAN batch |",
              "|---" * (6 + len(PHASE_COLUMNS)) + "|"]
    for run in report["runs"]:
        phases = run["phases_s"] or {}
        per_gan = (run["phase_times"] or {}).get("ms_per_batch", {}).get("gan_batches")
        lines.append(f"| {run['seed']} | {run['torch_threads'] or '?'} | {run['load_average_before']} | "
                     f"{_minutes(run['wall_s'])} | {'yes' if run['wall_target_met'] else '**no**'} | "
                     + " | ".join(_fmt(phases.get(p), 1) for p in PHASE_COLUMNS)
                     + f" | {_fmt(per_gan / 1e3 if per_gan is not None else None, 3)} |")
    lines += ["", "| seed | " + " | ".join(METRICS.values()) + " | expression acc. vs baseline |",
              "|---" * (2 + len(METRICS)) + "|"]
    for run in report["runs"]:
        base = run["baseline_expression_accuracy"]
        delta = run["metrics"]["edit_expression_accuracy"]
        versus = "-" if base is None or delta is None else f"{delta - base:+.3f} (baseline {base:.3f})"
        lines.append(f"| {run['seed']} | " + " | ".join(_fmt(run["metrics"][k]) for k in METRICS) + f" | {versus} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None, judge_factory: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Run the main job per seed, judge it, write the JSON and markdown; return the report.

    ``judge_factory``: builds the judge (default :func:`segexpr.evaluation.standard_judge`; tests pass a tiny
    untrained one, and the outputs then say the judge is not the standard one)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="passed to segexpr fit as --threads N (default: none, the command's own choice)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="run seed N in WORK_DIR/seed_N (must be missing or empty; kept). Default: a fresh "
                             "temporary folder per seed, removed after its evaluation")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR,
                        help=f"where {OUT_NAME}.json and {OUT_NAME}.md go (default docs/results)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--config", type=Path, default=README_CONFIG, help="default: the README's synthetic.yaml")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to segexpr fit as --KEY VALUE (repeatable); the command then differs from "
                             "the README's")
    parser.add_argument("--baseline-json", type=Path, default=None,
                        help="this script's JSON (matched by seed) or a segexpr evaluate JSON (every seed)")
    parser.add_argument("--eval-count", type=int, default=EVAL_COUNT,
                        help=f"held-out identities judged (default {EVAL_COUNT}, the judged figures' count)")
    parser.add_argument("--timeout-s", type=float, default=None, help="end a fit that runs longer (default: none)")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    try:
        sets = parse_sets(args.sets)
    except ValueError as error:
        parser.error(str(error))

    from segexpr.files import refuse_existing, write_text

    # everything that can fail fails here, before any training
    out_json, out_md = args.out_dir / f"{OUT_NAME}.json", args.out_dir / f"{OUT_NAME}.md"
    refuse_existing([out_json, out_md], overwrite=args.overwrite)
    config = args.config.resolve()
    if not config.is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file")
    folders = {seed: (args.work_dir / f"seed_{seed}" if args.work_dir else None) for seed in args.seeds}
    used = [str(f) for f in folders.values() if f is not None and f.is_dir() and any(f.iterdir())]
    if used and not args.overwrite:
        raise FileExistsError(f"{', '.join(used)} not empty: pick another --work-dir (or pass --overwrite to run "
                              "beside what it holds; nothing there is deleted)")
    baseline = load_baseline(args.baseline_json) if args.baseline_json else {}
    console = console_command()
    if judge_factory is None:
        from segexpr.evaluation import standard_judge

        judge_factory, standard = standard_judge, True
    else:
        standard = False
    judge = judge_factory()  # the standard judge's weights missing: an error now, not after the training
    own_seed = config_seed(config)
    differs = ([f"--config {args.config}"] if config != README_CONFIG.resolve() else []) + \
              ([f"--set {' '.join(args.sets)}"] if args.sets else [])

    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "config": str(config), "readme_config": config == README_CONFIG.resolve(), "sets": list(args.sets),
        "differs_from_readme": differs, "threads_option": args.threads, "judge": describe_judge(judge, standard),
        "standard_judge": standard, "baseline": str(args.baseline_json) if args.baseline_json else None,
        "target_wall_s": TARGET_WALL_S, "runs": []}
    for seed in args.seeds:
        command, notes = fit_command(console, config, seed, own_seed, args.threads, sets)
        folder = folders[seed] or Path(tempfile.mkdtemp(prefix=f"segexpr-main-job-seed{seed}-"))
        before = set(folder.rglob("checkpoints/last.ckpt")) if folder.exists() else set()
        load_before = load_average()
        print(f"main_job: seed {seed}: {' '.join(command)}  (in {folder})", flush=True)
        wall, code, log = run_fit(command, folder, args.timeout_s)
        output = log.read_text(errors="replace")
        if code != 0:
            raise RuntimeError(f"segexpr fit exited with {code} after {wall:.0f} s (seed {seed}; log {log}):\n"
                               + output[-3000:])
        run = find_run(folder, before)
        missing = [p for p in (run / "result.png", run / "checkpoints" / "last.ckpt") if not p.is_file()]
        if missing:
            raise RuntimeError(f"segexpr fit exited without {', '.join(map(str, missing))} (log {log})")
        phase_file = run / "phase_times.json"
        phase_times = json.loads(phase_file.read_text()) if phase_file.is_file() else None
        if phase_times is None:
            notes.append("no phase_times.json (the config lists no segexpr.callbacks.PhaseTimes)")
        phases = dict(phase_times["phases_s"]) if phase_times else None
        if phases is not None:
            phases["exit"] = round(max(wall - phase_times["total_s"], 0.0), 4)
        threads = THREAD_LINE.search(output)
        metrics, evaluation = evaluate(run / "checkpoints" / "last.ckpt", judge, args.eval_count)
        report["evaluation"] = {k: v for k, v in evaluation.items() if k != "seconds"}
        base = baseline.get(seed, baseline.get("*"))
        record = {
            "seed": seed, "command": command, "notes": notes, "readme_command": not differs and not notes,
            "torch_threads": int(threads.group(1)) if threads else None,
            "torch_threads_why": threads.group(2) if threads else None,
            "load_average_before": load_before, "wall_s": round(wall, 2),
            "wall_target_met": wall <= TARGET_WALL_S, "phase_times": phase_times, "phases_s": phases,
            "metrics": metrics, "evaluation_s": evaluation["seconds"],
            "baseline_expression_accuracy": base,
            "expression_accuracy_vs_baseline": (None if base is None or metrics["edit_expression_accuracy"] is None
                                                else metrics["edit_expression_accuracy"] - base),
            "run_folder": str(run) if args.work_dir else None}
        report["runs"].append(record)
        print(f"main_job: seed {seed}: wall {_minutes(record['wall_s'])} (target <= {TARGET_WALL_S / 60:.0f} min: "
              f"{'met' if record['wall_target_met'] else 'MISSED'}); expression accuracy "
              f"{_fmt(metrics['edit_expression_accuracy'])}"
              + (f" (baseline {base:.3f}, {record['expression_accuracy_vs_baseline']:+.3f})" if base is not None
                 else ""), flush=True)
        if args.work_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    text = markdown(report)
    write_text(out_json, json.dumps(report, indent=2) + "\n", overwrite=args.overwrite)
    write_text(out_md, text, overwrite=args.overwrite)
    print(text)
    print(f"main_job: wrote {out_json} and {out_md}")
    return report


if __name__ == "__main__":
    try:
        main()
    except (FileExistsError, FileNotFoundError, RuntimeError, ValueError) as error:
        sys.exit(f"main_job: {error}")
