"""Whole-process time of `radixpert evaluate` with the metrics that need no weights.

Builds N realistic report pairs with the seeded generator of `lexical_speed.py`, writes
them as ReXrank-style JSON, and times `radixpert evaluate` as a separate process pinned to
one core (`taskset -c 0`), interpreter start, reading, tokenising, every metric, 500
bootstrap resamples per metric and writing the results file included. Prints a markdown table.

    python benchmarks/evaluate_suite.py                       # N = 1000, 10000, 100000
    python benchmarks/evaluate_suite.py --sizes 10000 --metrics bleu rouge-l cider-d
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lexical_speed import make_pairs

SUITE = ["bleu", "bleu-2-radcliq", "rouge-l", "cider-d", "f1-chexpert"]


def run(n: int, metrics: list[str], bootstrap: int, workdir: Path) -> tuple[float, dict]:
    refs, cands = make_pairs(n, seed=0)
    r, c, out = workdir / f"refs{n}.json", workdir / f"cands{n}.json", workdir / f"res{n}.json"
    r.write_text(json.dumps({f"s{i}": t for i, t in enumerate(refs)}))
    c.write_text(json.dumps({f"s{i}": t for i, t in enumerate(cands)}))
    cmd = [
        "radixpert",
        "evaluate",
        "-r",
        str(r),
        "-c",
        str(c),
        "-m",
        *metrics,
        "-q",
        "--bootstrap",
        str(bootstrap),
        "--out",
        str(out),
    ]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    res = json.loads(out.read_text())
    return took, {k: v["seconds"] for k, v in res["metrics"].items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--metrics", nargs="+", default=SUITE)
    ap.add_argument("--bootstrap", type=int, default=500)
    args = ap.parse_args(argv)
    print(f"metrics: {' '.join(args.metrics)}; bootstrap {args.bootstrap}; one core\n")
    print("| pairs | whole process (s) | per 1k pairs (s) | metric compute (s) |")
    print("| ---: | ---: | ---: | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            took, per = run(n, args.metrics, args.bootstrap, Path(tmp))
            compute = ", ".join(
                f"{k} {v:.2f}"
                for k, v in per.items()
                if k in args.metrics or k in ("bleu-4", "f1-chexpert-14-micro")
            )
            print(f"| {n:,} | {took:.2f} | {took / n * 1000:.3f} | {compute} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
