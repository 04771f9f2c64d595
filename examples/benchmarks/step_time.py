"""Training iteration time of JointModule: global-only baseline vs the full hierarchical joint model.

    python examples/benchmarks/step_time.py                         # both scales, CPU (GPU when available), fp32 + bf16
    python examples/benchmarks/step_time.py --scales main --configs global landmarks full full-both --iters 3
    python examples/benchmarks/step_time.py --device cuda --precisions fp32 bf16 fp16
    python examples/benchmarks/step_time.py --device cuda --scales main --precisions fp32 --warmup 3 --compile inductor
    python examples/benchmarks/step_time.py --scales main --configs full --set generator.crop_size=16 \
        "generator.regions=[l_brow,r_brow,l_eye,r_eye,nose,mouth]"     # a variant of the networks

Two scales (``--scales``):

* ``main``: the README's main job, read from ``examples/configs/synthetic.yaml`` when the script starts (not a
  copy, so it cannot drift): the model's ``image_size``, ``adv_loss``, ``n_critic``, ``task`` and network configs
  (segmenter, generator, coder, discriminator) and the data's ``batch_size``; at this writing: 64 px, batch 8,
  BiSeNet 16/32/64, generator 16 with 2 residual blocks, six sided regions with 16-px crops and local width 8,
  critics 16, hinge loss, ``n_critic=1``, ``task=both`` (so the main job itself is the ``full-both`` row, marked
  ``*``). Until 2026-11-26 the main job had four regions, 24-px crops and local width 16:
  ``--set generator.local_channels=16 generator.crop_size=24 "generator.regions=[brows,eyes,nose,mouth]"``;
* ``default``: 128 px, batch 16, every network at its default width, WGAN-GP, ``n_critic=5``.

Beside the times the table gives the **aten ops dispatched per iteration** (``ops/it``, counted with a
``TorchDispatchMode``; views excluded, optimiser steps counted apart as ``opt ops/it``): each is at least one
kernel launch on a GPU, so it is a machine-independent proxy for the launch overhead that dominates small models
on a GPU. ``opt ops/it`` is inflated on a CPU: Adam runs its per-parameter loop there, its ``foreach`` kernels on
CUDA. ``syncs/it`` counts, among those ops, the ones that make the host wait for a GPU (scalar reads such as
``.item()``, data-dependent shapes such as ``nonzero`` or boolean-mask indexing): :data:`HOST_SYNC_OPS`, except
the label-range checks of :func:`segexpr.ops.checks.check_on_device`, which read their result on a CPU but are
device-side asserts on a GPU.

One *iteration* is what the GAN schedule does per batch on average: one discriminator step plus ``1/n_critic``
of a generator step (``n_critic=5``, the default). The script trains through Lightning (``Trainer.fit``,
manual optimisation, the real ``training_step``) with ``n_critic=2`` so that batches alternate D-only and
D+G, times them (after ``--warmup`` untimed pairs), and reports

    iteration = t(D) + (t(D+G) - t(D)) / n_critic   (n_critic of the scale: the YAML's for main, 5 default;
                                                     --n-critic overrides)

together with the model FLOPs of one iteration (``torch.utils.flop_counter``'s formulas, see :class:`FlopCount`:
forward, backward and the gradient penalty's double backward; convolutions, matmuls, attention) and the achieved GFLOP/s.

Configurations (``task="manipulate"`` unless noted):

* ``global``: ``region_source="none"``, no segmenter, no local critics (the StarGAN/GANimation-sized baseline);
* ``landmarks``: the hierarchical generator + local critics with landmark boxes (no segmenter);
* ``full``: the paper's model: BiSeNet segmenter (trained jointly) + hierarchical generator + local critics;
* ``full-both``: ``full`` with ``task="both"`` (manipulation and transfer losses every step).

On CUDA the timed run profiles one more (D, D+G) pair with ``torch.profiler``: ``kern/it`` counts the work the GPU
ran (kernels, memcpys and memsets, optimiser steps included) and ``launch/it`` the host's launch calls (a CUDA
graph replay is one). Unlike ``ops/it`` these see inside compiled graphs: ``--compile inductor`` (with
``--compile-mode reduce-overhead`` for CUDA graphs) times JointModule's ``compile`` option; FLOPs and ``ops/it``
are then still counted on the uncompiled model. Inductor compiles for minutes (much longer for ``full``): give it
``--warmup 3``, which also covers the recompilations for no-grad passes.

Precisions: ``fp32``, ``bf16`` (``bf16-mixed``: ``torch.autocast`` on CPU or CUDA), ``fp16`` (``16-mixed``
with a GradScaler; CUDA only). Not a test: the numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from torch.utils.data import DataLoader
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from segexpr.data.synthetic import SyntheticFaces
from segexpr.modules.joint import JointModule
from segexpr.modules.joint_setup import COMPILE_MODES
from segexpr.ops.checks import check_on_device

PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}
CONFIGS = ("global", "landmarks", "full", "full-both")

#: The README's main job: its scale is read from this file, never copied.
MAIN_JOB_YAML = Path(__file__).resolve().parents[2] / "examples" / "configs" / "synthetic.yaml"
#: JointModule ``task`` -> the config of :data:`CONFIGS` that trains it (with the segmenter's regions).
TASK_CONFIGS = {"manipulate": "full", "both": "full-both"}


def main_job_scale(path: str | Path = MAIN_JOB_YAML) -> tuple[tuple[int, int, int, str, dict[str, Any]], str]:
    """The ``main`` scale of a LightningCLI config (the README's ``synthetic.yaml``) and its config name.

    Returns ``((image size, batch size, n_critic, adv_loss, networks), config)``: ``model.init_args``'
    ``image_size``, ``n_critic``, ``adv_loss`` and ``segmenter``/``generator``/``coder``/``discriminator`` dicts,
    ``data.init_args.batch_size``; ``config`` is the :data:`CONFIGS` entry that trains the YAML's ``task``. A key
    the YAML lacks, a data size other than the model's, or a task/region source this script cannot build is an
    error naming it (the scale would silently be another model).
    """
    path = Path(path)
    config = yaml.safe_load(path.read_text())
    try:
        model, data = config["model"]["init_args"], config["data"]["init_args"]
        size, batch_size = int(model["image_size"]), int(data["batch_size"])
        n_critic, adv_loss, task = int(model["n_critic"]), str(model["adv_loss"]), str(model["task"])
        networks = {name: dict(model[name]) for name in NETWORKS}
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: no {error} where the main scale is read (model.init_args image_size, n_critic, "
                         f"adv_loss, task, {', '.join(NETWORKS)}; data.init_args batch_size)") from None
    if int(data.get("size", size)) != size:
        raise ValueError(f"{path}: data size {data['size']} differs from the model's image_size {size}")
    if task not in TASK_CONFIGS or model.get("region_source", "segmenter") != "segmenter":
        raise ValueError(f"{path}: task {task!r} with region_source {model.get('region_source')!r} is not one of "
                         f"this script's configs ({', '.join(f'{v}: task {k}' for k, v in TASK_CONFIGS.items())}, "
                         "region_source segmenter)")
    return (size, batch_size, n_critic, adv_loss, networks), TASK_CONFIGS[task]


NETWORKS = ("segmenter", "generator", "coder", "discriminator")
_MAIN, MAIN_JOB_CONFIG = main_job_scale()
#: The main job's networks (``examples/configs/synthetic.yaml``, read above).
MAIN_JOB: dict[str, Any] = _MAIN[-1]
#: scale -> (image size, batch size, n_critic of the iteration, adv_loss, networks or None for default widths);
#: ``main`` is the README's main job as its YAML trains it (:func:`main_job_scale`).
SCALES: dict[str, tuple[int, int, int, str, dict[str, Any] | None]] = {
    "main": _MAIN,
    "default": (128, 16, 5, "wgan-gp", None),
}



def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["generator.crop_size=16", ...]`` -> ``{"generator": {"crop_size": 16}}`` (values read as YAML)."""
    overrides: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        net, dot, key = target.partition(".")
        if not sep or not dot or not key or net not in NETWORKS:
            raise ValueError(f"--set expects NET.KEY=VALUE with NET in {NETWORKS}, got {item!r}")
        overrides.setdefault(net, {})[key] = yaml.safe_load(value)
    return overrides


def with_overrides(networks: dict[str, Any] | None, overrides: dict[str, dict[str, Any]]
                   ) -> dict[str, Any] | None:
    """The scale's network configs with ``overrides`` merged in (``None``, default widths, stays ``None`` when
    nothing is overridden; an overridden segmenter starts from ``{"name": "bisenet"}``)."""
    if not overrides:
        return networks
    merged = {k: dict(v) for k, v in (networks or {}).items()}
    for net, values in overrides.items():
        merged.setdefault(net, {"name": "bisenet"} if net == "segmenter" else {}).update(values)
    return merged


def build(config: str, size: int, networks: dict[str, Any] | None = None, adv_loss: str = "wgan-gp",
          compile: bool | str = False, compile_mode: str | None = None) -> JointModule:
    """A JointModule for one of :data:`CONFIGS` (``n_critic=2``: D-only / D+G alternate); ``networks``: widths;
    ``compile``, ``compile_mode``: JointModule's (a ``torch.compile`` backend and mode)."""
    nets = {k: dict(v) for k, v in (networks or {}).items()}
    segmenter = nets.pop("segmenter", {"name": "bisenet"})
    common: dict[str, Any] = dict(n_critic=2, sample_every_n_steps=0, image_size=size, adv_loss=adv_loss,
                                  compile=compile, compile_mode=compile_mode, **nets)
    if config == "global":
        return JointModule(segmenter=None, region_source="none", task="manipulate", **common)
    if config == "landmarks":
        return JointModule(segmenter=None, region_source="landmarks", task="manipulate", **common)
    task = "both" if config == "full-both" else "manipulate"
    return JointModule(segmenter=segmenter, region_source="segmenter", task=task, **common)


def _inside(code) -> bool:
    """Whether a frame of ``code`` is on the Python stack."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


#: aten ops that synchronise host and device on CUDA: reading a scalar (``.item()``, ``bool(t)``, ``int(t)``),
#: outputs whose shape depends on the data (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``).
HOST_SYNC_OPS = {torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero, torch.ops.aten.masked_select,
                 torch.ops.aten.is_nonzero, torch.ops.aten._unique2, torch.ops.aten.unique_dim,
                 torch.ops.aten.unique_consecutive, torch.ops.aten.equal}


class FlopCount(TorchDispatchMode):
    """Total FLOPs of the ops run inside, with ``torch.utils.flop_counter``'s formulas (``flop_registry``).

    ``FlopCounterMode`` itself cannot be used here: its per-module attribution (``ModuleTracker``) installs
    backward hooks that fail inside ``torch.autograd.grad`` ("A leaf node was passed to
    _will_engine_execute_node"), which the WGAN-GP penalty calls. The totals are the same formulas without the
    per-module breakdown.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        #: aten ops dispatched outside optimiser steps, views excluded (they launch no kernel): each is at least
        #: one kernel launch on a GPU, a proxy for the launch overhead of the forward and backward passes.
        self.ops = 0
        #: aten ops inside ``Optimizer.step`` (a CPU run uses the per-parameter Adam loop; on CUDA Adam defaults
        #: to its multi-tensor ``foreach`` kernels, so these are far fewer launches there).
        self.optimizer_ops = 0
        #: ops that make the host wait for the device on a GPU (a Python scalar read, a data-dependent shape),
        #: counted outside optimiser steps; see :data:`HOST_SYNC_OPS`.
        self.host_syncs = 0
        self.in_optimizer = False

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        self._hooks = (register_optimizer_step_pre_hook(lambda *args: setattr(self, "in_optimizer", True)),
                       register_optimizer_step_post_hook(lambda *args: setattr(self, "in_optimizer", False)))
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.in_optimizer:
            self.optimizer_ops += 1
        elif not func.is_view:
            self.ops += 1
            if (func._overloadpacket in HOST_SYNC_OPS or (
                    func._overloadpacket is torch.ops.aten.index and any(
                        isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ())))
                    ) and not _inside(check_on_device.__code__):
                self.host_syncs += 1
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


class _Timer(pl.Callback):
    """Wall time of every training batch (synchronising CUDA), and optionally its FLOPs."""

    def __init__(self, count_flops: bool, profile_from: int | None = None) -> None:
        self.times: list[float] = []
        #: CUDA kernels run and launch calls made (kernel and graph launches) per batch, from ``profile_from`` on
        self.kernels: list[int] = []
        self.launches: list[int] = []
        self.profile_from = profile_from
        self._profiler: Any = None
        self.flops: list[int] = []
        self.ops: list[int] = []
        self.optimizer_ops: list[int] = []
        self.host_syncs: list[int] = []
        self.count_flops = count_flops
        self._counter: FlopCount | None = None

    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.count_flops:
            self._counter = FlopCount()
            self._counter.__enter__()
        self._sync(pl_module)
        if self.profile_from is not None and batch_idx >= self.profile_from:
            self._profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                                torch.profiler.ProfilerActivity.CUDA])
            self._profiler.__enter__()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        self.times.append(time.perf_counter() - self._start)
        if self._profiler is not None:
            self._profiler.__exit__(None, None, None)
            kernels, launches = count_kernels(self._profiler.events())
            self.kernels.append(kernels)
            self.launches.append(launches)
            self._profiler = None
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops.append(self._counter.total)
            self.ops.append(self._counter.ops)
            self.optimizer_ops.append(self._counter.optimizer_ops)
            self.host_syncs.append(self._counter.host_syncs)
            self._counter = None


