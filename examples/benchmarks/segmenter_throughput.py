"""Inference throughput of the segexpr segmenters (images/s), default widths, eval mode.

    python examples/benchmarks/segmenter_throughput.py                    # 512 px, batch 1 and 8, CPU
    python examples/benchmarks/segmenter_throughput.py --device cuda --precision bf16

Prints one line per (arch, batch): images/s and milliseconds per batch (median of ``--iters`` timed
runs after ``--warmup`` untimed ones). Not a test: numbers depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from segexpr.models.segmenters import create_segmenter, list_segmenters


def benchmark(arch: str, batch: int, size: int, device: str, precision: str, warmup: int, iters: int) -> tuple[float, float]:
    """Return ``(images_per_second, ms_per_batch)`` for one configuration."""
    net = create_segmenter(arch).to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    times = []
    with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0], dtype=dtype or torch.float32,
                                                enabled=dtype is not None):
        for i in range(warmup + iters):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            net(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    ms = statistics.median(times) * 1000
    return batch / (ms / 1000), ms


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=list_segmenters(), choices=list_segmenters())
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"device={args.device} precision={args.precision} size={args.size} threads={torch.get_num_threads()} "
          f"torch={torch.__version__}")
    for arch in args.arch:
        for batch in args.batch:
            ips, ms = benchmark(arch, batch, args.size, args.device, args.precision, args.warmup, args.iters)
            print(f"{arch:8s} batch={batch:<3d} {ips:8.2f} images/s  {ms:9.1f} ms/batch")


if __name__ == "__main__":
    main()
