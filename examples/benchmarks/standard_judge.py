"""Build the standard judge and measure its strength and stability.

    python examples/benchmarks/standard_judge.py --ckpt MAIN_JOB.ckpt [--ckpt OTHER.ckpt ...]

Trains every member of :data:`segexpr.evaluation.judge.STANDARD_RECIPE` (two torchvision families, three seeds
each; resumable: members already in ``--work-dir`` are loaded, not retrained), then prints and writes:

* strength: each member's and the ensemble's expression accuracy on ground-truth renders of 64 held-out
  (``test``-split) identities, each rendered with the 8 prototypes (target >= 0.98), and the "no edit"
  accuracy of the unedited sources judged against the 8 targets (1/8 by construction);
* stability, for each ``--ckpt`` (a JointModule, e.g. the main job's ``last.ckpt``): each member's expression
  accuracy on the model's label edits of the same identities; the spread across seeds within a family
  (target <= 0.04, i.e. +-0.02) and the gap between the two families' means (target <= 0.10, i.e. +-0.05).
  ``--recognizer`` adds a judge of the critic's family for comparison.

``--judge-seeds``, ``--families``, ``--steps``, ``--input-size``, ``--blend-fraction`` and ``--crossfade`` override the recipe to try a variant (the
latter two: partial-expression renders and cross-faded training items, see :mod:`segexpr.evaluation.judge`); a
``--work-dir`` remembers its recipe (``recipe.json``) and refuses members of another one.

``--write-judge`` stores the ensemble as the package's standard judge (``segexpr/evaluation/standard_judge/``,
refused if one is there unless ``--overwrite``). Results go to ``--out-dir`` (default ``docs/results``) as
``standard_judge.json`` and ``standard_judge.md``, files this script owns; an existing one is replaced only
with ``--overwrite``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from segexpr.cli import torch_threads
from segexpr.labels import NUM_EXPRESSIONS
from segexpr.evaluation import SynthFACSEditBenchmark, load_joint, load_recognizer
from segexpr.files import refuse_existing, write_text
from segexpr.evaluation.judge import (
    STANDARD_JUDGE_DIR,
    STANDARD_RECIPE,
    JudgeEnsemble,
    manifest_version,
    recipe_as_json,
    render_training_set,
    save_judge_ensemble,
    train_judge,
)
from segexpr.models.judges import create_judge, list_judges

ROOT = Path(__file__).resolve().parents[2]
TARGETS = {"ground_truth_accuracy": 0.98, "seed_spread": 0.04, "family_gap": 0.10}


def member_name(family: str, seed: int) -> str:
    return f"{family} seed {seed}"


def build_members(recipe: dict[str, Any], work_dir: Path) -> tuple[list[tuple[str, int, Any]], dict[str, float]]:
    """Train (or load from ``work_dir``) every (family, seed) of ``recipe``; returns members and training seconds."""
    work_dir.mkdir(parents=True, exist_ok=True)
    # members are cached by family and seed: a work dir must not mix members of different recipes
    made_by = recipe_as_json({k: v for k, v in recipe.items() if k != "seeds"})
    stamp = work_dir / "recipe.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != made_by:
        raise SystemExit(f"{work_dir} holds judges of another recipe ({stamp}); use another --work-dir")
    stamp.write_text(json.dumps(made_by, indent=2) + "\n")
    renders = None
    members, seconds = [], {}
    for family in recipe["families"]:
        for seed in recipe["seeds"]:
            path = work_dir / f"{family}_seed{seed}.pt"
            judge = create_judge(family, image_size=recipe["image_size"], input_size=recipe.get("input_size"))
            if path.is_file():
                judge.load_state_dict(torch.load(path, weights_only=True))
                print(f"loaded {path}", flush=True)
            else:
                if renders is None:
                    start = time.perf_counter()
                    renders = render_training_set(recipe["image_size"], recipe["training_renders"],
                                                  recipe["render_seed"], recipe.get("blend_fraction", 0.0))
                    print(f"rendered {recipe['training_renders']} training faces in "
                          f"{time.perf_counter() - start:.0f} s", flush=True)
                start = time.perf_counter()
                judge = train_judge(family, seed, renders, steps=recipe["steps"], batch_size=recipe["batch_size"],
                                    lr=recipe["lr"], crossfade=recipe.get("crossfade", 0.0),
                                    input_size=recipe.get("input_size"))
                seconds[member_name(family, seed)] = time.perf_counter() - start
                torch.save(judge.state_dict(), path)
                print(f"trained {member_name(family, seed)} in {seconds[member_name(family, seed)]:.0f} s -> {path}",
                      flush=True)
            members.append((family, seed, judge.eval()))
    return members, seconds


@torch.no_grad()
def strength(members: list[tuple[str, int, Any]], ensemble: JudgeEnsemble, benchmark: SynthFACSEditBenchmark
             ) -> dict[str, Any]:
    """Accuracy on the ground-truth renders (every held-out identity x 8 prototypes) and the no-edit accuracy."""
    renders = benchmark.targets.flatten(0, 1)
    labels = torch.arange(NUM_EXPRESSIONS).repeat(benchmark.count)
    judges = {member_name(f, s): j for f, s, j in members} | {"ensemble": ensemble}
    out: dict[str, Any] = {}
    for name, judge in judges.items():
        predicted = judge(renders)[0].argmax(1)
        out[name] = float((predicted == labels).float().mean())
    # no edit: each unedited source judged against each of the 8 targets
    predicted = ensemble(benchmark.images)[0].argmax(1)
    no_edit = (predicted[:, None] == torch.arange(NUM_EXPRESSIONS)[None]).float().mean()
    return {"ground_truth_accuracy": out, "no_edit_accuracy": float(no_edit),
            "source_accuracy": float((predicted == benchmark.expression).float().mean())}


def seed_judges(members: list[tuple[str, int, Any]], group: int = 1) -> JudgeEnsemble:
    """The standard judge's recipe retrained with other seeds: the members' seeds, sorted, cut into runs of
    ``group`` (``group=1``: one seed, one member per family; ``group=3`` with seeds 0-8: three whole 6-member judges,
    the first of them the shipped one), each run an ensemble of its members named ``seed(s) ...``. Their mean is
    the full ensemble (equal sizes), so judging with it gives the full ensemble's figure *and*, as member
    accuracies, what the judge would read had it been trained with only those seeds: the figure's own stability
    across retraining."""
    seeds = sorted({s for _, s, _ in members})
    if group < 1 or len(seeds) % group:
        raise ValueError(f"{len(seeds)} seeds do not cut into groups of {group}")
    runs = [seeds[i:i + group] for i in range(0, len(seeds), group)]
    judges = [JudgeEnsemble([j for _, s, j in members if s in run],
                            [member_name(f, s) for f, s, _ in members if s in run]) for run in runs]
    names = [("seed " if len(run) == 1 else "seeds ") + ", ".join(map(str, run)) for run in runs]
    return JudgeEnsemble(judges, names).eval()


def stability(ckpt: Path, ensemble: JudgeEnsemble, benchmark: SynthFACSEditBenchmark,
              families: tuple[str, ...], recognizer: Path | None,
              by_seed: JudgeEnsemble | None = None) -> dict[str, Any]:
    """Each member's (and the ensemble's) expression accuracy on one model's label edits, and their spreads;
    with ``by_seed`` (:func:`seed_judges`) also each seed group's judge and their spread."""
    module = load_joint(ckpt)
    result = benchmark.evaluate(module, ensemble, fid_features="none")
    members = result.member_accuracy
    by_family = {f: [v for k, v in members.items() if k.startswith(f + " ")] for f in families}
    means = {f: sum(v) / len(v) for f, v in by_family.items()}
    out = {"checkpoint": str(ckpt), "ensemble_accuracy": result.metrics["edit_expression_accuracy"],
           "member_accuracy": members, "family_mean_accuracy": means,
           "seed_spread": {f: max(v) - min(v) for f, v in by_family.items()},
           "family_gap": max(means.values()) - min(means.values()),
           "per_expression": {k[len("edit_accuracy_"):]: v for k, v in result.metrics.items()
                              if k.startswith("edit_accuracy_")},
           "confusion": result.confusion,
           "transfer_au_mae": result.metrics.get("transfer_au_mae"),
           "edit_unwanted_change": result.metrics.get("edit_unwanted_change")}
    if by_seed is not None and len(by_seed.members) > 1:
        per_seed = benchmark.evaluate(module, by_seed, fid_features="none").member_accuracy
        out["seed_judge_accuracy"] = per_seed
        out["seed_judge_spread"] = max(per_seed.values()) - min(per_seed.values())
    if recognizer is not None:
        critic_family = benchmark.evaluate(module, load_recognizer(recognizer), fid_features="none")
        out["critic_family_judge_accuracy"] = critic_family.metrics["edit_expression_accuracy"]
    return out


