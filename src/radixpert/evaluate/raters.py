"""Metric validation against radiologists: Kendall's tau-b with ReXVal's error counts.

`radixpert evaluate --against-raters DIR -m bleu-2-radcliq rouge-l` scores ReXVal's report
pairs with each metric and correlates the scores with six radiologists' error counts, the
analysis behind RadCliQ (Yu et al. 2023, Patterns) and CheXprompt.

The layout is ReXVal 1.0.0 (PhysioNet "rexval-dataset"), two CSV files:

* ``50_samples_gt_and_candidates.csv``: ``study_id, gt_report, radgraph, bertscore, s_emb,
  bleu`` -- one row per study, the reference and four candidate reports (named after the
  metric that retrieved them). Any further columns are read as candidates too.
* ``6_valid_raters_per_rater_error_categories.csv``: ``study_number, candidate_type,
  error_category, rater_index, clinically_significant, num_errors`` -- one row per pair x
  error category (1-6) x rater x significance. ``study_number`` is the 0-based row of the
  study in the first file (not its ``study_id``); ``candidate_type`` names a column there.

Looked up in corentin-ryr/MultiMedEval@d3dddf5f (tests/, both files) and
Stanford-AIMI/GREEN@205092aa (inference/run_compare_to_rexval.py maps ``study_id`` to its
row number); see tests/evaluate/data/rexval/README.md.

Radiologist score of a pair: the mean over raters of the rater's error count summed over the
six categories -- all errors by default (``variant="total"``, as MultiMedEval's ReXVal test
computes it: the sum of ``num_errors`` over a pair's rows divided by 6), or only the clinically
significant (``"significant"``) or insignificant (``"insignificant"``) ones.

Sign: ``tau`` is oriented so that a metric that agrees with the radiologists is positive --
the metric turned into an error (negated when higher is better) against the error count, as
MultiMedEval's test does (``1 - BLEU-2`` vs errors, RadCliQ raw; it asserts positive tau).
``raw_tau`` is the metric as it is against the error count (negative for a good metric that
is higher-better). The 95% interval is the bootstrap percentile interval over report pairs
(default; as the published analyses) or over studies (``resample="studies"``: the four
candidates of a study share its reference, so pairs are not independent and this interval
respects that; with few studies it is itself unreliable).
"""

from __future__ import annotations

import csv
import logging
import math
import platform
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

import radixpert
from radixpert.errors import MissingDependency, ReaderError, UsageError
from radixpert.evaluate import registry
from radixpert.evaluate.base import MetricResult
from radixpert.evaluate.cache import file_sha256
from radixpert.evaluate.stats import iter_bootstrap_indices, percentile_interval

log = logging.getLogger(__name__)

REPORTS_FILE = "50_samples_gt_and_candidates.csv"
RATINGS_FILE = "6_valid_raters_per_rater_error_categories.csv"
REPORT_COLUMNS = ("study_id", "gt_report")  # every other column holds candidate reports
RATING_COLUMNS = (
    "study_number",
    "candidate_type",
    "error_category",
    "rater_index",
    "clinically_significant",
    "num_errors",
)
# variant -> which rows count: significance True, False, or both (None).
VARIANTS: dict[str, bool | None] = {"total": None, "significant": True, "insignificant": False}
RESAMPLE = ("pairs", "studies")
MAX_BOOTSTRAP = 1_000_000
_BOOL = {"true": True, "1": True, "false": False, "0": False}


@dataclass
class RaterData:
    """ReXVal read into pairs: one reference, one candidate and the error counts per pair.

    ``counts[i, r, 0]`` is rater ``raters[r]``'s number of clinically significant errors in
    pair ``i`` (all categories), ``counts[i, r, 1]`` the insignificant ones.
    """

    reports_path: Path
    ratings_path: Path
    ids: list[str]  # "<study_number>_<candidate_type>", as MultiMedEval keys them
    study_numbers: list[int]
    study_ids: list[str]
    candidate_types: list[str]
    references: list[str]
    candidates: list[str]
    raters: list[str]
    categories: list[str]
    counts: np.ndarray  # (pairs, raters, 2)
    unrated: list[str]  # candidate cells of the reports file that no rater scored

    def radiologist_errors(self, variant: str = "total") -> np.ndarray:
        """Per pair, the mean over raters of the errors that `variant` counts."""
        which = _variant(variant)
        sel = self.counts.sum(axis=2) if which is None else self.counts[:, :, 0 if which else 1]
        return sel.mean(axis=1)


