"""`radixpert evaluate`: pair reports by id, run the metrics, add intervals, write results.

The results file is one JSON object: `{"metrics": {name: {...}}, "ids": [...], ...}` with,
per metric, the aggregate, mean ± 95% CI (normal approximation, clipped to the metric's
`bounds` when it has them), a bootstrap CI, per-sample scores in the order of `ids`, the exact
settings and the package versions; beside them the command line (`command`), the inputs'
digests, and every pair left out or flagged (`unmatched`, `skipped_empty_references`,
`empty_candidates`, `long_reports`). It is strict JSON: a number that is not finite (the SE
of one pair, a score undefined for a pair) is written `null`, never `NaN` or `Infinity`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import radixpert
from radixpert.errors import MetricUnavailable, UsageError
from radixpert.evaluate import registry
from radixpert.evaluate.base import MetricResult, show_progress
from radixpert.evaluate.io import Pairs, pair_reports, read_reports
from radixpert.evaluate.stats import (
    Interval,
    bootstrap_replicates,
    clip,
    normal_ci,
    percentile_interval,
)
from radixpert.io import atomic_write

log = logging.getLogger(__name__)

LONG_REPORT_WORDS = 512  # beyond this, model-based metrics see a truncated report
# Resamples are drawn in bounded chunks (stats.CHUNK_ELEMENTS), so memory does not limit
# them; time does: beyond this the percentiles are no better and a run takes hours.
MAX_BOOTSTRAP = 1_000_000
IDS_SHOWN = 100  # ids listed in the results file per skipped / flagged group


@dataclass
class EvaluationOptions:
    metrics: list[str] = field(default_factory=lambda: list(registry.DEFAULT))
    section: str = "auto"
    split: str | None = None  # only the references of this split (a Study file's field)
    allow_missing: bool = False
    bootstrap: int = 500
    seed: int = 0
    metric_options: dict[str, Any] = field(default_factory=dict)
    explicit: bool = False  # metrics named by the user: unavailable ones are errors
    skip_empty_references: bool = False  # leave out (and count) pairs with a blank reference
    id_column: str | None = None  # the id's field / column in both files, by name
    text_column: str | None = None  # the report's field / column in both files, by name
    command: list[str] | None = None  # the command line, recorded in the results

    def __post_init__(self) -> None:
        if self.bootstrap < 0 or self.bootstrap > MAX_BOOTSTRAP:
            raise UsageError(
                f"--bootstrap {self.bootstrap}: the number of resamples must be 0 (none) to "
                f"{MAX_BOOTSTRAP:,} (they are drawn in chunks, so memory is not the limit, "
                "but time is; 10,000 is plenty for a 95% interval)"
            )
        if self.seed < 0:
            raise UsageError(f"--seed {self.seed}: a seed is 0 or more")


def _progress(stream: TextIO | None, msg: str) -> None:
    if stream is not None:
        print(msg, file=stream, flush=True)


def _summarise(result: MetricResult, n: int, bootstrap: int, seed: int) -> dict[str, Any]:
    mean, se, normal = normal_ci(result.per_sample)
    normal = clip(normal, result.bounds)
    reps = bootstrap_replicates(result.per_sample, bootstrap, seed, result.corpus_fn)
    boot = percentile_interval(reps)
    entry: dict[str, Any] = {
        "aggregate": result.aggregate,
        "higher_is_better": result.higher_is_better,
        "n": n,
        "mean": mean,
    }
    if result.corpus_fn is None:
        entry["ci95_normal"] = {**normal.as_dict(), "se": se}
    else:
        # A corpus statistic is not the mean of per-sample scores: its normal interval is
        # aggregate ± 1.96 SE with SE from the bootstrap replicates.
        bse = float(reps.std(ddof=1)) if reps.size > 1 else math.nan
        wide = Interval(
            result.aggregate - 1.959963984540054 * bse,
            result.aggregate + 1.959963984540054 * bse,
            "normal (bootstrap SE, corpus statistic)",
        )
        entry["ci95_normal"] = {**clip(wide, result.bounds).as_dict(), "se": bse}
    entry["bounds"] = list(result.bounds) if result.bounds is not None else None
    entry["ci95_bootstrap"] = {**boot.as_dict(), "resamples": int(reps.size), "seed": seed}
    if result.display_transform == "inverse":
        entry["display"] = result.display
        entry["display_transform"] = "inverse (1/mean), higher is better"
        lo, hi = entry["ci95_bootstrap"]["low"], entry["ci95_bootstrap"]["high"]
        entry["display_ci95_bootstrap"] = (
            {"low": 1 / hi, "high": 1 / lo} if lo > 0 and hi > 0 else None
        )
    entry["settings"] = result.settings
    entry["versions"] = {
        "radixpert": radixpert.__version__,
        "numpy": np.__version__,
        **result.versions,
    }
    entry["detailed"] = result.detailed
    entry["per_sample"] = result.per_sample
    if result.per_sample_detailed:
        entry["per_sample_detailed"] = result.per_sample_detailed
    return entry


def run_metrics(
    pairs: Pairs, opts: EvaluationOptions, progress: TextIO | None = None
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Run each metric on the pairs; returns (metrics entries, skipped name -> reason)."""
    names = registry.expand(opts.metrics)
    show_progress(progress is not None)
    out: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for k, name in enumerate(names, 1):
        metric = registry.create(name, **opts.metric_options)
        reason = metric.check()
        if reason:
            if opts.explicit:
                raise MetricUnavailable(f"{name}: {reason}")
            skipped[name] = reason
            _progress(progress, f"[{k}/{len(names)}] {name}: skipped ({reason})")
            continue
        _progress(progress, f"[{k}/{len(names)}] {name} on {len(pairs.ids)} pairs ...")
        t0 = time.perf_counter()
        result = metric.compute(pairs.references, pairs.candidates)
        took = time.perf_counter() - t0
        for r in result.flatten():
            if len(r.per_sample) != len(pairs.ids):
                raise RuntimeError(
                    f"{r.name}: {len(r.per_sample)} per-sample scores for {len(pairs.ids)} pairs"
                )
            out[r.name] = _summarise(r, len(pairs.ids), opts.bootstrap, opts.seed)
            out[r.name]["seconds"] = round(took, 4)
            out[r.name]["registry_name"] = name
        _progress(progress, f"[{k}/{len(names)}] {name} done in {took:.2f} s")
    return out, skipped


