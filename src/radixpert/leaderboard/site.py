"""``radixpert leaderboard``: a static leaderboard site from ``radixpert benchmark run`` results.

    radixpert leaderboard results/ --out site/            # site/index.html, .csv, .md, PNGs
    radixpert leaderboard results/ --out site/ --metric rouge-l --test paired-bootstrap

    from radixpert.leaderboard.site import build_site
    summary = build_site("results", "site", resamples=10_000, seed=0)

It reads every result file under the folder (``<model>/<benchmark>.json``; the
``*.predictions.json`` and ``*.meta.json`` that ``benchmark run --model`` writes beside them are
not results and are passed over; any other JSON is an error) and makes, per benchmark:

- the ranking, by ``--metric`` if given, else the benchmark's ``rank_by`` when every model has
  it, else its ``offline_rank_by`` (the page says which, and why). A metric shown through a
  transform (RadCliQ-v1: ``1/mean``, higher is better) ranks by that value;
- a table: rank, model, every metric that all of the benchmark's results hold (the aggregate
  and its bootstrap 95% percentile interval ``[low, high]``, the best in each column marked),
  and for every model but the leader a paired test against the leader on the ranking metric's
  per-sample scores (``evaluate.compare``), the p-values adjusted across the benchmark's
  comparisons (Holm by default) and "differs" where the adjusted p is below 0.05;
- rank stability: ids resampled with replacement (``stats.bootstrap_indices``, seeded), every
  model's mean per-sample ranking score recomputed per resample, and the share of resamples
  that put each model at each rank (a heat map, and P(rank 1) in the table).

Then one box plot per metric of the per-sample scores, models on the x axis and one box per
benchmark (as ReXrank's figure 3). The site is ``index.html`` (self-contained: inline CSS, no
script, images as files beside it), ``leaderboard.csv`` (one row per (benchmark, model)),
``leaderboard.md`` and ``settings.json`` (every setting behind the numbers: benchmark versions
and digests, prediction digests, generation and metric settings, test, correction, resamples,
seed). It is written into a temporary sibling folder and swapped in by rename.

Results of the same benchmark must have the same version and digest, and the same ids: else
they are not comparable, and the error names the files or the models.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from radixpert.errors import InputError, UsageError
from radixpert.leaderboard.run import RESULT_FORMAT, metric_key, safe_name

logger = logging.getLogger(__name__)

__all__ = [
    "ALPHA",
    "SITE_FORMAT",
    "TESTS",
    "Board",
    "add_parser",
    "build_site",
    "rank_board",
    "read_results",
]

SITE_FORMAT = "radixpert.leaderboard-site"
TESTS = ("approximate-randomization", "paired-bootstrap")
ALPHA = 0.05  # "differs from the leader" below this adjusted p-value
MISSING = "–"
_NOT_RESULTS = (".predictions.json", ".meta.json")  # written beside results by `benchmark run`
# Tableau 10, as the demo page: distinct on screen and in grayscale print.
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Reading results


@dataclass(frozen=True)
class Result:
    """One result file: its path and document."""

    path: Path
    doc: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.doc["model"]["name"])

    @property
    def bench(self) -> str:
        return str(self.doc["benchmark"]["name"])


def read_results(results_dir: str | Path, *, exclude: Path | None = None) -> list[Result]:
    """Every result file under ``results_dir``, checked; sorted by path.

    Args:
        results_dir: The ``--out`` folder of ``radixpert benchmark run``.
        exclude: A folder not to read (the site itself, when it lies inside).

    Raises:
        InputError: No results; a file that is not JSON or not a benchmark result, or lacks a
            field; two results for one (model, benchmark); results of one benchmark with a
            different version or digest. The message names the file(s).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder of benchmark results")
    skip = exclude.resolve() if exclude is not None else None
    paths = sorted(
        p
        for p in root.rglob("*.json")
        if not p.name.endswith(_NOT_RESULTS)
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and not (skip is not None and p.resolve().is_relative_to(skip))
    )
    if not paths:
        raise InputError(f"{root}: no result files (<model>/<benchmark>.json) in it")
    results = [_read_one(p) for p in paths]
    seen: dict[tuple[str, str], Path] = {}
    protocol: dict[str, Result] = {}
    for r in results:
        key = (r.model, r.bench)
        if key in seen:
            raise InputError(
                f"two results for model {r.model!r} on benchmark {r.bench!r}: {seen[key]} and "
                f"{r.path}; keep one"
            )
        seen[key] = r.path
        first = protocol.setdefault(r.bench, r)
        a, b = first.doc["benchmark"], r.doc["benchmark"]
        if (a["version"], a["sha256"]) != (b["version"], b["sha256"]):
            raise InputError(
                f"results of benchmark {r.bench!r} are not comparable: {first.path} has version "
                f"{a['version']} (sha256 {str(a['sha256'])[:12]}), {r.path} version "
                f"{b['version']} (sha256 {str(b['sha256'])[:12]}); score every model under one "
                "version of the benchmark file"
            )
    return results