#: CUDA runtime / driver calls that launch work on the device (a CUDA graph replay is one launch)
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                "cudaLaunchCooperativeKernel", "cudaGraphLaunch", "cudaMemcpyAsync", "cudaMemsetAsync")


def count_kernels(events) -> tuple[int, int]:
    """(kernels run on the GPU, launch calls made by the host) among a ``torch.profiler`` run's events.

    Unlike ``ops/it`` this sees inside ``torch.compile``d graphs: inductor fuses many aten ops into one Triton
    kernel, and a CUDA graph replays all its kernels from one ``cudaGraphLaunch``."""
    kernels = launches = 0
    for event in events:
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels += 1
        elif any(event.name.startswith(call) for call in LAUNCH_CALLS):
            launches += 1
    return kernels, launches


def _fit(module: JointModule, batch: dict, batches: int, precision: str, device: str, count_flops: bool,
         profile_from: int | None = None) -> _Timer:
    timer = _Timer(count_flops, profile_from)
    trainer = pl.Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision,
                         max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer])
    trainer.fit(module, DataLoader([batch] * batches, batch_size=None))
    return timer


def measure(config: str, precision: str, batch: dict, size: int, device: str, warmup: int, iters: int,
            n_critic: int, networks: dict[str, Any] | None = None, adv_loss: str = "wgan-gp",
            compile: bool | str = False, compile_mode: str | None = None) -> dict[str, float]:
    """Time ``warmup + iters`` (D, D+G) batch pairs; FLOPs and dispatched ops from one extra, uncompiled pair; on
    CUDA, kernels run and launch calls from one more (D, D+G) pair of the timed run, profiled."""
    torch.manual_seed(0)
    module = build(config, size, networks, adv_loss, compile, compile_mode)
    timed = 2 * (warmup + iters)
    profiled = device == "cuda"
    timer = _fit(module, batch, timed + 2 * profiled, PRECISIONS[precision], device, count_flops=False,
                 profile_from=timed if profiled else None)
    times = timer.times[2 * warmup:timed]
    t_d = statistics.median(times[0::2])     # batches 1, 3, ...: discriminator step only
    t_dg = statistics.median(times[1::2])    # batches 2, 4, ...: discriminator + generator step
    # counted eagerly: a TorchDispatchMode cannot see inside compiled graphs (their FLOPs are the same)
    counted = _fit(build(config, size, networks, adv_loss), batch, 2, PRECISIONS[precision], device, count_flops=True)
    flops, ops, opt_ops, syncs = counted.flops, counted.ops, counted.optimizer_ops, counted.host_syncs
    t_g = max(t_dg - t_d, 0.0)
    iteration = t_d + t_g / n_critic
    flops_iter = flops[0] + (flops[1] - flops[0]) / n_critic
    per_iter = (lambda xs: xs[0] + (xs[1] - xs[0]) / n_critic)
    return {"ops_iter": per_iter(ops), "ops_d": float(ops[0]), "ops_g": float(ops[1] - ops[0]),
            "optimizer_ops_iter": per_iter(opt_ops), "host_syncs_iter": per_iter(syncs),
            "kernels_iter": per_iter(timer.kernels) if profiled else float("nan"),
            "launches_iter": per_iter(timer.launches) if profiled else float("nan"),
            "d_ms": t_d * 1e3, "g_ms": t_g * 1e3, "iter_ms": iteration * 1e3, "gflop_iter": flops_iter / 1e9,
            "gflop_d": flops[0] / 1e9, "gflop_g": (flops[1] - flops[0]) / 1e9,
            "gflops_per_s": flops_iter / 1e9 / iteration, "params_m": sum(p.numel() for p in module.parameters()
                                                                          if p.requires_grad) / 1e6}