def _variant(variant: str) -> bool | None:
    if variant not in VARIANTS:
        raise UsageError(f"variant {variant!r}: one of {', '.join(VARIANTS)}")
    return VARIANTS[variant]


def _locate(path: str | Path) -> tuple[Path, Path]:
    """(reports file, ratings file) from a folder holding both, or either file."""
    p = Path(path)
    if p.is_dir():
        folder = p
    elif p.name in (REPORTS_FILE, RATINGS_FILE):
        folder = p.parent
    elif p.exists():
        raise ReaderError(
            f"{p}: not a ReXVal file; give the folder holding {REPORTS_FILE} and "
            f"{RATINGS_FILE}, or one of them"
        )
    else:
        raise ReaderError(f"{p}: no such file or folder")
    files = folder / REPORTS_FILE, folder / RATINGS_FILE
    for f in files:
        if not f.is_file():
            raise ReaderError(f"{f}: no such file (ReXVal needs {REPORTS_FILE} and {RATINGS_FILE})")
    return files


def _rows(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row) of a CSV file, after checking its header has `required`."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        for col in required:
            if col not in header:
                raise ReaderError(
                    f"{path}: missing column {col!r} (found: {', '.join(header) or 'none'}; "
                    f"the ReXVal layout needs {', '.join(required)})"
                )
        for row in reader:
            yield reader.line_num, row


def read_rexval(path: str | Path) -> RaterData:
    """Read ReXVal from a folder holding its two CSV files, or from either file.

    Every rating row must name a study row and a candidate column of the reports file; every
    rated pair must have one row per rater x category x significance (the raters and
    categories seen anywhere in the file). Anything else is a ReaderError naming the file,
    line and column: a missing count is not read as zero.
    """
    reports_path, ratings_path = _locate(path)
    studies = [row for _, row in _rows(reports_path, REPORT_COLUMNS)]
    with reports_path.open(encoding="utf-8-sig", newline="") as f:
        columns = next(csv.reader(f))
    cand_cols = [c for c in columns if c not in REPORT_COLUMNS]
    if not cand_cols:
        raise ReaderError(f"{reports_path}: no candidate report columns beside study_id, gt_report")
    cells: dict[tuple[int, str, str, str, bool], float] = {}
    for line, row in _rows(ratings_path, RATING_COLUMNS):
        where = f"{ratings_path}: line {line}"
        try:
            study = int(row["study_number"])
        except ValueError:
            raise ReaderError(
                f"{where}: study_number {row['study_number']!r} is not an integer"
            ) from None
        if not 0 <= study < len(studies):
            raise ReaderError(
                f"{where}: study_number {study} is not a row of {reports_path} "
                f"(0-based, {len(studies)} studies)"
            )
        cand = row["candidate_type"]
        if cand not in cand_cols:
            raise ReaderError(
                f"{where}: candidate_type {cand!r} is not a candidate column of "
                f"{reports_path} ({', '.join(cand_cols)})"
            )
        sig = _BOOL.get(row["clinically_significant"].strip().lower())
        if sig is None:
            raise ReaderError(
                f"{where}: clinically_significant {row['clinically_significant']!r} "
                "is not True/False"
            )
        try:
            n = float(row["num_errors"])
        except ValueError:
            n = math.nan
        if not (math.isfinite(n) and n >= 0):
            raise ReaderError(f"{where}: num_errors {row['num_errors']!r} is not a count")
        key = (study, cand, row["error_category"].strip(), row["rater_index"].strip(), sig)
        if key in cells:
            raise ReaderError(f"{where}: a second row for {_describe(key)}")
        cells[key] = n
    if not cells:
        raise ReaderError(f"{ratings_path}: no ratings")
    pairs = sorted({(k[0], k[1]) for k in cells}, key=lambda p: (p[0], cand_cols.index(p[1])))
    raters = sorted({k[3] for k in cells}, key=_natural)
    categories = sorted({k[2] for k in cells}, key=_natural)
    counts = np.zeros((len(pairs), len(raters), 2))
    for i, (study, cand) in enumerate(pairs):
        for r, rater in enumerate(raters):
            for c in categories:
                for s, sig in enumerate((True, False)):
                    key = (study, cand, c, rater, sig)
                    if key not in cells:
                        raise ReaderError(
                            f"{ratings_path}: no row for {_describe(key)} (every rated pair "
                            f"needs raters {', '.join(raters)} x categories "
                            f"{', '.join(categories)} x significance True/False)"
                        )
                    counts[i, r, s] += cells[key]
    rated = set(pairs)
    unrated = [
        f"{i}_{c}"
        for i, row in enumerate(studies)
        for c in cand_cols
        if (i, c) not in rated and (row.get(c) or "").strip()
    ]
    return RaterData(
        reports_path=reports_path,
        ratings_path=ratings_path,
        ids=[f"{s}_{c}" for s, c in pairs],
        study_numbers=[s for s, _ in pairs],
        study_ids=[studies[s]["study_id"] for s, _ in pairs],
        candidate_types=[c for _, c in pairs],
        references=[studies[s]["gt_report"] or "" for s, _ in pairs],
        candidates=[studies[s][c] or "" for s, c in pairs],
        raters=raters,
        categories=categories,
        counts=counts,
        unrated=unrated,
    )


