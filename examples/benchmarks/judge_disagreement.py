"""Why the standard judge's families disagree on a model's edits: three probes, printed (no file written).

    python examples/benchmarks/judge_disagreement.py --ckpt outputs/synthetic/latest/checkpoints/last.ckpt

For each member of the shipped standard judge (:func:`segexpr.evaluation.standard_judge`), or of the judge in
``--judge-dir`` (a folder written by :func:`~segexpr.evaluation.judge.save_judge_ensemble`, e.g. the first,
64-px judge: ``git archive 5df6874 segexpr/evaluation/standard_judge | tar -x -C first``, then
``--judge-dir first/segexpr/evaluation/standard_judge``):

* **edits**: the model's label edits of SynthFACS's held-out identities (``SynthFACSEditBenchmark(size=<the
  model's>, count=64, seed=0)``, every source to every expression): the share read as the target, and, among edits whose
  target differs from the source's expression, the share read as the *source* expression;
* **half faces**: ``--faces`` held-out identities rendered with the upper face's AUs (brows, eyes) of one
  prototype and the lower face's (nose, mouth) of another: the share read as the lower half's expression and as
  the upper half's;
* **degraded ground truth**: the benchmark's ground-truth renders blurred (3 x 3 box), downscaled to half and
  back, and cross-faded with the source at 70:30 and 60:40: the share read as the target.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segexpr.cli import torch_threads
from segexpr.data.synthetic import SPLIT_IDENTITY_OFFSET, render
from segexpr.evaluation import SynthFACSEditBenchmark, load_joint, standard_judge
from segexpr.evaluation.judge import load_judge_ensemble
from segexpr.labels import NUM_EXPRESSIONS, REGION_AUS, expression_prototype
from segexpr.ops.pixels import uint8_to_images


def reads(judge: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The member's expression for each image, ``[N]``."""
    return judge(images)[0].argmax(1)


def half_faces(count: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``count`` held-out faces with the upper half of one prototype and the lower half of another:
    ``(images [N, 3, size, size], upper expression [N], lower expression [N])``."""
    upper_aus = sorted(set(REGION_AUS["brows"]) | set(REGION_AUS["eyes"]))
    rng = np.random.default_rng(seed)
    images, upper, lower = [], [], []
    for k in range(count):
        top, bottom = (int(e) for e in rng.choice(NUM_EXPRESSIONS, 2, replace=False))
        aus = np.array(expression_prototype(bottom))
        aus[upper_aus] = np.array(expression_prototype(top))[upper_aus]
        image = render(SPLIT_IDENTITY_OFFSET["test"] + k, aus, size)["image"]
        images.append(uint8_to_images(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))))
        upper.append(top)
        lower.append(bottom)
    return torch.stack(images), torch.tensor(upper), torch.tensor(lower)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="a JointModule checkpoint whose edits are probed")
    parser.add_argument("--count", type=int, default=64, help="held-out identities of the edit benchmark")
    parser.add_argument("--faces", type=int, default=200, help="half-face composites")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--judge-dir", type=Path, default=None,
                        help="probe this judge ensemble's members instead of the shipped standard judge's")
    args = parser.parse_args(argv)
    if not args.ckpt.is_file():
        parser.error(f"--ckpt {args.ckpt} not found")
    if args.count < 2 or args.faces < 1:
        parser.error("--count must be >= 2 and --faces >= 1")
    rows: dict[str, dict[str, float]] = {}
    with torch_threads(args.threads), torch.no_grad():
        judge = standard_judge() if args.judge_dir is None else load_judge_ensemble(args.judge_dir)
        model = load_joint(args.ckpt).eval()
        size = int(getattr(model, "image_size", judge.image_size))  # the model edits at its own size
        bench = SynthFACSEditBenchmark(size=size, count=args.count, seed=0)
        targets = torch.arange(NUM_EXPRESSIONS).repeat(args.count)            # [count * 8], source-major
        sources = bench.expression.repeat_interleave(NUM_EXPRESSIONS)
        edits = torch.cat([model.edit(bench.images[s:s + 1].expand(NUM_EXPRESSIONS, -1, -1, -1),
                                      expression=torch.arange(NUM_EXPRESSIONS),
                                      landmarks=bench.landmarks[s:s + 1].expand(NUM_EXPRESSIONS, -1, -1))
                           for s in range(args.count)]).float().clamp(-1, 1)
        truth = bench.targets.flatten(0, 1)
        source_images = bench.images.repeat_interleave(NUM_EXPRESSIONS, 0)
        degraded = {
            "blur 3x3": F.avg_pool2d(F.pad(truth, (1, 1, 1, 1), mode="replicate"), 3, stride=1),
            "downscale 1/2": F.interpolate(F.interpolate(truth, scale_factor=0.5, mode="bilinear"),
                                           size=truth.shape[-2:], mode="bilinear"),
            "cross-fade 70:30": 0.7 * truth + 0.3 * source_images,
            "cross-fade 60:40": 0.6 * truth + 0.4 * source_images,
        }
        faces, upper, lower = half_faces(args.faces, size)
        changed = targets != sources
        for name, member in zip(judge.names, judge.members):
            read = reads(member, edits)
            halves = reads(member, faces)
            rows[name] = {"edits read as target": float((read == targets).float().mean()),
                          "changing edits read as source": float((read[changed] == sources[changed]).float().mean()),
                          "half faces read as lower half": float((halves == lower).float().mean()),
                          "half faces read as upper half": float((halves == upper).float().mean()),
                          **{f"ground truth, {k}": float((reads(member, v) == targets).float().mean())
                             for k, v in degraded.items()}}
    columns = list(next(iter(rows.values())))
    print(f"judge_disagreement: {args.ckpt}, {args.count} held-out identities, {args.faces} half faces")
    print("| member | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in columns) + " |")
    return rows


if __name__ == "__main__":
    main()
