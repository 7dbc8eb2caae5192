"""Task mixtures: which tasks, with what weight, and per-dataset repeat factors.

    radixpert data instruct --studies studies.jsonl --out train.jsonl \\
        --tasks report=1 classification=0.5 detection=1 --repeat mimic-cxr=1 phantoms=2

A weight w times a dataset's repeat factor r gives floor(w·r) conversations of that task
per study plus one more with probability frac(w·r), drawn from a seeded generator, so the
same inputs and seed always give the same set.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator

from radixpert.data.study import Study
from radixpert.instruct.conversation import Conversation
from radixpert.instruct.tasks import Task, create


def build_mixture(
    studies: Iterable[Study],
    weights: dict[str, float],
    repeats: dict[str, float] | None = None,
    seed: int = 0,
    counts: Counter | None = None,
) -> Iterator[Conversation]:
    """Conversations of every task for every study, by weight and repeat factor.

    `counts` (if given) is filled with the number of conversations per task, and with
    "skipped:<task>" for studies a task could not use (no boxes, no labels, no text).
    """
    tasks: list[tuple[Task, float]] = [(create(n), float(w)) for n, w in weights.items()]
    for _, w in tasks:
        if w < 0 or math.isnan(w):
            raise ValueError(f"task weights must be >= 0, got {weights}")
    repeats = repeats or {}
    counts = counts if counts is not None else Counter()
    for study in studies:
        rng = random.Random(f"{seed}:{study.id}")  # per study: order-independent, resumable
        r = float(repeats.get(study.dataset, 1.0))
        for task, w in tasks:
            expected = w * r
            copies = int(expected) + (rng.random() < expected - int(expected))
            for c in range(copies):
                made = task.build(study, rng)
                if not made:
                    counts[f"skipped:{task.name}"] += 1
                    break
                for conv in made:
                    if c:
                        conv.id = f"{conv.id}:r{c}"
                    counts[task.name] += 1
                    yield conv