def evaluate(
    references: str | Path,
    candidates: str | Path,
    opts: EvaluationOptions,
    progress: TextIO | None = None,
) -> dict[str, Any]:
    """Read, pair and score; returns the results document (see the module docstring)."""
    columns = {"id_column": opts.id_column, "text_column": opts.text_column}
    refs = read_reports(references, opts.section, role="references", split=opts.split, **columns)
    cands = read_reports(candidates, opts.section, role="candidates", **columns)
    for side, r in (("references", refs), ("candidates", cands)):
        for note in r.notes:
            _progress(progress, f"note: {side} {r.path}: {note}")
    pairs = pair_reports(refs, cands, opts.allow_missing, opts.skip_empty_references)
    if pairs.skipped_empty_references:
        skipped = pairs.skipped_empty_references
        _progress(
            progress,
            f"note: skipped {len(skipped)} pair(s) with an empty reference "
            f"(--skip-empty-references; e.g. {', '.join(skipped[:3])})",
        )
    if pairs.only_references or pairs.only_candidates:
        _progress(
            progress,
            f"note: scoring the {len(pairs.ids)} common ids; "
            f"{len(pairs.only_references)} only in references, "
            f"{len(pairs.only_candidates)} only in candidates",
        )
    if pairs.empty_candidates:
        _progress(
            progress,
            f"note: {len(pairs.empty_candidates)} empty candidate report(s), "
            f"scored as given (e.g. {', '.join(pairs.empty_candidates[:3])})",
        )
    long_ids = [
        i
        for i, r, c in zip(pairs.ids, pairs.references, pairs.candidates)
        if max(len(r.split()), len(c.split())) > LONG_REPORT_WORDS
    ]
    if long_ids:
        _progress(
            progress,
            f"note: {len(long_ids)} pair(s) with a report over {LONG_REPORT_WORDS} words "
            f"(e.g. {', '.join(long_ids[:3])}); lexical metrics score them whole, "
            "model-based metrics see their first 512 tokens",
        )
    metrics, skipped = run_metrics(pairs, opts, progress)
    return {
        "radixpert_version": radixpert.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": opts.command,
        "inputs": {
            side: {
                "path": str(r.path),
                "sha256": r.sha256,
                "format": r.fmt,
                "records": len(r.texts),
                "notes": r.notes,
            }
            for side, r in (("references", refs), ("candidates", cands))
        },
        "columns": {"id": opts.id_column, "text": opts.text_column},
        "section": opts.section,
        "split": opts.split,
        "pairs": len(pairs.ids),
        "unmatched": {
            "only_references": {"count": len(pairs.only_references), "ids": pairs.only_references},
            "only_candidates": {"count": len(pairs.only_candidates), "ids": pairs.only_candidates},
        },
        "skipped_empty_references": {
            "count": len(pairs.skipped_empty_references),
            "ids": pairs.skipped_empty_references[:IDS_SHOWN],
        },
        "empty_candidates": {"count": len(pairs.empty_candidates), "ids": pairs.empty_candidates},
        "long_reports": {
            "count": len(long_ids),
            "words_over": LONG_REPORT_WORDS,
            "ids": long_ids[:IDS_SHOWN],
        },
        "confidence": {
            "level": 0.95,
            "bootstrap_resamples": opts.bootstrap,
            "bootstrap_seed": opts.seed,
        },
        "metrics": metrics,
        "skipped_metrics": skipped,
        "ids": pairs.ids,
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
    }


