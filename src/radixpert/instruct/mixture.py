"""Task mixtures: which tasks, with what weight, and per-dataset repeat factors.

    radixpert data instruct studies.jsonl -o train.jsonl \\
        --tasks report=1 classification=0.5 detection=1 --repeat mimic-cxr=1 phantoms=2

A weight w times a dataset's repeat factor r gives floor(w·r) conversations of that task
per study plus one more with probability frac(w·r), drawn from a seeded generator, so the
same inputs and seed always give the same set.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Iterable, Iterator

from radixpert.data.study import Study
from radixpert.instruct.conversation import Conversation
from radixpert.instruct.tasks import Task, create

log = logging.getLogger(__name__)


def build_mixture(
    studies: Iterable[Study],
    weights: dict[str, float],
    repeats: dict[str, float] | None = None,
    seed: int = 0,
    counts: Counter | None = None,
    task_objects: dict[str, Task] | None = None,
) -> Iterator[Conversation]:
    """Conversations of every task for every study, by weight and repeat factor.

    `counts` (if given) is filled with the number of conversations per task, with
    "skipped:<task>" for studies a task could not use (no boxes, no labels, no text), and with
    "failed:<task>" for studies an LLM-written task could not turn into turns.
    `task_objects` supplies tasks that need construction arguments (an LLM client).
    """
    from radixpert.errors import LLMError

    given = task_objects or {}
    tasks: list[tuple[Task, float]] = [
        (given[n] if n in given else create(n), float(w)) for n, w in weights.items()
    ]
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
                try:
                    made = task.build(study, rng)
                except LLMError as e:
                    log.warning("%s", e)
                    counts[f"failed:{task.name}"] += 1
                    break
                if not made:
                    counts[f"skipped:{task.name}"] += 1
                    break
                for conv in made:
                    if c:
                        conv.id = f"{conv.id}:r{c}"
                    counts[task.name] += 1
                    yield conv
