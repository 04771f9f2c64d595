"""What each exact rewrite of the training step saves in the main job: the step with each one switched off.

    python examples/benchmarks/step_rewrites.py --batches 40 --repeats 2

segexpr computes some parts of the GAN step in a cheaper form that is the same function (equal within float
rounding; tests hold each to its plain form). This script trains the README's main job's model
(``examples/configs/synthetic.yaml`` through segexpr's LightningCLI, warm-ups off so every batch is a GAN batch)
on the same in-memory batches with a bare Trainer (``loop_overhead.py``'s "bare" run: nothing attached, logging
and EMA off), once with every rewrite on, once with all off, and once with each one off alone:

* ``decoder``: the generators' upsampling stages as one convolution on the low-resolution map
  (:func:`segexpr.ops.convolutions.upsample_conv3x3`) instead of nearest upsampling then a 3x3 convolution;
* ``layout``: the region boxes and feathered fusion masks built once per batch for every generator pass on the
  same source images (:meth:`HierarchicalGenerator.region_layout`) instead of once per pass;
* ``adam``: Adam's fused kernel (:func:`segexpr.gan.stepping.adam`) instead of its per-parameter loop on a CPU;
* ``heads``: the generators' 7x7 colour/attention head in channels-last memory
  (:func:`segexpr.ops.convolutions.conv2d_channels_last`) instead of plain ``conv2d``;
* ``lookup``: the regions' stacked weights (``segexpr.models.generators.batched``, the local generators' and
  local critics' batched calls) gathered from one listing of each module's tensors instead of a fresh listing
  for every tensor name (not arithmetic: Python time);
* ``passes``: the generator's five passes of a step as two calls on concatenated batches
  (:func:`segexpr.gan.passes.generator_passes`: edit, self-reconstruction and swap; then cycle and swap-back)
  instead of five calls;
* ``critics``: the critics' calls on real images and on every set of fakes of a step concatenated into one call
  per critic (``GANObjectives._critic_calls``) instead of one call per set.

Runs alternate (``--repeats`` rounds of every variant); each times its last ``--batches`` batches after
``--warmup``. Prints a table (median ms per GAN batch, and against "all on") and writes it to ``--out``
(``docs/results/step_rewrites.md``; an existing file is kept unless ``--overwrite``).
"""
from __future__ import annotations

import contextlib
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

import segexpr.gan.objectives as objectives
import segexpr.gan.stepping as stepping
import segexpr.models.generators.batched as batched
import segexpr.models.generators.global_generator as global_generator
from segexpr.cli import torch_threads
from segexpr.files import write_text
from segexpr.modules.joint import JointModule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loop_overhead  # noqa: E402  (the main job's CLI, its batches in memory, the bare run)

REWRITES = ("decoder", "layout", "adam", "heads", "lookup", "passes", "critics")


def plain_upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The plain form of :func:`~segexpr.ops.convolutions.upsample_conv3x3`."""
    return F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=1)


def plain_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: Any = 0
                 ) -> torch.Tensor:
    """The plain form of :func:`~segexpr.ops.convolutions.conv2d_channels_last`."""
    return F.conv2d(x, weight, bias, padding=padding)


def per_name_lookup(modules: Any, kind: str) -> dict[str, torch.Tensor]:
    """The plain form of ``batched._stacked_tensors``: each module's tensors listed again for every name."""
    return {name: torch.stack([dict(getattr(m, kind)())[name] for m in modules])
            for name, _ in getattr(modules[0], kind)()}


def one_pass_per_call(generator: Any, passes: Any, region_kwargs: Any) -> list[Any]:
    """The plain form of :func:`segexpr.gan.passes.generator_passes`: each pass its own call."""
    return [generator(p.image, p.code, **region_kwargs, au_free=p.au_free) for p in passes]


def one_critic_call_each(self: Any, critic: Any, inputs: Any) -> list[Any]:
    """The plain form of ``GANObjectives._critic_calls``: one call per set."""
    return [critic(x) for x in inputs]