def _describe(key: tuple[int, str, str, str, bool]) -> str:
    study, cand, cat, rater, sig = key
    return (
        f"study_number {study}, candidate_type {cand}, error_category {cat}, "
        f"rater_index {rater}, clinically_significant {sig}"
    )


def _natural(s: str) -> tuple[int, float, str]:
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(tau-b, two-sided p-value) from scipy.stats.kendalltau; nan when x or y is constant."""
    try:
        from scipy.stats import kendalltau
    except ImportError:
        raise MissingDependency(
            "Kendall's tau needs scipy: pip install scipy (the metrics extra brings it)"
        ) from None
    res = kendalltau(np.asarray(x, float), np.asarray(y, float), variant="b")
    return float(res.statistic), float(res.pvalue)


def _resample_rows(groups: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Index arrays of bootstrap resamples: of pairs when every pair is its own group, else
    of whole groups (studies), each drawn group contributing all its pairs."""
    labels, inverse = np.unique(groups, return_inverse=True)
    if labels.size == groups.size:
        for block in iter_bootstrap_indices(groups.size, resamples, seed):
            yield from block
        return
    members = [np.flatnonzero(inverse == g) for g in range(labels.size)]
    for block in iter_bootstrap_indices(labels.size, resamples, seed):
        for row in block:
            yield np.concatenate([members[g] for g in row])


@dataclass
class Correlation:
    """One metric against the radiologists (see the module docstring for the sign)."""

    metric: str
    registry_name: str
    higher_is_better: bool
    tau: float  # positive: agrees with the radiologists
    p_value: float
    raw_tau: float  # the metric as it is vs the error count
    ci_low: float
    ci_high: float
    n: int
    studies: int
    excluded: list[str]  # ids whose score is not a finite number
    degenerate_resamples: int  # resamples with a constant side: no tau, left out of the CI
    settings: dict[str, Any]
    per_sample: list[float]


