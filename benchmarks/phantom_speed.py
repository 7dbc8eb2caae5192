"""Phantom generation speed: images/s, PNG writing and studies.jsonl included, one process.

Generates N phantoms with `generate_phantoms` into a temporary folder at each size (after
a short warm-up) and prints one markdown table row per size, then a summary line. Usage::

    python benchmarks/phantom_speed.py                    # N = 300 at 256 and 512
    python benchmarks/phantom_speed.py --n 1000 --sizes 256 512 1024
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from radixpert.data.phantoms import generate_phantoms


def measure(n: int, size: int, repeats: int = 2) -> float:
    """Best images/s over `repeats` runs of `n` phantoms at `size` (a fresh folder each)."""
    best = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        generate_phantoms(10, Path(tmp) / "warmup", size=size)  # imports, caches, allocator
        for r in range(repeats):
            t0 = time.perf_counter()
            generate_phantoms(n, Path(tmp) / f"run{r}", size=size, seed=r)
            best = max(best, n / (time.perf_counter() - t0))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="phantoms per run (default 300)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--repeats", type=int, default=2, help="runs per size; the best is kept")
    args = ap.parse_args()
    print("| size | images/s | ms/image |")
    print("|---:|---:|---:|")
    rates = {}
    for size in args.sizes:
        rate = measure(args.n, size, args.repeats)
        rates[size] = rate
        print(f"| {size}x{size} | {rate:.0f} | {1000 / rate:.1f} |", flush=True)
    cpu = platform.processor() or platform.machine()
    summary = ", ".join(f"{s}x{s}: {r:.0f} images/s" for s, r in rates.items())
    print(f"\nphantoms (PNG + studies.jsonl, 1 process, {os.cpu_count()} CPUs, {cpu}): {summary}")


if __name__ == "__main__":
    main()
