"""Which kinds of GPU kernels make up a training iteration: global-only vs the full joint model (main scale).

    python examples/benchmarks/kernel_kinds.py            # on a CUDA machine

Trains each model for 3 (D, D+G) batch pairs through ``step_time``'s Lightning loop, profiles a fourth pair with
``torch.profiler`` and groups the kernels the GPU ran by name (convolutions and GEMMs, cuDNN's layout transforms,
elementwise, reductions and norms, copies, the optimiser's multi-tensor kernels), then lists the most frequent
kernels of each model. Counts are per (D batch + D+G batch) pair; ``step_time.py``'s ``kern/it`` is
``D + (D+G - D) / n_critic``. ``cpu`` as the first argument runs the same loop on the CPU (no kernels to count: a
smoke test). Not a test: kernel names depend on the GPU, cuDNN and PyTorch.
"""
import collections
import sys

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, "examples/benchmarks")
import step_time as st  # noqa: E402

from segexpr.data.synthetic import SyntheticFaces  # noqa: E402

device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
cats, names = collections.Counter(), collections.Counter()
current = None


def kind(n):
    n = n.lower()
    if "memcpy" in n or "memset" in n: return "memcpy/memset"
    if "multi_tensor" in n or "foreach" in n: return "optimizer (foreach)"
    if any(k in n for k in ("conv", "gemm", "xmma", "cudnn", "sm90", "sm80", "cutlass", "winograd", "implicit", "dgrad", "wgrad", "fprop", "nchw", "nhwc")): return "conv/gemm"
    if "grid_sampler" in n: return "grid_sample"
    if "reduce" in n or "norm" in n: return "reduce/norm"
    if "elementwise" in n or "vectorized" in n: return "elementwise"
    return "other"


orig = st.count_kernels
def counting(events):
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA or device == "cpu":
            cats[(current, kind(e.name))] += 1
            names[(current, e.name[:90])] += 1
    return orig(events)
st.count_kernels = counting
size, bs, nc, adv, nets = st.SCALES["main"]
batch = next(iter(DataLoader(SyntheticFaces(size=size, length=bs, seed=0, pairs=True, identities=4), batch_size=bs)))
for current in ("global", "full"):
    t = st._fit(st.build(current, size, nets, adv), batch, 8 if device == "cuda" else 2, "32-true", device, False,
                profile_from=6 if device == "cuda" else 0)
    print(current, "kernels per batch (D, D+G):", t.kernels, flush=True)
print("kind: global D+G pair, full D+G pair (kernels in one D batch + one D+G batch)")
for k in sorted({k for _, k in cats}):
    print(f"{k:22s} {cats[('global', k)]:6d} {cats[('full', k)]:6d}")
for c in ("global", "full"):
    print(f"top kernels, {c}:")
    for (cc, n), v in names.most_common():
        if cc == c and v >= 8: print(f"  {v:5d} {n}")