def strict_json(value: Any) -> Any:
    """`value` with every float that is not finite (nan, ±inf) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_results(results: dict[str, Any], path: str | Path) -> None:
    """Write the results document atomically, as strict JSON (non-finite numbers are null)."""
    with atomic_write(path) as f:
        json.dump(strict_json(results), f, indent=1, allow_nan=False)
        f.write("\n")


def write_per_sample(results: dict[str, Any], path: str | Path) -> None:
    """One row per id, one column per metric (CSV, or JSONL when the name ends in .jsonl).

    A score that is not a number is an empty CSV cell, a JSONL null.
    """
    names = list(results["metrics"])
    cols = {n: results["metrics"][n]["per_sample"] for n in names}
    path = Path(path)
    with atomic_write(path, newline="") as f:
        if path.suffix.lower() == ".jsonl":
            for i, rid in enumerate(results["ids"]):
                row = strict_json({"id": rid, **{n: cols[n][i] for n in names}})
                f.write(json.dumps(row, allow_nan=False) + "\n")
        else:
            w = csv.writer(f)
            w.writerow(["id", *names])
            for i, rid in enumerate(results["ids"]):
                w.writerow([rid, *(_cell(cols[n][i]) for n in names)])


def _cell(x: float | None) -> str:
    return "" if x is None or not math.isfinite(x) else f"{x:.6g}"


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table: metric, score, 95% CIs, direction."""
    rows = [("metric", "score", "95% CI (normal)", "95% CI (bootstrap)", "better")]

    def f(x: float) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

    for name, m in results["metrics"].items():
        nci, bci = m["ci95_normal"], m["ci95_bootstrap"]
        score, better = m["aggregate"], "higher" if m["higher_is_better"] else "lower"
        if m.get("display_transform"):
            d = m.get("display")
            dci = m.get("display_ci95_bootstrap")
            rows.append(
                (
                    f"1/{name}",
                    f(d) if d is not None else "undefined (mean <= 0)",
                    "",
                    f"[{f(dci['low'])}, {f(dci['high'])}]" if dci else "",
                    "higher",
                )
            )
            name = f"{name} (raw mean)"
        rows.append(
            (
                name,
                f(score),
                f"[{f(nci['low'])}, {f(nci['high'])}]",
                f"[{f(bci['low'])}, {f(bci['high'])}]",
                better,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    foot = [
        f"{results['pairs']} pairs; bootstrap {results['confidence']['bootstrap_resamples']}"
        f" resamples, seed {results['confidence']['bootstrap_seed']}"
    ]
    skipped_refs = results.get("skipped_empty_references", {}).get("count", 0)
    if skipped_refs:
        foot.append(f"{skipped_refs} pairs with an empty reference skipped")
    if results["empty_candidates"]["count"]:
        foot.append(f"{results['empty_candidates']['count']} empty candidates scored as given")
    for name, why in results["skipped_metrics"].items():
        foot.append(f"skipped {name}: {why}")
    return "\n".join([*lines, "", *foot])
