"""SynthFACS rendering speed in one process on one core.

    python examples/benchmarks/render_speed.py --size 128 --count 500

Prints samples/s (wall clock, and per CPU second, which is less sensitive to a busy machine) for plain items and
for paired items (three renders each), both as batch-contract tensors
without augmentation; identity caches are warmed first (as they are after the first epoch of a DataLoader).
"""
from __future__ import annotations

import argparse
import time

import cv2
import torch

from segexpr.data.synthetic import SyntheticFaces


def measure(dataset: SyntheticFaces, count: int) -> tuple[float, float]:
    """(samples per wall-clock second, samples per CPU second of this process)."""
    for i in range(min(count, dataset.identities)):  # warm the per-identity caches
        dataset[i]
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        dataset[i]
    return count / (time.perf_counter() - wall), count / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--identities", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    plain = SyntheticFaces(size=args.size, length=args.count, identities=args.identities)
    pairs = SyntheticFaces(size=args.size, length=args.count, identities=args.identities, pairs=True)
    print(f"size {args.size}, {args.count} items, {args.identities} identities, 1 thread")
    for name, dataset in (("plain items", plain), ("pairs", pairs)):
        wall, cpu = measure(dataset, args.count)
        print(f"{name:12s} {wall:6.0f} samples/s wall-clock, {cpu:6.0f} samples/s per CPU second")


if __name__ == "__main__":
    main()
