"""Rate and peak memory of `radixpert data prepare mimic-cxr` on generated MIMIC-shaped trees.

Builds a MIMIC-CXR-JPG tree (metadata/split/label CSVs gzip'd, tiny JPGs, report .txt files)
with the test fixture builder, then runs the real command as a separate process and reads its
peak resident memory (GNU time). Bounded memory shows as a peak that does not grow with
the number of studies.

    python benchmarks/prepare_mimic.py --sizes 10000 100000 --workdir /tmp/mimic-bench
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.data.fixtures import build_mimic  # noqa: E402


def run(n: int, workdir: Path, fmt: str) -> tuple[float, float, float]:
    tree = workdir / f"mimic-{n}"
    if tree.exists():
        shutil.rmtree(tree)
    t0 = time.perf_counter()
    build_mimic(tree, n_extra=n - 3)
    built = time.perf_counter() - t0
    out = workdir / f"mimic-{n}.{fmt}"
    cmd = ["radixpert", "data", "prepare", "mimic-cxr", "--root", str(tree), "--out", str(out)]
    # GNU time reports this one process's peak RSS (getrusage of children would report the
    # largest child so far, which mixes runs).
    t0 = time.perf_counter()
    p = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *cmd], check=True, capture_output=True, text=True
    )
    took = time.perf_counter() - t0
    peak_mb = int(p.stderr.strip().splitlines()[-1]) / 1024
    shutil.rmtree(tree)
    return built, took, peak_mb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--format", default="parquet", choices=("parquet", "jsonl"))
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print("| studies | tree build (s) | prepare (s) | studies/s | peak RSS (MB) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n in args.sizes:
        built, took, peak = run(n, args.workdir, args.format)
        print(f"| {n:,} | {built:.1f} | {took:.1f} | {n / took:,.0f} | {peak:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