def _read_one(path: Path) -> Result:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt != RESULT_FORMAT:
        raise InputError(
            f"{path}: not a benchmark result (format {fmt!r}, expected {RESULT_FORMAT!r}); "
            "the results folder should hold only `radixpert benchmark run` output"
        )
    for key, sub in (("benchmark", ("name", "version", "sha256")), ("model", ("name",))):
        part = doc.get(key)
        missing = [k for k in sub if not isinstance(part, dict) or k not in part]
        if missing:
            raise InputError(f"{path}: no {key}.{missing[0]}")
    ids, metrics = doc.get("ids"), doc.get("metrics")
    if not isinstance(ids, list) or not isinstance(metrics, dict):
        raise InputError(f"{path}: expected ids (a list) and metrics (an object)")
    if len(set(map(str, ids))) != len(ids):
        raise InputError(f"{path}: an id is listed twice in ids")
    for name, m in metrics.items():
        if not isinstance(m, dict) or len(m.get("per_sample") or []) != len(ids):
            raise InputError(f"{path}: metric {name!r}: expected one per-sample score per id")
    return Result(path, doc)


# --------------------------------------------------------------------------------------------
# One benchmark's board


@dataclass(frozen=True)
class Column:
    """A metric column: the result key, its label, and the direction of the shown value."""

    key: str
    label: str
    higher_is_better: bool
    inverse: bool  # shown (and ranked) as 1/mean, higher is better
    corpus: bool  # the aggregate is a corpus statistic, not the mean of per-sample scores
    pooled: bool = False  # every result stores what the statistic needs (leaderboard.pooled)

    @property
    def on_means(self) -> bool:
        """A corpus statistic whose tests can only use the mean of per-sample scores."""
        return self.corpus and not self.pooled


@dataclass
class Row:
    """One model on one benchmark."""

    model: str
    result: Result
    rank: int
    cells: dict[str, tuple[float, float, float]]  # column key -> (value, CI low, CI high)
    rank_probs: list[float] = field(default_factory=list)  # P(rank = k), k = 1..models
    test: dict[str, Any] | None = None  # the paired test against the leader (None: leader)
    p_adjusted: float | None = None

    @property
    def differs(self) -> bool | None:
        return None if self.p_adjusted is None else self.p_adjusted < ALPHA


@dataclass
class Board:
    """One benchmark's ranking, table, tests and rank stability (see the module docstring)."""

    name: str
    record: dict[str, Any]
    ranking: Column
    ranking_from: str  # "--metric", "rank_by" or "offline_rank_by"
    why: str  # one sentence on how the ranking metric was chosen
    columns: list[Column]
    rows: list[Row]
    ids: list[str]
    partial_metrics: list[str]  # in some results only: left out of the table
    skipped: dict[str, list[str]]  # metric -> models whose run skipped it

    @property
    def best(self) -> dict[str, float]:
        """Column key -> the best value of the column (NaN left out)."""
        out = {}
        for c in self.columns:
            values = [r.cells[c.key][0] for r in self.rows if not math.isnan(r.cells[c.key][0])]
            if values:
                out[c.key] = max(values) if c.higher_is_better else min(values)
        return out


def _column(key: str, results: Sequence[Result]) -> Column:
    entries = [r.doc["metrics"][key] for r in results]
    inverse = any(e.get("display_transform") for e in entries)
    statistics = {(e.get("pooled") or {}).get("statistic") for e in entries}
    pooled = len(statistics) == 1 and None not in statistics
    corpus = pooled or any(
        not math.isclose(float(e["aggregate"]), float(e["mean"]), rel_tol=1e-9, abs_tol=1e-12)
        for e in entries
        if _finite(e.get("aggregate")) and _finite(e.get("mean"))
    )
    return Column(
        key=key,
        label=f"1/{key}" if inverse else key,
        higher_is_better=True if inverse else bool(entries[0]["higher_is_better"]),
        inverse=inverse,
        corpus=corpus,
        pooled=pooled,
    )


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _cell(entry: dict[str, Any], column: Column) -> tuple[float, float, float]:
    """(shown value, bootstrap 95% low, high); NaN where absent."""
    if column.inverse:
        value, ci = entry.get("display"), entry.get("display_ci95_bootstrap")
    else:
        value, ci = entry.get("aggregate"), entry.get("ci95_bootstrap")
    ci = ci or {}

    def num(x: Any) -> float:
        return float(x) if _finite(x) else math.nan

    return num(value), num(ci.get("low")), num(ci.get("high"))


def _ranking_metric(
    name: str, bench: dict[str, Any], results: Sequence[Result], metric: str | None
) -> tuple[str, str, str]:
    """(result key, where it came from, a sentence saying why) of the ranking metric."""

    def resolved(wanted: str) -> tuple[str | None, list[str]]:
        keys = {r.model: metric_key(r.doc["metrics"], wanted) for r in results}
        lacking = sorted(m for m, k in keys.items() if k is None)
        found = {k for k in keys.values() if k is not None}
        if len(found) > 1:
            raise InputError(
                f"benchmark {name!r}: {wanted!r} names different metrics in different results "
                f"({', '.join(sorted(found))}); give --metric with one of them"
            )
        return (None if lacking else found.pop()), lacking

    if metric is not None:
        key, lacking = resolved(metric)
        if key is None:
            raise InputError(
                f"benchmark {name!r}: --metric {metric!r} is not in the results of "
                f"{', '.join(map(repr, lacking))}"
            )
        return key, "--metric", f"ranked by {key} (--metric)"
    rank_by, offline = bench.get("rank_by"), bench.get("offline_rank_by")
    key, lacking = resolved(rank_by) if rank_by else (None, [])
    if key is not None:
        return key, "rank_by", f"ranked by {key}, the benchmark's rank_by"
    if offline:
        okey, olacking = resolved(offline)
        if okey is not None:
            skipped = [r.model for r in results if rank_by in (r.doc.get("skipped_metrics") or {})]
            lacks = (
                "no result has it"
                if len(lacking) == len(results)
                else f"the results of {', '.join(lacking)} lack it"
            )
            if skipped:
                lacks += "; skipped in the runs of " + (
                    "every model" if len(skipped) == len(results) else ", ".join(skipped)
                )
            return (
                okey,
                "offline_rank_by",
                f"ranked by {okey}, the benchmark's offline_rank_by: its rank_by {rank_by} "
                f"is not in every result ({lacks})",
            )
        lacking = sorted({*lacking, *olacking})
    raise InputError(
        f"benchmark {name!r}: neither rank_by {rank_by!r} nor offline_rank_by {offline!r} is in "
        f"every result (missing in {', '.join(map(repr, lacking))}); give --metric"
    )


