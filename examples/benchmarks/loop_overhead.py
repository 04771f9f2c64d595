"""The Lightning loop's own cost in the main job: its training loop against the bare training step.

    python examples/benchmarks/loop_overhead.py --batches 60 --repeats 2

Builds the README's main job from ``examples/configs/synthetic.yaml`` through segexpr's LightningCLI (its model,
its DataModule, its Trainer with the YAML's logger, callbacks, progress bar and logging cadence), renders
``--warmup + --batches`` training batches once into memory (so neither run waits for data) and trains on them
twice, from the same initial weights:

* **bare**: a Trainer with nothing attached (no logger, callbacks, progress bar, checkpointing or model summary),
  the module's ``log``/``log_dict`` made no-ops and its generator EMA off: forward, backward and the optimiser
  steps of the GAN schedule, as Lightning's manual optimisation runs them;
* **main job**: the YAML's Trainer exactly (CSVLogger, ``log_every_n_steps``, progress bar, BatchBudget,
  ResultImage, ModelCheckpoint, PhaseTimes) and the module as configured (logging, EMA).

The parser and critic warm-ups are set to 0 so every timed batch is a GAN batch (the main job's 1000 GAN
batches are 84 % of its wall clock). Each run times its last ``--batches`` batches, from the first timed
``on_train_batch_start`` to the last ``on_train_batch_end``; ``--repeats`` alternates the two runs. Validation,
result images and checkpoints fall every 200 batches in the main job and are timed there as phases
(``examples/benchmarks/main_job.py``, ``PhaseTimes``); they are outside this window. Prints a table and
writes it to ``--out`` (``docs/results/loop_overhead.md``; an existing file is kept unless ``--overwrite``).
The target (issue 28): main job / bare <= 1.15.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segexpr.cli import lightning_cli, torch_threads
from segexpr.files import refuse_existing, write_text

MAIN_JOB_YAML = Path(__file__).resolve().parents[2] / "examples" / "configs" / "synthetic.yaml"
NO_WARMUP = ["--model.init_args.segmenter_warmup_steps", "0", "--model.init_args.critic_warmup_steps", "0"]


class WindowTimer(pl.Callback):
    """Wall clock from the start of batch ``skip`` to the end of the last batch."""

    def __init__(self, skip: int) -> None:
        self.skip, self.start, self.end, self.seen = skip, None, None, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen == self.skip:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        self.end = time.perf_counter()

    def seconds_per_batch(self) -> float:
        return (self.end - self.start) / (self.seen - self.skip)


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def main_job_cli(folder: Path):
    """The main job's LightningCLI (model, DataModule, the YAML's Trainer), warm-ups off, run folder under
    ``folder``."""
    with working_directory(folder):
        return lightning_cli(["--config", str(MAIN_JOB_YAML), *NO_WARMUP], run=False)


def render_batches(count: int, folder: Path) -> list[dict[str, Any]]:
    """``count`` training batches of the main job's DataModule, in its order (seeded), held in memory."""
    data = main_job_cli(folder).datamodule
    data.setup("fit")
    batches = []
    for batch in data.train_dataloader():
        batches.append(batch)
        if len(batches) == count:
            return batches
    raise SystemExit(f"loop_overhead.py: the main job's train set holds fewer than {count} batches")


def build(folder: Path, batches: list[dict[str, Any]]
          ) -> tuple[pl.LightningModule, pl.LightningDataModule, pl.Trainer]:
    """The main job's module, DataModule (training on ``batches``, as rendered) and Trainer (the YAML's)."""
    pl.seed_everything(0, verbose=False)
    cli = main_job_cli(folder)
    cli.datamodule.train_dataloader = lambda: DataLoader(batches, batch_size=None, shuffle=False)
    return cli.model, cli.datamodule, cli.trainer


def run(kind: str, batches: list[dict[str, Any]], skip: int, folder: Path) -> float:
    """Seconds per timed batch of ``kind`` (``bare`` or ``main job``)."""
    model, data, yaml_trainer = build(folder, batches)
    timer = WindowTimer(skip)
    if kind == "bare":
        model.log = model.log_dict = lambda *a, **k: None  # no metric bookkeeping
        model.ema = None
        trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, callbacks=[timer],
                             enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                             limit_val_batches=0, default_root_dir=folder)
    else:
        trainer = yaml_trainer
        trainer.callbacks.append(timer)
        trainer.fit_loop.max_epochs = 1
        trainer.limit_val_batches = 0  # validation falls every 200 batches, outside the window (see above)
    with working_directory(folder):
        trainer.fit(model, datamodule=data)
    return timer.seconds_per_batch()


def timing_parser(doc: str, batches: int) -> argparse.ArgumentParser:
    """The options of the main job's step benchmarks (this one and ``step_rewrites.py``): ``--batches``,
    ``--warmup``, ``--repeats``, ``--threads``; each script adds its own ``--out`` and ``--overwrite``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--batches", type=int, default=batches, help="timed GAN batches per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first (allocator, caches)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the runs, alternating")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the main job's default on 2 cores)")
    return parser


def checked_timing_args(parser: argparse.ArgumentParser, argv: list[str] | None, script: str) -> argparse.Namespace:
    """``parser``'s arguments, checked, with an existing ``--out`` refused (unless ``--overwrite``) before any work."""
    args = parser.parse_args(argv)
    if args.batches < 1 or args.warmup < 1 or args.repeats < 1:
        parser.error("--batches, --warmup and --repeats must be >= 1")
    try:
        refuse_existing([args.out], overwrite=args.overwrite)
    except FileExistsError as err:
        raise SystemExit(f"{script}: {err}") from None
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = timing_parser(__doc__, batches=60)
    parser.add_argument("--out", type=Path, default=Path("docs/results/loop_overhead.md"),
                        help="the table (markdown); refused if it exists, unless --overwrite")
    parser.add_argument("--overwrite", action="store_true")
    args = checked_timing_args(parser, argv, "loop_overhead.py")
    times: dict[str, list[float]] = {"bare": [], "main job": []}
    load_before = [round(x, 2) for x in os.getloadavg()]
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as tmp:
        batches = render_batches(args.warmup + args.batches, Path(tmp))
        for _ in range(args.repeats):
            for kind in times:
                times[kind].append(run(kind, batches, args.warmup, Path(tmp)))
                print(f"{kind}: {times[kind][-1] * 1000:.0f} ms / batch", flush=True)
    bare, full = statistics.median(times["bare"]), statistics.median(times["main job"])
    text = ("# The main job's training loop against the bare step\n\n"
            f"Written by `examples/benchmarks/loop_overhead.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
            f"{os.cpu_count()} CPU cores, load average before {load_before}, "
            f"torch {torch.__version__}. What the two loops are: the script's docstring.\n\n"
            "| loop | ms / GAN batch (each run) | median |\n| --- | --- | ---: |\n"
            + "".join(f"| {k} | {', '.join(f'{t * 1000:.0f}' for t in v)} | {statistics.median(v) * 1000:.0f} |\n"
                      for k, v in times.items())
            + f"\nmain job / bare: **{full / bare:.3f}** (target <= 1.15: {'met' if full / bare <= 1.15 else 'NOT met'})"
            + f"; {args.batches} GAN batches per run after {args.warmup}, {args.threads} torch thread(s).\n"
            + f"Command: `python examples/benchmarks/loop_overhead.py {shlex.join(sys.argv[1:] if argv is None else argv)}`\n")
    print(text)
    write_text(args.out, text, overwrite=args.overwrite)
    return {"times": times, "ratio": full / bare, "text": text}


if __name__ == "__main__":
    main()