def correlate(
    result: MetricResult,
    errors: np.ndarray,
    ids: Sequence[str],
    studies: Sequence[int],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    resample: str = "pairs",
    registry_name: str = "",
) -> Correlation:
    """Kendall's tau-b of one metric's per-pair scores with the radiologists' errors."""
    if resample not in RESAMPLE:
        raise UsageError(f"resample {resample!r}: one of {', '.join(RESAMPLE)}")
    scores = np.asarray(result.per_sample, float)
    if scores.size != len(ids):
        raise RuntimeError(f"{result.name}: {scores.size} per-sample scores for {len(ids)} pairs")
    keep = np.isfinite(scores)
    excluded = [i for i, k in zip(ids, keep) if not k]
    if excluded:
        log.warning("%s: %d pair(s) without a finite score left out", result.name, len(excluded))
    x, y = scores[keep], np.asarray(errors, float)[keep]
    groups = np.arange(x.size) if resample == "pairs" else np.asarray(studies)[keep]
    raw, p = kendall_tau_b(x, y) if x.size >= 2 else (math.nan, math.nan)
    flip = -1.0 if result.higher_is_better else 1.0  # a good higher-better metric: raw < 0
    reps = []
    if x.size >= 2 and bootstrap > 0:
        reps = [
            flip * kendall_tau_b(x[i], y[i])[0] for i in _resample_rows(groups, bootstrap, seed)
        ]
    reps_arr = np.asarray(reps, float)
    finite = reps_arr[np.isfinite(reps_arr)]
    ci = percentile_interval(finite)
    return Correlation(
        metric=result.name,
        registry_name=registry_name or result.name,
        higher_is_better=result.higher_is_better,
        tau=flip * raw,
        p_value=p,
        raw_tau=raw,
        ci_low=ci.low,
        ci_high=ci.high,
        n=int(x.size),
        studies=int(np.unique(np.asarray(studies)[keep]).size),
        excluded=excluded,
        degenerate_resamples=int(reps_arr.size - finite.size),
        settings=result.settings,
        per_sample=result.per_sample,
    )


