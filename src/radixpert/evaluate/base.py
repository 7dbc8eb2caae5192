"""The one metric contract: `Metric.compute(references, candidates) -> MetricResult`.

A metric keeps one score per report pair so that confidence intervals and paired tests
never re-run a model; it declares its direction and records the exact settings it used.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from radixpert.errors import MetricUnavailable


@dataclass
class MetricResult:
    """Scores of one named metric over N report pairs.

    Attributes:
        name: registry-style name, e.g. "bleu-4", "f1-chexpert-14-micro", "radcliq-v1".
        aggregate: the headline number as the reference implementation defines it
            (a corpus statistic such as corpus BLEU, or the mean of `per_sample`).
        per_sample: one score per pair, in input order.
        higher_is_better: direction of `aggregate` and `per_sample`.
        settings: everything needed to reproduce the number (checkpoint, layer,
            tokenisation, variant, smoothing, ...).
        detailed: other numbers of the same pass that are not ranked (per-label F1, P/R).
        per_sample_detailed: further per-sample series (e.g. precision and recall).
        extra: companion metrics computed in the same pass (BLEU-1..3 beside BLEU-4,
            F1-CheXbert-5 beside -14); the runner lists them as metrics of their own.
        corpus_fn: for corpus statistics, recomputes `aggregate` on a resample given an
            index array (used by the bootstrap); None means the aggregate is the mean.
        display: how leaderboards show the aggregate, when it differs from it
            (RadCliQ-v1 shows 1/mean); see `display_transform`.
        display_transform: name of the transform behind `display` ("inverse" or None).
        versions: package versions the numbers depend on.
        bounds: the range (low, high) the statistic cannot leave, e.g. (0, 1) for F1, BLEU
            and ROUGE; the normal-approximation interval is clipped to it. None: unbounded.
    """

    name: str
    aggregate: float
    per_sample: list[float]
    higher_is_better: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    detailed: dict[str, Any] = field(default_factory=dict)
    per_sample_detailed: dict[str, list[float]] = field(default_factory=dict)
    extra: list[MetricResult] = field(default_factory=list)
    corpus_fn: Callable[[np.ndarray], float] | None = field(default=None, repr=False)
    display: float | None = None
    display_transform: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    bounds: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.aggregate = float(self.aggregate)
        self.per_sample = [float(x) for x in self.per_sample]

    def flatten(self) -> list[MetricResult]:
        """This result followed by its companions (depth first), each without `extra`."""
        out = [self]
        for r in self.extra:
            out.extend(r.flatten())
        return out


class Metric(ABC):
    """A report metric. Subclasses set `name`, `higher_is_better`, and implement `compute`.

    `requires` lists importable modules; `check()` returns None when the metric can run,
    else a sentence saying why not (checked without importing heavy packages or loading
    weights, so `radixpert evaluate --list` stays fast).
    """

    name: str = ""
    higher_is_better: bool = True
    requires: tuple[str, ...] = ()
    description: str = ""

    def check(self) -> str | None:
        from radixpert._optional import install_hint, missing

        absent = missing(*self.requires)
        if absent:
            return f"needs {', '.join(absent)}: {install_hint(absent)}"
        return None

    def ensure_available(self) -> None:
        """Raise MetricUnavailable with `check()`'s reason if the metric cannot run."""
        reason = self.check()
        if reason:
            raise MetricUnavailable(f"{self.name}: {reason}")

    @abstractmethod
    def compute(self, references: Sequence[str], candidates: Sequence[str]) -> MetricResult:
        """Score each candidate against the reference at the same position."""


def mean(values: Sequence[float]) -> float:
    """Mean of a non-empty sequence, nan for an empty one."""
    return float(np.mean(values)) if len(values) else math.nan


_SHOW_PROGRESS = False


def show_progress(on: bool) -> None:
    """Turn the progress bars of long metric computations on or off (the runner does)."""
    global _SHOW_PROGRESS
    _SHOW_PROGRESS = on


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def progress(total: int, desc: str, unit: str = "texts") -> Any:
    """A progress bar (tqdm, on stderr) for a model-based metric's batches.

    Use as `with progress(n, "chexbert") as bar: ... bar.update(len(batch))`. Shown only
    when the runner turned progress on and there is work to do; otherwise a no-op.
    """
    if not _SHOW_PROGRESS or total <= 0:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    import sys

    return tqdm(
        total=total,
        desc=f"  {desc}",
        unit=unit,
        file=sys.stderr,
        mininterval=1.0,
        leave=False,
        dynamic_ncols=True,
    )


def resolve_device(device: str | None) -> str:
    """The torch device for a model-based metric: `device` as given, or with None/"auto"
    "cuda" when a GPU is visible, else "cpu"."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def package_versions(*dists: str) -> dict[str, str]:
    """Installed versions of the given distributions ("absent" when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for d in dists:
        try:
            out[d] = version(d)
        except PackageNotFoundError:
            out[d] = "absent"
    return out
