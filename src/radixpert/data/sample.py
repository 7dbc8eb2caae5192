"""Stratified subsets of prepared studies, as Radixpert drew them (15,000 ROCO v2 samples
balanced by modality, 16,000 PadChest studies balanced by label).

    radixpert data sample studies.jsonl --n 16000 --stratify labels --seed 0 -o subset.jsonl

    subset, report = sample_studies(studies, 16000, stratify="labels", seed=0)

``stratify="modality"`` gives every modality an equal share; a modality with fewer studies than
its share gives all it has, and what it could not give is shared among the others (so the
subset has exactly ``n`` studies whenever there are that many). ``stratify="labels"`` is
multi-label: studies are drawn one at a time for the label that has the fewest drawn so far,
among the labels that still have undrawn studies (ties by name), and each drawn study counts
for every label it carries, so rare findings reach the subset as often as the data allow and
common ones do not crowd them out. Labels are the positive observations (``1``) of
`Study.labels`, or the names in a list field of `Study.extra` (``label_field="padchest_labels"``
for PadChest's own 174 findings); a study with none counts as ``"(no label)"``.
``stratify=None`` draws uniformly. Every draw is from a `random.Random(seed)`; the same input and
seed give the same subset, in input order.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from radixpert.data.study import Study
from radixpert.errors import UsageError

__all__ = ["NO_LABEL", "SampleReport", "sample_studies", "strata_of"]

NO_LABEL = "(no label)"
Stratify = Literal["labels", "modality"] | None


@dataclass
class SampleReport:
    """What was available and what was drawn, per stratum."""

    stratify: str
    available: Counter[str] = field(default_factory=Counter)
    drawn: Counter[str] = field(default_factory=Counter)
    n: int = 0

    def lines(self) -> list[str]:
        """A table for a person: stratum, available, drawn."""
        width = max([len(k) for k in self.available] + [7])
        out = [f"  {'stratum':<{width}}  {'available':>9}  {'drawn':>7}"]
        for key, have in sorted(self.available.items(), key=lambda kv: (-kv[1], kv[0])):
            out.append(f"  {key:<{width}}  {have:>9,}  {self.drawn[key]:>7,}")
        return out

    def to_dict(self) -> dict:
        return {
            "stratify": self.stratify,
            "n": self.n,
            "available": dict(sorted(self.available.items())),
            "drawn": dict(sorted(self.drawn.items())),
        }


def strata_of(study: Study, stratify: Stratify, label_field: str | None = None) -> list[str]:
    """The strata a study belongs to: its modality, or its positive labels."""
    if stratify == "modality":
        return [study.modality or "(unknown)"]
    if stratify == "labels":
        if label_field:
            value = study.extra.get(label_field)
            if value is None:
                raise UsageError(
                    f"study {study.id} ({study.dataset}): no extra[{label_field!r}] to stratify by"
                )
            names = [value] if isinstance(value, str) else [str(v) for v in value]
        else:
            names = [name for name, v in study.labels.items() if v == 1]
        return sorted(set(names)) or [NO_LABEL]
    return ["(all)"]


def _shares(sizes: dict[str, int], n: int) -> dict[str, int]:
    """Equal shares of ``n`` over the strata, capped by each stratum's size (water-filling)."""
    shares = dict.fromkeys(sizes, 0)
    open_ = sorted(sizes)
    left = n
    while left > 0 and open_:
        each, extra = divmod(left, len(open_))
        still = []
        for i, key in enumerate(open_):
            want = each + (1 if i < extra else 0)
            give = min(want, sizes[key] - shares[key])
            shares[key] += give
            left -= give
            if shares[key] < sizes[key]:
                still.append(key)
        open_ = still  # a stratum that gave all it has leaves; the rest share what is left
    return shares


def sample_studies(
    studies: Sequence[Study],
    n: int,
    stratify: Stratify = None,
    seed: int = 0,
    label_field: str | None = None,
) -> tuple[list[Study], SampleReport]:
    """A subset of ``n`` studies (all of them when there are no more), stratified.

    Args:
        studies: The studies to draw from.
        n: How many to draw (> 0).
        stratify: ``"modality"``, ``"labels"`` or ``None`` (uniform).
        seed: Seed of the draw.
        label_field: For ``"labels"``: a list field of `Study.extra` to read labels from
            instead of the 14 observations.

    Returns:
        The drawn studies in their input order, and a `SampleReport`.

    Raises:
        UsageError: ``n`` < 1, an unknown ``stratify``, or a study without ``label_field``.
    """
    if n < 1:
        raise UsageError(f"--n {n}: must be at least 1")
    if stratify not in (None, "labels", "modality"):
        raise UsageError(f"--stratify {stratify!r}: expected labels, modality or none")
    rng = random.Random(seed)
    strata = [strata_of(s, stratify, label_field) for s in studies]
    report = SampleReport(stratify or "none", n=0)
    for keys in strata:
        report.available.update(keys)
    if n >= len(studies):
        chosen = list(range(len(studies)))
    elif stratify == "labels":
        chosen = _draw_by_label(strata, n, rng)
    else:
        members: dict[str, list[int]] = {}
        for i, keys in enumerate(strata):
            members.setdefault(keys[0], []).append(i)
        shares = _shares({k: len(v) for k, v in members.items()}, n)
        chosen = [i for k in sorted(members) for i in rng.sample(members[k], shares[k])]
    chosen.sort()
    for i in chosen:
        report.drawn.update(strata[i])
    report.n = len(chosen)
    return [studies[i] for i in chosen], report


def _draw_by_label(strata: list[list[str]], n: int, rng: random.Random) -> list[int]:
    queues: dict[str, list[int]] = {}
    for i, keys in enumerate(strata):
        for k in keys:
            queues.setdefault(k, []).append(i)
    for q in queues.values():
        rng.shuffle(q)
        q.reverse()  # pop() from the end takes them in shuffled order
    drawn: Counter[str] = Counter()
    taken: set[int] = set()
    while len(taken) < n:
        # The label with the fewest drawn so far that still has an undrawn study.
        live = []
        for k, q in queues.items():
            while q and q[-1] in taken:
                q.pop()
            if q:
                live.append(k)
        if not live:
            break
        label = min(live, key=lambda k: (drawn[k], k))
        i = queues[label].pop()
        taken.add(i)
        drawn.update(strata[i])
    return list(taken)