def against_raters(
    path: str | Path,
    metrics: list[str],
    *,
    bootstrap: int = 1000,
    seed: int = 0,
    variant: str = "total",
    resample: str = "pairs",
    metric_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Correlate each metric (and its companions) with ReXVal's radiologists.

    Args:
        path: a folder holding ReXVal's two CSV files, or either file.
        metrics: registry names or groups; an unavailable metric is an error.
        bootstrap: resamples for the 95% percentile interval (0: none).
        seed: of the resamples; every metric sees the same ones.
        variant: the errors counted, "total" (default), "significant" or "insignificant".
        resample: "pairs" (default, as the published analyses) or "studies".
        metric_options: passed to `registry.create` (device, batch size, ...).

    Returns:
        The results document: inputs, settings, per metric its tau, p-value, CI, n and the
        metric's settings, the ids and the radiologist score per pair.
    """
    if not 0 <= bootstrap <= MAX_BOOTSTRAP:
        raise UsageError(f"--bootstrap {bootstrap}: 0 (none) to {MAX_BOOTSTRAP:,} resamples")
    if seed < 0:
        raise UsageError(f"--seed {seed}: a seed is 0 or more")
    if resample not in RESAMPLE:
        raise UsageError(f"resample {resample!r}: one of {', '.join(RESAMPLE)}")
    names = registry.expand(metrics)
    data = read_rexval(path)
    errors = data.radiologist_errors(variant)
    if data.unrated:
        log.warning("%d candidate report(s) without ratings left out", len(data.unrated))
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        metric = registry.create(name, **(metric_options or {}))
        metric.ensure_available()
        log.info("%s on %d pairs ...", name, len(data.ids))
        result = metric.compute(data.references, data.candidates)
        for r in result.flatten():
            c = correlate(
                r,
                errors,
                data.ids,
                data.study_numbers,
                bootstrap=bootstrap,
                seed=seed,
                resample=resample,
                registry_name=name,
            )
            out[r.name] = {k: v for k, v in asdict(c).items() if k != "metric"}
    return {
        "radixpert_version": radixpert.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": {
            role: {"path": str(p), "sha256": file_sha256(p)}
            for role, p in (("reports", data.reports_path), ("ratings", data.ratings_path))
        },
        "layout": "ReXVal 1.0.0 (PhysioNet rexval-dataset)",
        "radiologist_score": {
            "variant": variant,
            "definition": "mean over raters of the rater's error count, summed over the "
            f"error categories; counted: {_COUNTED[variant]}",
            "raters": data.raters,
            "error_categories": data.categories,
        },
        "correlation": {
            "statistic": "Kendall's tau-b (scipy.stats.kendalltau, variant='b')",
            "sign": "tau > 0: the metric agrees with the radiologists (the metric as an error "
            "- negated when higher is better - vs the error count); raw_tau: the metric as "
            "it is vs the error count",
            "p_value": "two-sided, scipy's default method",
        },
        "confidence": {
            "level": 0.95,
            "method": "bootstrap-percentile",
            "resample": resample,
            "resamples": bootstrap,
            "seed": seed,
        },
        "pairs": len(data.ids),
        "studies": len(set(data.study_numbers)),
        "unrated": {"count": len(data.unrated), "ids": data.unrated},
        "metrics": out,
        "ids": data.ids,
        "radiologist_errors": errors.tolist(),
        "environment": {"python": platform.python_version(), "numpy": np.__version__},
    }


_COUNTED = {
    "total": "all errors (clinically significant and insignificant)",
    "significant": "clinically significant errors only",
    "insignificant": "clinically insignificant errors only",
}


def format_table(results: dict[str, Any]) -> str:
    """A plain-text table: metric, tau-b, 95% CI, p-value, n."""

    def f(x: float | None, spec: str = ".3f") -> str:
        return "n/a" if x is None or not math.isfinite(x) else format(x, spec)

    rows = [("metric", "tau-b", "95% CI", "p", "raw tau", "n")]
    for name, m in results["metrics"].items():
        rows.append(
            (
                name,
                f(m["tau"]),
                f"[{f(m['ci_low'])}, {f(m['ci_high'])}]",
                f(m["p_value"], ".2g"),
                f(m["raw_tau"]),
                str(m["n"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    conf, score = results["confidence"], results["radiologist_score"]
    foot = [
        f"{results['pairs']} pairs of {results['studies']} studies vs the mean over "
        f"{len(score['raters'])} raters of {_COUNTED[score['variant']]}",
        "tau > 0: the metric agrees with the radiologists; raw tau: the metric as it is",
        f"95% CI: bootstrap percentile over {conf['resample']}, {conf['resamples']} "
        f"resamples, seed {conf['seed']}",
    ]
    for name, m in results["metrics"].items():
        if m["excluded"]:
            foot.append(f"{name}: {len(m['excluded'])} pair(s) without a score left out")
        if m["degenerate_resamples"]:
            foot.append(f"{name}: {m['degenerate_resamples']} resample(s) with no tau left out")
    if results["unrated"]["count"]:
        foot.append(f"{results['unrated']['count']} candidate report(s) without ratings")
    return "\n".join([*lines, "", *foot])


def main(
    path: str | Path,
    metrics: list[str],
    out: str | Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    quiet: bool = False,
    *,
    variant: str = "total",
    resample: str = "pairs",
    metric_options: dict[str, Any] | None = None,
) -> int:
    """``radixpert evaluate --against-raters``: correlate, print the table, write ``out``.

    ``out`` is written atomically as strict JSON (non-finite numbers are null); ``quiet``
    turns the progress bars off. Returns 0.
    """
    from radixpert.evaluate.base import show_progress
    from radixpert.evaluate.runner import write_results

    show_progress(not quiet)
    try:
        results = against_raters(
            path,
            metrics,
            bootstrap=bootstrap,
            seed=seed,
            variant=variant,
            resample=resample,
            metric_options=metric_options,
        )
    finally:
        show_progress(False)
    if out:
        write_results(results, out)
    sys.stdout.write(format_table(results) + "\n")
    if out:
        sys.stdout.write(f"\nresults: {out}\n")
    return 0


__all__ = [
    "RATINGS_FILE",
    "REPORTS_FILE",
    "VARIANTS",
    "Correlation",
    "RaterData",
    "against_raters",
    "correlate",
    "format_table",
    "kendall_tau_b",
    "main",
    "read_rexval",
]