def _aligned(name: str, results: Sequence[Result]) -> tuple[list[str], list[list[int]]]:
    """The first result's ids, and for each result the positions of those ids in its own.

    Raises:
        InputError: Results that do not score the same ids, naming the benchmark and models.
    """
    ids = [str(i) for i in results[0].doc["ids"]]
    want = set(ids)
    orders = []
    for r in results:
        own = [str(i) for i in r.doc["ids"]]
        if set(own) != want:
            only_a, only_b = sorted(want - set(own)), sorted(set(own) - want)
            raise InputError(
                f"benchmark {name!r}: models {results[0].model!r} ({results[0].path}) and "
                f"{r.model!r} ({r.path}) scored different ids ({len(only_a)} only in the first, "
                f"e.g. {only_a[:3]}; {len(only_b)} only in the second, e.g. {only_b[:3]}); a "
                "paired comparison needs the same studies"
            )
        pos = {rid: i for i, rid in enumerate(own)}
        orders.append([pos[i] for i in ids])
    return ids, orders


def _check_options(test: str, correction: str, resamples: int, rank_resamples: int) -> None:
    from radixpert.evaluate.compare import CORRECTIONS

    if test not in TESTS:
        raise UsageError(f"unknown test {test!r}; one of {', '.join(TESTS)}")
    if correction not in CORRECTIONS:
        raise UsageError(f"unknown correction {correction!r}; one of {', '.join(CORRECTIONS)}")
    for name, n in (("resamples", resamples), ("rank resamples", rank_resamples)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UsageError(f"{name} must be a positive integer, got {n!r}")


def _ranks(keys: np.ndarray) -> np.ndarray:
    """Competition ranks (1, 1, 3) along the last axis, higher key first."""
    return 1 + (keys[..., None, :] > keys[..., :, None]).sum(axis=-1)


def rank_board(
    name: str,
    results: Sequence[Result],
    *,
    metric: str | None = None,
    test: str = "approximate-randomization",
    correction: str = "holm",
    resamples: int = 10_000,
    rank_resamples: int = 1000,
    seed: int = 0,
) -> Board:
    """Ranks one benchmark's results, tests every model against the leader, and resamples
    the ranking (arguments as ``build_site``'s)."""
    from radixpert.evaluate import compare
    from radixpert.evaluate.stats import bootstrap_indices
    from radixpert.leaderboard import pooled

    _check_options(test, correction, resamples, rank_resamples)
    bench = results[0].doc["benchmark"]
    key, source, why = _ranking_metric(name, bench, results, metric)
    ids, orders = _aligned(name, results)
    ranking = _column(key, results)
    scores = np.array(
        [
            np.asarray(r.doc["metrics"][key]["per_sample"], dtype=float)[o]
            for r, o in zip(results, orders)
        ]
    )
    for r, row in zip(results, scores):
        if not np.isfinite(row).all():
            raise InputError(f"{r.path}: metric {key!r} has a non-finite per-sample score")
    values = []
    for r in results:
        value = _cell(r.doc["metrics"][key], ranking)[0]
        if math.isnan(value):
            shown = "1/mean undefined (mean <= 0)" if ranking.inverse else "no finite value"
            raise InputError(f"{r.path}: ranking metric {ranking.label}: {shown}; give --metric")
        values.append(value if ranking.higher_is_better else -value)
    ranks = _ranks(np.array(values))
    order = sorted(range(len(results)), key=lambda i: (ranks[i], results[i].model))
    first = results[order[0]].doc["metrics"]
    shared = [k for k in first if all(k in r.doc["metrics"] for r in results)]
    columns = [_column(k, results) for k in [key, *(k for k in shared if k != key)]]
    rows = [
        Row(
            model=results[i].model,
            result=results[i],
            rank=int(ranks[i]),
            cells={c.key: _cell(results[i].doc["metrics"][c.key], c) for c in columns},
        )
        for i in order
    ]
    # Rank stability: the ranking statistic on each resample (the corpus statistic rebuilt
    # from the stored per-record counts when the results hold them, else the mean per-sample
    # score); an inverse metric ranks by the lower mean (1/mean, higher, for positive means).
    sign = 1.0 if (ranking.higher_is_better and not ranking.inverse) else -1.0
    idx = bootstrap_indices(len(ids), rank_resamples, seed)
    entries = [r.doc["metrics"][key] for r in results]
    if ranking.pooled:
        fns = [pooled.corpus_fn(entries[i], orders[i]) for i in order]
        means = np.array([[fn(row) for fn in fns] for row in idx])  # type: ignore[misc]
        means = np.where(np.isnan(means), -np.inf * sign, means)  # undefined ranks last
    else:
        means = np.stack([scores[i][idx].mean(axis=1) for i in order], axis=1)  # (R, models)
    sampled = _ranks(sign * means)
    for j, row in enumerate(rows):
        counts = np.bincount(sampled[:, j], minlength=len(rows) + 1)[1:]
        row.rank_probs = (counts / rank_resamples).tolist()
    # Paired tests against the leader, adjusted across the benchmark's comparisons.
    lead = order[0]
    leader = scores[lead]
    for j, i in enumerate(order[1:], 1):
        try:
            if test == "approximate-randomization":
                fn = (
                    pooled.pooled_fn(entries[lead], entries[i], orders[lead], orders[i])
                    if ranking.pooled
                    else None
                )
                outcome = compare.approximate_randomization(
                    leader, scores[i], resamples=resamples, seed=seed, pooled_corpus_fn=fn
                )
            else:
                fa = pooled.corpus_fn(entries[lead], orders[lead]) if ranking.pooled else None
                fb = pooled.corpus_fn(entries[i], orders[i]) if ranking.pooled else None
                outcome = compare.paired_bootstrap(
                    leader, scores[i], resamples=resamples, seed=seed, corpus_fn_a=fa,
                    corpus_fn_b=fb,
                )  # fmt: skip
        except ValueError as e:
            raise InputError(
                f"benchmark {name!r}: {rows[j].model!r} against the leader: {e}"
            ) from None
        rows[j].test = outcome.as_dict()
    adjusted = compare.correct([r.test["p_value"] for r in rows[1:]], correction)
    for row, p in zip(rows[1:], adjusted):
        row.p_adjusted = p
    skipped: dict[str, list[str]] = {}
    for r in results:
        for m in r.doc.get("skipped_metrics") or {}:
            skipped.setdefault(m, []).append(r.model)
    partial = sorted({k for r in results for k in r.doc["metrics"]} - set(shared))
    return Board(name, bench, ranking, source, why, columns, rows, ids, partial, skipped)


# --------------------------------------------------------------------------------------------
# Plots (matplotlib's object API: no pyplot, no global backend)


def _figure(width: float, height: float) -> Any:
    from radixpert._optional import require

    require("matplotlib", purpose="the leaderboard's plots")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _tex_safe(text: str) -> str:
    return text.replace("$", r"\$")  # matplotlib reads $...$ as mathtext


def _plot_ranks(board: Board, path: Path) -> None:
    """Heat map of P(rank = k): one row per model (table order), one column per rank."""
    m = len(board.rows)
    probs = np.array([r.rank_probs for r in board.rows])
    fig = _figure(max(5.5, 2.5 + 0.6 * m), 1.5 + 0.42 * m)
    ax = fig.add_subplot()
    ax.imshow(probs, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(m):
        for k in range(m):
            colour = "white" if probs[i, k] > 0.6 else "black"
            ax.text(k, i, f"{probs[i, k]:.2f}", ha="center", va="center", color=colour, size=8)
    ax.set_xticks(range(m), [str(k) for k in range(1, m + 1)])
    ax.set_yticks(range(m), [_tex_safe(r.model) for r in board.rows])
    ax.set_xlabel("rank")
    ax.set_title(_tex_safe(f"{board.name}\nP(rank = k) by {board.ranking.label}"), size=9)
    fig.savefig(path, format="png", metadata={"Software": None})


def _plot_boxes(
    key: str, boards: Sequence[Board], models: Sequence[str], path: Path, label: str
) -> bool:
    """Box plot of one metric's per-sample scores: models on x, one box per benchmark
    (False, and no file, when the metric has no finite score)."""
    series = []
    for b, board in enumerate(boards):
        for row in board.rows:
            entry = row.result.doc["metrics"].get(key)
            if entry is not None:
                values = np.asarray(entry["per_sample"], dtype=float)
                values = values[np.isfinite(values)]
                if values.size:
                    series.append((models.index(row.model), b, values))
    if not series:
        return False
    used = sorted({b for _, b, _ in series})
    width = 0.8 / len(used)
    colours = _colours(len(boards))
    fig = _figure(min(40.0, 2.5 + len(models) * (0.6 + 0.3 * len(used))), 4.2)
    ax = fig.add_subplot()
    for b in used:  # one call per benchmark: hundreds of boxes stay quick
        mine = [(x, values) for x, bb, values in series if bb == b]
        art = ax.boxplot(
            [values for _, values in mine],
            positions=[x - 0.4 + width * (used.index(b) + 0.5) for x, _ in mine],
            widths=width * 0.85,
            patch_artist=True,
            flierprops={"markersize": 2},
            medianprops={"color": "black"},
        )
        for patch in art["boxes"]:
            patch.set_facecolor(colours[b])
    ax.set_xticks(range(len(models)), [_tex_safe(m) for m in models], rotation=30, ha="right")
    ax.set_xlim(-0.6, len(models) - 0.4)
    ax.set_ylabel(_tex_safe(key))
    ax.set_title(_tex_safe(label), size=9)
    from matplotlib.patches import Patch

    handles = [Patch(color=colours[b], label=_tex_safe(boards[b].name)) for b in used]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, format="png", metadata={"Software": None})
    return True


def _colours(n: int) -> list[Any]:
    """The demo page's Tableau 10 for up to ten benchmarks, else matplotlib's tab20 (cycled
    past twenty)."""
    if n <= len(PALETTE):
        return list(PALETTE[:n])
    from matplotlib import colormaps

    tab20 = colormaps["tab20"]
    return [tab20(i % 20) for i in range(n)]


# --------------------------------------------------------------------------------------------
# Writers


def _num(x: float | None, digits: int = 4) -> str:
    return MISSING if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _p(p: float | None, resamples: int) -> str:
    if p is None or math.isnan(p):
        return MISSING
    return f"< {1 / resamples:.1g}" if p == 0 else f"{p:.4f}"


def _test_note(board: Board, test: str, correction: str, resamples: int) -> str:
    c = board.ranking
    extra = ""
    if c.on_means:
        extra += (
            f"; the aggregate of {c.key} is a corpus statistic, but the results keep only its "
            "per-sample values, so the test compares their means, not the statistic"
        )
    if c.inverse:
        extra += f"; raw {c.key}, lower is better, while the table shows 1/mean"
    if c.pooled:
        what = (
            f"{c.key} itself, the corpus statistic recomputed on every swapped or resampled "
            "set from the per-record counts the results store"
        )
    else:
        what = f"the per-sample scores of {c.key} (their means compared{extra})"
    return (
        f"Paired {test} test ({resamples} resamples) of each model against the leader on "
        f"{what}; p-values adjusted across the benchmark's {max(0, len(board.rows) - 1)} "
        f"comparisons ({correction}); differs: adjusted p < {ALPHA}."
    )


def test_statistic(column: Column) -> str:
    """What the paired test and the rank stability compare for a column's metric."""
    if column.pooled:
        return "corpus statistic, pooled from the per-record counts in the results"
    if column.corpus:
        return "mean of per-sample scores (a corpus statistic whose inputs are not stored)"
    return "mean of per-sample scores (the aggregate)"


@dataclass(frozen=True)
class _Cell:
    text: str
    cls: str
    best: bool = False
    ci: str = ""  # the interval, set under the value on the page


def _table(board: Board, opts: dict[str, Any]) -> tuple[list[str], list[list[_Cell]]]:
    """The board's header and cells, shared by the page and the Markdown: rank, model,
    P(rank 1), the ranking metric and its test against the leader, then the other metrics."""
    best, n = board.best, opts["resamples"]
    rank_col, others = board.columns[0], board.columns[1:]
    head = ["rank", "model", "P(rank 1)", _head(rank_col), "Δ vs leader", "p"]
    head += [f"adjusted p ({opts['correction']})", "differs from leader"]
    head += [_head(c) for c in others]
    rows = []
    for row in board.rows:

        def metric(c: Column, row: Row = row) -> _Cell:
            value, low, high = row.cells[c.key]
            ci = "" if math.isnan(low) or math.isnan(high) else f"[{_num(low)}, {_num(high)}]"
            return _Cell(_num(value), "metric", value == best.get(c.key), ci)

        if row.test is None:
            test = [_Cell("leader", "diff"), _Cell(MISSING, "p"), _Cell(MISSING, "padj")]
            test.append(_Cell("leader", "differs-cell"))
        else:
            test = [
                _Cell(_num(row.test["difference"]), "diff"),
                _Cell(_p(row.test["p_value"], n), "p"),
                _Cell(_p(row.p_adjusted, n), "padj"),
                _Cell("yes", "differs-cell differs")
                if row.differs
                else _Cell("no", "differs-cell"),
            ]
        rows.append(
            [
                _Cell(str(row.rank), "rank"),
                _Cell(row.model, "model"),
                _Cell(f"{row.rank_probs[0]:.2f}", "prank1"),
                metric(rank_col),
                *test,
                *(metric(c) for c in others),
            ]
        )
    return head, rows


MEANS_MARK = "†"


def _head(c: Column) -> str:
    """A column's header: its label, marked when its tests can only compare means."""
    return f"{c.label} {MEANS_MARK}" if c.on_means else c.label


def _notes(board: Board) -> str:
    """What the table leaves out: metrics not in every result, metrics skipped in the runs;
    and which columns are tested on per-sample means in place of their corpus statistic."""
    notes = []
    marked = [c.key for c in board.columns if c.on_means]
    if marked:
        notes.append(
            f"{MEANS_MARK} corpus statistic ({', '.join(marked)}): the result files keep only "
            "per-sample scores for it, so where it ranks, the paired test and the rank "
            "stability use the mean of the per-sample scores, not the statistic itself"
        )
    pooled_cols = [c.key for c in board.columns if c.pooled]
    if pooled_cols:
        notes.append(
            f"corpus statistics tested as themselves ({', '.join(pooled_cols)}): recomputed "
            "from the per-record counts the results store"
        )
    if board.partial_metrics:
        notes.append(
            "not in every result, so not in the table: " + ", ".join(board.partial_metrics)
        )
    by_models: dict[tuple[str, ...], list[str]] = {}
    for m, models in sorted(board.skipped.items()):
        by_models.setdefault(tuple(models), []).append(m)
    for models, metrics in by_models.items():
        who = "every model" if len(models) == len(board.rows) else ", ".join(models)
        notes.append(f"skipped in the runs of {who}: {', '.join(metrics)}")
    return "; ".join(notes) + " (the reasons are in settings.json)." if notes else ""


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
.scroll{overflow-x:auto;margin:.6em 0 1em}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;white-space:nowrap}
th{background:#f2f2f2}td.model,th.model{text-align:left}
td.best{background:#eef6ea}.ci{display:block;font-size:11px;color:#555}
.note{color:#555;font-size:13px;max-width:75em}
td.differs{color:#b2182b;font-weight:bold}img{max-width:100%;border:1px solid #eee}
code{font-size:12px}
"""


def _html(boards: Sequence[Board], plots: dict[str, Any], opts: dict[str, Any]) -> str:
    e = escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>radixpert leaderboard</title><style>{_CSS}</style></head><body>",
        "<h1>radixpert leaderboard</h1>",
        f'<p class="note">{len(boards)} benchmark(s). Every number is recomputed from the '
        "result files; the settings behind them are in "
        '<a href="settings.json">settings.json</a>, the tables in '
        '<a href="leaderboard.csv">leaderboard.csv</a> and '
        '<a href="leaderboard.md">leaderboard.md</a>. Values: the aggregate and under it its '
        "bootstrap 95% percentile interval [low, high]; the best in each column is in bold.</p>",
    ]
    for board in boards:
        rec = board.record
        ds = (rec.get("dataset") or {}).get("name", "?")
        out.append(f'<section class="board" id="{e(safe_name(board.name))}">')
        out.append(f"<h2>{e(board.name)}</h2>")
        out.append(
            f'<p class="note">version {e(str(rec["version"]))}, sha256 '
            f"<code>{e(str(rec['sha256'])[:16])}</code>, dataset {e(str(ds))}, track "
            f"{e(str(rec.get('track', '?')))}, {len(board.ids)} studies; {e(board.why)}.</p>"
        )
        head, rows = _table(board, opts)
        out.append('<div class="scroll"><table class="leaderboard"><thead><tr>')
        out.extend(f'<th class="{"model" if h == "model" else "num"}">{e(h)}</th>' for h in head)
        out.append("</tr></thead><tbody>")
        for cells in rows:
            tds = []
            for c in cells:
                body = e(c.text) + (f' <span class="ci">{e(c.ci)}</span>' if c.ci else "")
                body = f"<b>{body}</b>" if c.best else body
                tds.append(f'<td class="{c.cls}{" best" if c.best else ""}">{body}</td>')
            out.append("<tr>" + "".join(tds) + "</tr>")
        out.append("</tbody></table></div>")
        note = _test_note(board, opts["test"], opts["correction"], opts["resamples"])
        note += " Δ: the leader's mean per-sample score minus the model's."
        out.append(f'<p class="note">{e(note)}</p>')
        if _notes(board):
            out.append(f'<p class="note">{e(_notes(board))}</p>')
        out.append("<h3>Rank stability</h3>")
        out.append(
            f'<p class="note">{opts["rank_resamples"]} bootstrap resamples of the ids (seed '
            f"{opts['seed']}); on each, every model's mean per-sample {e(board.ranking.key)} "
            "ranks the models; the share of resamples at each rank.</p>"
        )
        img = plots["ranks"][board.name]
        out.append(f'<img class="plot" src="{e(img)}" alt="rank distribution, {e(board.name)}">')
        out.append("</section>")
    out.append("<h2>Per-sample scores</h2>")
    out.append(
        '<p class="note">One box per (model, benchmark) of the per-sample scores: the box spans '
        "the quartiles, the line is the median, points beyond 1.5 IQR are drawn singly.</p>"
    )
    for key, img in plots["boxes"].items():
        out.append(f'<h3>{e(key)}</h3><img class="plot" src="{e(img)}" alt="box plot {e(key)}">')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _md_escape(text: str) -> str:
    text = escape(text, quote=False)
    for ch in "\\`*_[]|":
        text = text.replace(ch, "\\" + ch)
    return text


def _markdown(boards: Sequence[Board], opts: dict[str, Any]) -> str:
    out = ["# radixpert leaderboard", ""]
    out.append(
        "Values: aggregate [bootstrap 95% percentile interval]; **bold**: the best in the "
        "column. Settings: settings.json."
    )
    for board in boards:
        out += ["", f"## {_md_escape(board.name)}", "", f"{_md_escape(board.why)}.", ""]
        head, rows = _table(board, opts)
        out.append("| " + " | ".join(map(_md_escape, head)) + " |")
        out.append("| " + " | ".join("---" if h == "model" else "---:" for h in head) + " |")
        for cells in rows:
            texts = [
                _md_escape(c.text) if c.cls == "model" else f"{c.text} {c.ci}".strip()
                for c in cells
            ]
            texts = [f"**{t}**" if c.best else t for t, c in zip(texts, cells)]
            out.append("| " + " | ".join(texts) + " |")
        note = _test_note(board, opts["test"], opts["correction"], opts["resamples"])
        out += ["", _md_escape(note)]
        if _notes(board):
            out += ["", _md_escape(_notes(board))]
    return "\n".join(out) + "\n"


def _csv(boards: Sequence[Board], opts: dict[str, Any]) -> str:
    labels: dict[str, str] = {}  # result key -> column label, over every result
    for board in boards:
        for row in board.rows:
            for k in row.result.doc["metrics"]:
                if k not in labels:
                    labels[k] = _column(k, [row.result]).label
    head = ["benchmark", "benchmark_version", "benchmark_sha256", "model", "rank", "p_rank1",
            "ranking_metric", "ranking_from", "ranking_value", "test", "difference", "p_value",
            "p_adjusted", "correction", "differs_from_leader"]  # fmt: skip
    for label in labels.values():
        head += [label, f"{label}_ci95_low", f"{label}_ci95_high"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(head)

    def v(x: float | None) -> str:
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else repr(float(x))

    for board in boards:
        for row in board.rows:
            t = row.test or {}
            line = [board.name, board.record["version"], board.record["sha256"], row.model,
                    row.rank, v(row.rank_probs[0]), board.ranking.label, board.ranking_from,
                    v(row.cells[board.ranking.key][0]), opts["test"], v(t.get("difference")),
                    v(t.get("p_value")), v(row.p_adjusted), opts["correction"],
                    "" if row.differs is None else str(row.differs).lower()]  # fmt: skip
            metrics = row.result.doc["metrics"]
            for k in labels:
                if k in metrics:
                    line += [v(x) for x in _cell(metrics[k], _column(k, [row.result]))]
                else:
                    line += ["", "", ""]
            w.writerow(line)
    return buf.getvalue()


def _settings(boards: Sequence[Board], opts: dict[str, Any]) -> dict[str, Any]:
    import radixpert

    benches = {}
    for board in boards:
        models = {}
        for row in board.rows:
            doc = row.result.doc
            models[row.model] = {
                "result_file": str(row.result.path),
                "predictions_sha256": (doc["model"].get("predictions") or {}).get("sha256"),
                "generation": doc["model"].get("generation"),
                "references_sha256": (doc.get("references") or {}).get("sha256"),
                "confidence": doc.get("confidence"),
                "metrics": {
                    k: {
                        "registry_name": m.get("registry_name"),
                        "settings": m.get("settings"),
                        "versions": m.get("versions"),
                        "display_transform": m.get("display_transform"),
                    }
                    for k, m in doc["metrics"].items()
                },
                "skipped_metrics": doc.get("skipped_metrics") or {},
                "versions": doc.get("versions"),
            }
        benches[board.name] = {
            "version": board.record["version"],
            "sha256": board.record["sha256"],
            "file": board.record.get("file"),
            "dataset": board.record.get("dataset"),
            "track": board.record.get("track"),
            "reference": board.record.get("reference"),
            "kind": board.record.get("kind", "report"),
            "tasks": board.record.get("tasks"),
            "studies_scored": len(board.ids),
            "ranking": {
                "metric": board.ranking.key,
                "shown_as": board.ranking.label,
                "from": board.ranking_from,
                "why": board.why,
                "test_statistic": test_statistic(board.ranking),
            },
            "test_statistic_per_metric": {c.key: test_statistic(c) for c in board.columns},
            "models": models,
        }
    return {
        "format": SITE_FORMAT,
        "format_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "radixpert": radixpert.__version__,
        "test": {
            "method": opts["test"],
            "resamples": opts["resamples"],
            "seed": opts["seed"],
            "against": "the leader, on the ranking metric: its corpus statistic where the "
            "results store its per-record counts, else the mean of its per-sample scores "
            "(benchmarks.<name>.ranking.test_statistic)",
            "alpha": ALPHA,
            "correction": opts["correction"],
            "corrected_over": "each benchmark's comparisons",
        },
        "rank_stability": {
            "resamples": opts["rank_resamples"],
            "seed": opts["seed"],
            "method": "stats.bootstrap_indices over ids; mean per-sample ranking score; "
            "competition ranks (ties share the better rank)",
        },
        "confidence_intervals": "bootstrap 95% percentile intervals from the result files",
        "benchmarks": benches,
    }


# --------------------------------------------------------------------------------------------
# The site


def build_site(
    results_dir: str | Path,
    out_dir: str | Path,
    *,
    metric: str | None = None,
    test: str = "approximate-randomization",
    correction: str = "holm",
    resamples: int = 10_000,
    rank_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Builds the leaderboard site of every result under ``results_dir`` into ``out_dir``.

    Args:
        results_dir: ``radixpert benchmark run``'s ``--out`` folder.
        out_dir: The site's folder; replaced as a whole (atomically). An existing folder that
            is not a leaderboard site is refused.
        metric: Rank every benchmark by this metric (a result key, or a registry name such as
            ``f1-chexpert``); None: each benchmark's ``rank_by``, else ``offline_rank_by``.
        test: ``approximate-randomization`` or ``paired-bootstrap`` (``evaluate.compare``).
        correction: ``holm``, ``bonferroni``, ``bh`` or ``none``, across each benchmark's
            comparisons with its leader.
        resamples: Trials (or bootstrap resamples) of each paired test.
        rank_resamples: Bootstrap resamples of the rank stability.
        seed: Seed of the tests and of the rank-stability resamples.

    Returns:
        ``{"out": path, "files": [...], "benchmarks": {name: {"ranking_metric", "ranking_from",
        "models": [{"model", "rank", "value", "p_rank1", "p_value", "p_adjusted",
        "differs"}, ...]}}}``, models in rank order.

    Raises:
        InputError: Unreadable or incomparable results (see ``read_results``), different ids
            within a benchmark, a ranking metric that is not in every result.
        UsageError: Unknown test or correction, resamples < 1, or an ``out_dir`` that would
            replace the results or a folder that is not a site.
    """
    from radixpert.io import atomic_dir

    _check_options(test, correction, resamples, rank_resamples)
    results_dir, out = Path(results_dir), Path(out_dir)
    _check_out(results_dir, out)
    results = read_results(results_dir, exclude=out)
    opts = {"test": test, "correction": correction, "resamples": resamples,
            "rank_resamples": rank_resamples, "seed": seed}  # fmt: skip
    by_bench: dict[str, list[Result]] = {}
    for r in results:
        by_bench.setdefault(r.bench, []).append(r)
    boards = [
        rank_board(name, by_bench[name], metric=metric, test=test, correction=correction,
                   resamples=resamples, rank_resamples=rank_resamples, seed=seed)
        for name in sorted(by_bench)
    ]  # fmt: skip
    models = _model_order(boards)
    with atomic_dir(out) as tmp:
        plots: dict[str, Any] = {"ranks": {}, "boxes": {}}
        for i, board in enumerate(boards, 1):
            name = f"rank-{i:02d}-{safe_name(board.name)[:80]}.png"
            _plot_ranks(board, tmp / name)
            plots["ranks"][board.name] = name
        for i, (key, label) in enumerate(_box_metrics(boards).items(), 1):
            name = f"box-{i:02d}-{safe_name(key)[:80]}.png"
            if _plot_boxes(key, boards, models, tmp / name, label):
                plots["boxes"][key] = name
        (tmp / "index.html").write_text(_html(boards, plots, opts), encoding="utf-8")
        (tmp / "leaderboard.md").write_text(_markdown(boards, opts), encoding="utf-8")
        (tmp / "leaderboard.csv").write_text(_csv(boards, opts), encoding="utf-8")
        settings = _settings(boards, opts)
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2) + "\n", "utf-8")
        files = sorted(p.name for p in tmp.iterdir())
    logger.info("leaderboard of %d benchmark(s) written to %s", len(boards), out)
    return {
        "out": str(out),
        "files": files,
        "benchmarks": {
            b.name: {
                "ranking_metric": b.ranking.key,
                "ranking_from": b.ranking_from,
                "models": [
                    {
                        "model": r.model,
                        "rank": r.rank,
                        "value": r.cells[b.ranking.key][0],
                        "p_rank1": r.rank_probs[0],
                        "p_value": None if r.test is None else r.test["p_value"],
                        "p_adjusted": r.p_adjusted,
                        "differs": r.differs,
                    }
                    for r in b.rows
                ],
            }
            for b in boards
        },
    }


def _check_out(results_dir: Path, out: Path) -> None:
    """Refuses an ``out`` that would replace the results, or a folder that is not a site."""
    res, target = results_dir.resolve(), out.resolve()
    if target == res or res.is_relative_to(target):
        raise UsageError(f"--out {out} would replace the results folder {results_dir}")
    if target.exists():
        marker = target / "settings.json"
        try:
            ours = json.loads(marker.read_text(encoding="utf-8")).get("format") == SITE_FORMAT
        except (OSError, ValueError, AttributeError):
            ours = False
        if not target.is_dir() or (any(target.iterdir()) and not ours):
            raise UsageError(
                f"--out {out} exists and is not a leaderboard site (no settings.json of "
                f"format {SITE_FORMAT!r}); the site replaces its folder, so give a new one"
            )


def _model_order(boards: Sequence[Board]) -> list[str]:
    """Models by mean rank over the benchmarks they are on, then by name."""
    ranks: dict[str, list[int]] = {}
    for board in boards:
        for row in board.rows:
            ranks.setdefault(row.model, []).append(row.rank)
    return sorted(ranks, key=lambda m: (sum(ranks[m]) / len(ranks[m]), m))


def _box_metrics(boards: Sequence[Board]) -> dict[str, str]:
    """Every metric of any result -> its plot title."""
    out: dict[str, str] = {}
    for board in boards:
        for row in board.rows:
            for k, m in row.result.doc["metrics"].items():
                if k in out:
                    continue
                if m.get("display_transform"):
                    out[k] = f"{k}, per sample (lower is better; the tables show 1/mean)"
                else:
                    better = "higher" if m.get("higher_is_better") else "lower"
                    out[k] = f"{k}, per sample ({better} is better)"
    return out


# --------------------------------------------------------------------------------------------
# Command line


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Registers ``radixpert leaderboard RESULTS_DIR --out SITE``."""
    from radixpert.evaluate.compare import CORRECTIONS

    p = sub.add_parser(
        "leaderboard",
        help="a static leaderboard site from benchmark results (ranking, tests, plots)",
        description=(
            "Reads the result files of `radixpert benchmark run` and writes a self-contained "
            "site: per benchmark the ranking with bootstrap intervals, the best in each "
            "column, paired tests against the leader (corrected), rank stability; box plots "
            "of the per-sample scores; CSV, Markdown and the settings behind every number."
        ),
    )
    p.add_argument("results", help="the results folder (<model>/<benchmark>.json)")
    p.add_argument("--out", "-o", required=True, help="the site's folder (replaced as a whole)")
    p.add_argument(
        "--metric",
        help="rank every benchmark by this metric (default: its rank_by, else "
        "offline_rank_by when rank_by is not in every result)",
    )
    p.add_argument(
        "--test",
        choices=TESTS,
        default="approximate-randomization",
        help="paired test against the leader (approximate-randomization)",
    )
    p.add_argument(
        "--correction",
        choices=CORRECTIONS,
        default="holm",
        help="p-value correction across a benchmark's comparisons (holm)",
    )
    p.add_argument(
        "--resamples", type=int, default=10_000, help="trials or resamples of each paired test"
    )
    p.add_argument(
        "--rank-resamples", type=int, default=1000, help="bootstrap resamples of rank stability"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of tests and resamples (0)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    summary = build_site(
        args.results,
        args.out,
        metric=args.metric,
        test=args.test,
        correction=args.correction,
        resamples=args.resamples,
        rank_resamples=args.rank_resamples,
        seed=args.seed,
    )
    for name, b in summary["benchmarks"].items():
        leader = b["models"][0]
        print(
            f"{name}: {len(b['models'])} models by {b['ranking_metric']}; "
            f"leader {leader['model']} ({leader['value']:.4f})"
        )
    print(f"site: {Path(summary['out']) / 'index.html'}")
    return 0