def _recipe_line(recipe: dict[str, Any]) -> str:
    families = " and ".join(recipe["families"])
    seeds = ", ".join(map(str, recipe["seeds"]))
    return (f"Recipe: {families}, seeds {seeds}; {recipe['steps']} steps of {recipe['batch_size']} augmented "
            f"renders ({recipe['training_renders']} SynthFACS train faces); images of {recipe['image_size']} px read "
            f"at {recipe.get('input_size') or recipe['image_size']} px.")


def markdown(payload: dict[str, Any]) -> str:
    lines = ["# Standard judge: strength and stability", "",
             f"Command: `{payload['command']}`  ", f"Date: {payload['date']}; commit {payload['commit']}; "
             f"{payload['threads']} torch thread(s).", "",
             "Written by `examples/benchmarks/standard_judge.py`; rerun it to update (hand-written reading goes "
             "elsewhere).", "", _recipe_line(payload["recipe"]), "", "## Strength (ground-truth renders of 64 held-out identities x 8 prototypes)", "",
             "| judge | accuracy |", "| --- | --- |"]
    lines += [f"| {k} | {v:.3f} |" for k, v in payload["strength"]["ground_truth_accuracy"].items()]
    lines += ["", f"No edit (sources judged against the 8 targets): {payload['strength']['no_edit_accuracy']:.3f}; "
                  f"the ensemble reads the sources' own expressions at {payload['strength']['source_accuracy']:.3f}."]
    shipped = payload["recipe"] == recipe_as_json(STANDARD_RECIPE)
    which = "the standard judge" if shipped else "every member above: the recipe's variant, not the shipped judge"
    for entry in payload["stability"]:
        lines += ["", f"## Stability on the edits of `{entry['checkpoint']}`", "",
                  "| judge | expression accuracy of label edits |", "| --- | --- |"]
        lines += [f"| {k} | {v:.3f} |" for k, v in entry["member_accuracy"].items()]
        lines += [f"| **ensemble ({which})** | **{entry['ensemble_accuracy']:.3f}** |"]
        if "critic_family_judge_accuracy" in entry:
            lines += [f"| critic's family (AUDiscriminatorModule, for comparison) | "
                      f"{entry['critic_family_judge_accuracy']:.3f} |"]
        spread = ", ".join(f"{f} {v:.3f}" for f, v in entry["seed_spread"].items())
        if "seed_judge_accuracy" in entry:
            readings = ", ".join(f"{k} {v:.3f}" for k, v in entry["seed_judge_accuracy"].items())
            lines += ["", "The judge retrained with other seeds (each group's members of every family, averaged like "
                          f"the standard judge): {readings}; spread **{entry['seed_judge_spread']:.3f}** (target <= "
                          f"{TARGETS['seed_spread']}: "
                          f"{'met' if entry['seed_judge_spread'] <= TARGETS['seed_spread'] else 'NOT met'})."]
        lines += ["", f"Seed spread (max - min within a family; target <= {TARGETS['seed_spread']}): {spread}.  ",
                  f"Family gap (difference of the family means; target <= {TARGETS['family_gap']}): "
                  f"{entry['family_gap']:.3f}.  ",
                  "Per expression (ensemble): " + ", ".join(f"{k} {v:.2f}" for k, v in entry["per_expression"].items())]
    return "\n".join(lines) + "\n"