def main(argv: list[str] | None = None) -> dict[tuple[str, str], dict[str, float]]:
    """Parse ``argv``, print one table per scale, return ``{(config, precision): measure(...)}`` (with one scale)
    or ``{(scale, config, precision): ...}`` (several scales)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", choices=tuple(SCALES), default=list(SCALES))
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=["global", "landmarks", "full"])
    parser.add_argument("--precisions", nargs="+", choices=tuple(PRECISIONS), default=["fp32", "bf16"])
    parser.add_argument("--batch-size", type=int, default=None, help="override the scale's batch size")
    parser.add_argument("--size", type=int, default=None, help="override the scale's image size")
    parser.add_argument("--n-critic", type=int, default=None, help="D steps per G step the iteration assumes "
                                                                   "(default: the scale's)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed (D, D+G) batch pairs")
    parser.add_argument("--iters", type=int, default=4, help="timed (D, D+G) batch pairs (median; 2 proved too few on a CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="NET.KEY=VALUE",
                        help="network overrides for every config (VALUE read as YAML), e.g. generator.crop_size=16 "
                             "generator.regions=[l_brow,r_brow,l_eye,r_eye,nose,mouth]; NET is one of "
                             f"{', '.join(NETWORKS)}")
    parser.add_argument("--compile", default=None, metavar="BACKEND",
                        help="torch.compile every network with this backend (inductor, aot_eager, ...); FLOPs and "
                             "ops/it are still counted on the uncompiled model")
    parser.add_argument("--compile-mode", default=None, choices=COMPILE_MODES,
                        help="torch.compile mode with --compile (reduce-overhead: CUDA graphs)")
    args = parser.parse_args(argv)
    if args.compile_mode and not args.compile:
        parser.error("--compile-mode needs --compile")
    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as error:
        parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    if "fp16" in args.precisions and args.device == "cpu":
        parser.error("fp16 (16-mixed) needs CUDA; Lightning maps it to bf16 on CPU")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    everything: dict[tuple, dict[str, float]] = {}
    for scale in args.scales:
        size, batch_size, n_critic, adv_loss, networks = SCALES[scale]
        networks = with_overrides(networks, overrides)
        size, batch_size = args.size or size, args.batch_size or batch_size
        n_critic = args.n_critic or n_critic
        dataset = SyntheticFaces(size=size, length=batch_size, seed=0, pairs=True, identities=max(2, batch_size // 2))
        batch = next(iter(DataLoader(dataset, batch_size=batch_size)))
        print(f"# scale {scale}: {device_name}; batch {batch_size}, {size} px, "
              f"{'main-job' if scale == 'main' else 'default'} widths, {adv_loss}; iteration = D + G/{n_critic}; "
              + (f"the main job ({MAIN_JOB_YAML.name}) is {MAIN_JOB_CONFIG} (*); " if scale == "main" else "")
              + f"warm-up {args.warmup}, median of {args.iters}"
              + (f"; overrides: {' '.join(args.overrides)}" if args.overrides else "")
              + (f"; compiled: {args.compile} {args.compile_mode or 'default'}" if args.compile else ""))
        header = (f"{'config':<10} {'prec':<5} {'params M':>8} {'D ms':>9} {'G ms':>9} {'iter ms':>9} "
                  f"{'GFLOP D':>8} {'GFLOP G':>8} {'GFLOP/it':>9} {'GFLOP/s':>8} {'vs global':>9} {'ops/it':>8} "
                  f"{'ops vs gl':>9} {'opt ops/it':>10} {'syncs/it':>8}"
                  + (f" {'kern/it':>8} {'kern vs gl':>10} {'launch/it':>9}" if args.device == "cuda" else ""))
        print(header)
        results: dict[tuple[str, str], dict[str, float]] = {}
        for precision in args.precisions:
            for config in args.configs:
                r = measure(config, precision, batch, size, args.device, args.warmup, args.iters, n_critic,
                            networks, adv_loss, args.compile or False, args.compile_mode)
                results[(config, precision)] = r
                base = results.get(("global", precision))
                ratio = f"{r['iter_ms'] / base['iter_ms']:.2f}x" if base else "-"
                ops_ratio = f"{r['ops_iter'] / base['ops_iter']:.2f}x" if base else "-"
                name = config + ("*" if scale == "main" and config == MAIN_JOB_CONFIG else "")
                line = (f"{name:<10} {precision:<5} {r['params_m']:8.2f} {r['d_ms']:9.1f} {r['g_ms']:9.1f} "
                        f"{r['iter_ms']:9.1f} {r['gflop_d']:8.1f} {r['gflop_g']:8.1f} {r['gflop_iter']:9.1f} "
                        f"{r['gflops_per_s']:8.1f} {ratio:>9} {r['ops_iter']:8.0f} {ops_ratio:>9} "
                        f"{r['optimizer_ops_iter']:10.0f} {r['host_syncs_iter']:8.1f}")
                if args.device == "cuda":
                    kernel_ratio = f"{r['kernels_iter'] / base['kernels_iter']:.2f}x" if base else "-"
                    line += f" {r['kernels_iter']:8.0f} {kernel_ratio:>10} {r['launches_iter']:9.0f}"
                print(line, flush=True)
        if "fp32" in args.precisions and "bf16" in args.precisions:
            for config in args.configs:
                print(f"# {scale} {config}: bf16 / fp32 iteration time = "
                      f"{results[(config, 'bf16')]['iter_ms'] / results[(config, 'fp32')]['iter_ms']:.2f}")
        everything.update({(scale, *key): value for key, value in results.items()})
    if len(args.scales) == 1:
        return {key[1:]: value for key, value in everything.items()}
    return everything


if __name__ == "__main__":
    main()