@contextlib.contextmanager
def rewrites_off(names: set[str]) -> Iterator[None]:
    """Switch the named rewrites off (their plain forms) inside the block; everything is restored after."""
    unknown = names - set(REWRITES)
    if unknown:
        raise ValueError(f"unknown rewrites {sorted(unknown)}; expected some of {REWRITES}")
    saved = (global_generator.upsample_conv3x3, JointModule._region_inputs, stepping.FUSED_ADAM_DEVICES,
             global_generator.conv2d_channels_last, batched._stacked_tensors, objectives.generator_passes,
             objectives.GANObjectives._critic_calls)
    region_inputs = JointModule._region_inputs

    def per_pass_layout(self, *args: Any, **kwargs: Any):
        region_kwargs, logits = region_inputs(self, *args, **kwargs)
        region_kwargs.pop("layout", None)  # every generator pass builds its own again
        return region_kwargs, logits

    try:
        if "decoder" in names:
            global_generator.upsample_conv3x3 = plain_upsample_conv3x3
        if "layout" in names:
            JointModule._region_inputs = per_pass_layout
        if "adam" in names:
            stepping.FUSED_ADAM_DEVICES = ()
        if "heads" in names:
            global_generator.conv2d_channels_last = plain_conv2d
        if "lookup" in names:
            batched._stacked_tensors = per_name_lookup
        if "passes" in names:
            objectives.generator_passes = one_pass_per_call
        if "critics" in names:
            objectives.GANObjectives._critic_calls = one_critic_call_each
        yield
    finally:
        (global_generator.upsample_conv3x3, JointModule._region_inputs, stepping.FUSED_ADAM_DEVICES,
         global_generator.conv2d_channels_last, batched._stacked_tensors, objectives.generator_passes,
         objectives.GANObjectives._critic_calls) = saved


def variants(only: list[str] | None = None) -> dict[str, set[str]]:
    """Variant name -> the rewrites switched off: "all on", each "<rewrite> off", "all off"; ``only``: those."""
    every = {"all on": set(), **{f"{name} off": {name} for name in REWRITES}, "all off": set(REWRITES)}
    if only is None:
        return every
    unknown = [name for name in only if name not in every]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; expected some of {list(every)}")
    return {name: every[name] for name in every if name in only}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = loop_overhead.timing_parser(__doc__, batches=40)
    parser.add_argument("--out", type=Path, default=Path("docs/results/step_rewrites.md"),
                        help="the table (markdown); refused if it exists, unless --overwrite")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                        help='only these variants (e.g. "all on" "heads off"); default: all of them')
    args = loop_overhead.checked_timing_args(parser, argv, "step_rewrites.py")
    try:
        chosen = variants(args.variants)
    except ValueError as err:
        parser.error(str(err))
    if "all on" not in chosen:
        parser.error('--variants must include "all on" (every figure is read against it)')
    times: dict[str, list[float]] = {name: [] for name in chosen}
    load_before = [round(x, 2) for x in os.getloadavg()]
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as tmp:
        batches = loop_overhead.render_batches(args.warmup + args.batches, Path(tmp))
        for _ in range(args.repeats):
            for name, off in chosen.items():
                with rewrites_off(off):
                    times[name].append(loop_overhead.run("bare", batches, args.warmup, Path(tmp)))
                print(f"{name}: {times[name][-1] * 1000:.0f} ms / batch", flush=True)
    base = statistics.median(times["all on"])
    text = ("# Exact rewrites of the training step, each switched off\n\n"
            f"Written by `examples/benchmarks/step_rewrites.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"{os.cpu_count()} CPU cores, load average before {load_before}, torch {torch.__version__}, "
            f"{args.threads} torch thread(s); the main job's model, bare Trainer, {args.batches} GAN batches per run "
            f"after {args.warmup}. What each rewrite is: the script's docstring.\n\n"
            "| variant | ms / GAN batch (each run) | median | vs all on |\n| --- | --- | ---: | ---: |\n"
            + "".join(f"| {k} | {', '.join(f'{t * 1000:.0f}' for t in v)} | {statistics.median(v) * 1000:.0f} | "
                      f"{statistics.median(v) / base:.3f}x |\n" for k, v in times.items())
            + f"\nCommand: `python examples/benchmarks/step_rewrites.py {shlex.join(sys.argv[1:] if argv is None else argv)}`\n")
    print(text)
    write_text(args.out, text, overwrite=args.overwrite)
    return {"times": times, "text": text}


if __name__ == "__main__":
    main()
