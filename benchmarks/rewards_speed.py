"""Rewards per second of the grpo objective's offline rewards: one batch of 64 groups of 8.

Each reward scores 512 sampled answers against their references, as one training step of a
``grpo`` stage with 64 prompts and ``group_size: 8`` does (``radixpert.train.rewards``). The
answers are real de-identified IU-Xray findings (the project's ``shared/data`` sample when it
is there, else phantom reports), each group's eight answers being other reports of the set, so
that the labeler and BLEU see report-like text of real length. Rewards whose weights are not on
this machine (RadGraph-F1, RadCliQ-v1, BERTScore, ...) are listed as skipped with the reason.

    python benchmarks/rewards_speed.py [--groups 64] [--group-size 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

OFFLINE = ("findings-f1", "bleu-2", "rouge-l", "format", "box-iou", "classification-f1")
MODEL_BASED = ("radgraph-f1", "radcliq-v1", "bertscore", "ratescore", "chexbert", "semb-score")


def _reports(n: int) -> tuple[list[str], str]:
    """At least ``n`` findings and where they came from: the IU-Xray sample of ``shared/data``
    (``indiana_reports_dev.csv``, the Kaggle release's columns) if present, else phantoms'."""
    import csv

    here = Path(__file__).resolve().parents[1]
    for root in (here.parent / "shared" / "data", here / "shared" / "data"):
        path = root / "iu_xray_reports" / "indiana_reports_dev.csv"
        if path.is_file():
            with path.open(encoding="utf-8", newline="") as f:
                texts = [r["findings"] for r in csv.DictReader(f) if len(r["findings"].split()) > 5]
            if texts:
                return [texts[i % len(texts)] for i in range(n)], f"{len(texts)} IU-Xray findings"
    from radixpert.data.phantoms import generate_phantoms

    with tempfile.TemporaryDirectory() as tmp:
        studies = generate_phantoms(min(n, 400), Path(tmp), size=64)
    return [studies[i % len(studies)].findings for i in range(n)], "phantom findings"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--groups", type=int, default=64)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from radixpert.evaluate.base import MetricUnavailable
    from radixpert.train.recipe import GRPOSettings
    from radixpert.train.rewards import RewardExample, Rewards

    n = args.groups * args.group_size
    reports, source = _reports(n + args.groups)
    rng = random.Random(0)
    refs = reports[: args.groups]
    answers = [rng.choice(reports) for _ in range(n)]
    report_examples = [RewardExample("report", refs[i // args.group_size]) for i in range(n)]
    box = "[0.10, 0.20, 0.40, 0.60]"
    boxes = [f"[0.1{rng.randint(0, 9)}, 0.20, 0.40, 0.6{rng.randint(0, 9)}]" for _ in range(n)]
    ground = [RewardExample("grounding-abnormality", box, {"boxes": [box]}) for _ in range(n)]
    cls_ex = [RewardExample("classification", "Cardiomegaly", {"positive": ["Cardiomegaly"]})] * n
    cls_ans = [
        rng.choice(["Cardiomegaly", "Pleural Effusion, Cardiomegaly", "None"]) for _ in range(n)
    ]
    inputs = {"box-iou": (ground, boxes), "classification-f1": (cls_ex, cls_ans)}
    settings = GRPOSettings(group_size=args.group_size)
    print(
        f"{n} answers ({args.groups} groups x {args.group_size}) from {source}, "
        f"median of {args.repeats} repeats"
    )
    print(f"{'reward':<20} {'ms / batch':>12} {'rewards / s':>12}")
    for name in OFFLINE + MODEL_BASED:
        try:
            rewards = Rewards({name: 1.0}, settings)
        except MetricUnavailable as err:
            print(f"{name:<20} {'skipped':>12}  {str(err)[:90]}")
            continue
        examples, texts = inputs.get(name, (report_examples, answers))
        rewards.score(examples[:8], texts[:8])  # imports and caches outside the timing
        times = []
        for _ in range(args.repeats):
            tick = time.perf_counter()
            rewards.score(examples, texts)
            times.append(time.perf_counter() - tick)
        best = statistics.median(times)
        print(f"{name:<20} {best * 1000:>12.1f} {n / best:>12.0f}")
    guards = Rewards({"format": 1.0}, settings)
    tick = time.perf_counter()
    guards.guards(report_examples, answers, [False] * n)
    took = time.perf_counter() - tick
    print(f"{'guards (all three)':<20} {took * 1000:>12.1f} {n / took:>12.0f}")


if __name__ == "__main__":
    main()