def write_outputs(payload: dict[str, Any], out_dir: Path, overwrite: bool) -> list[Path]:
    """``standard_judge.json`` and ``.md`` in ``out_dir``, atomically; existing ones only with ``overwrite``."""
    paths = [out_dir / "standard_judge.json", out_dir / "standard_judge.md"]
    refuse_existing(paths, overwrite=overwrite)
    for path, text in zip(paths, [json.dumps(payload, indent=2) + "\n", markdown(payload)]):
        write_text(path, text, overwrite=overwrite)
    return paths


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, nargs="*", default=[], help="JointModule checkpoints whose edits "
                        "measure the judges' agreement")
    parser.add_argument("--recognizer", type=Path, default=None, help="a judge of the critic's family to compare")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/standard_judge"),
                        help="where trained members are kept (and reused)")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's training steps")
    parser.add_argument("--judge-seeds", type=int, nargs="+", default=None, help="override the recipe's seeds")
    parser.add_argument("--seed-groups", type=int, default=1,
                        help="judge the stability with whole judges of this many seeds each (3 with --judge-seeds "
                             "0 1 2 3 4 5 6 7 8: three 6-member judges, the shipped one first); default 1")
    parser.add_argument("--families", nargs="+", default=None, choices=list_judges(),
                        help="override the recipe's families (e.g. a third family, to check the two agree)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="override the side the judges read faces at (64: no downsampling)")
    parser.add_argument("--blend-fraction", type=float, default=None,
                        help="override the recipe's share of partial-expression renders (render_training_set)")
    parser.add_argument("--crossfade", type=float, default=None,
                        help="override the recipe's share of cross-faded training items (AugmentedRenders)")
    parser.add_argument("--count", type=int, default=64, help="held-out identities")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--write-judge", action="store_true", help="store the ensemble as the package's judge")
    parser.add_argument("--train-only", action="store_true", help="train the members and stop")
    parser.add_argument("--overwrite", action="store_true", help="replace existing result files / shipped judge")
    args = parser.parse_args(argv)
    for ckpt in args.ckpt:
        if not ckpt.is_file():
            parser.error(f"--ckpt {ckpt} not found")
    if args.recognizer is not None and not args.recognizer.is_file():
        parser.error(f"--recognizer {args.recognizer} not found")
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if args.input_size is not None and not 32 <= args.input_size <= STANDARD_RECIPE["image_size"]:
        parser.error(f"--input-size must be in [32, {STANDARD_RECIPE['image_size']}], got {args.input_size}")
    for name in ("blend_fraction", "crossfade"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must be in [0, 1], got {value}")
    overrides = ("steps", "judge_seeds", "families", "input_size", "blend_fraction", "crossfade")
    if args.write_judge and any(getattr(args, n) is not None for n in overrides):
        parser.error("--write-judge stores the recipe's judge; drop --steps/--judge-seeds/--families/--input-size/"
                     "--blend-fraction/--crossfade (or change STANDARD_RECIPE)")
    if args.count < 2:
        parser.error(f"--count must be >= 2, got {args.count}")
    seeds = args.judge_seeds if args.judge_seeds is not None else STANDARD_RECIPE["seeds"]
    if args.seed_groups < 1 or len(set(seeds)) % args.seed_groups:
        parser.error(f"--seed-groups {args.seed_groups} must divide the {len(set(seeds))} judge seeds")
    try:
        refuse_existing([args.out_dir / "standard_judge.json", args.out_dir / "standard_judge.md"],
                        overwrite=args.overwrite or args.train_only)
    except FileExistsError as err:
        parser.error(str(err))
    if args.write_judge and (STANDARD_JUDGE_DIR / "manifest.json").exists() and not args.overwrite:
        parser.error(f"{STANDARD_JUDGE_DIR / 'manifest.json'} exists; add --overwrite to replace the shipped judge")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    recipe = dict(STANDARD_RECIPE)
    for key, value in (("steps", args.steps), ("input_size", args.input_size),
                       ("blend_fraction", args.blend_fraction), ("crossfade", args.crossfade)):
        if value is not None:
            recipe[key] = value
    if args.judge_seeds is not None:
        recipe["seeds"] = tuple(args.judge_seeds)
    if args.families is not None:
        recipe["families"] = tuple(args.families)
    with torch_threads(args.threads):
        members, seconds = build_members(recipe, args.work_dir)
        if args.train_only:
            return {}
        ensemble = JudgeEnsemble([j for _, _, j in members], [member_name(f, s) for f, s, _ in members]).eval()
        benchmark = SynthFACSEditBenchmark(size=recipe["image_size"], count=args.count, seed=0)
        payload = {"command": "python examples/benchmarks/standard_judge.py " + " ".join(map(shlex.quote, argv or
                                                                                            sys.argv[1:])),
                   "date": datetime.date.today().isoformat(), "commit": _commit(), "threads": args.threads,
                   "recipe": recipe_as_json(recipe),
                   "training_seconds": seconds, "targets": TARGETS,
                   "strength": strength(members, ensemble, benchmark),
                   "stability": [stability(c, ensemble, benchmark, tuple(recipe["families"]), args.recognizer,
                                           seed_judges(members, args.seed_groups)) for c in args.ckpt]}
    print(markdown(payload))
    for path in write_outputs(payload, args.out_dir, args.overwrite):
        print(f"wrote {path}")
    if args.write_judge:
        manifest = save_judge_ensemble(members, STANDARD_JUDGE_DIR, recipe=recipe, overwrite=args.overwrite)
        print(f"wrote {manifest} (the judge's version: {manifest_version(manifest)})")
    return payload


if __name__ == "__main__":
    main()
