"""Task benchmarks: instruction-task answers scored as ``radixpert evaluate --tasks`` scores
them (``evaluate.tasks.task_scores``), with one score per record for intervals and tests.

    metrics, skipped = score_tasks(bench, ids, records, bootstrap=500, seed=0)

``records`` are ``{id: {"task", "model_prediction", "report" (the true answer)}}``, what
``radixpert generate`` writes for conversations. Each metric's ``aggregate`` is
``task_scores``' value (checked against the statistic rebuilt from the per-record series;
a mismatch is a bug and raises). Per record:

- ``token_f1`` / ``token_precision`` / ``token_recall``: the record's own (the aggregate is
  their mean);
- ``micro_f1`` / ``macro_f1`` (classification): the record's label-set F1, 2 tp / (2 tp + fp +
  fn), 1 when neither the truth nor the answer names a label; ``per_sample_detailed`` holds
  tp / fp / fn, the true and the answer's labels as bit masks over ``vocab.OBSERVATIONS``, and
  ``exact`` (the two label sets equal);
- ``mean_iou`` (grounding): the record's mean best IoU per true box; the aggregate weighs
  records by their true boxes (``iou_sum`` / ``true_boxes``);
- ``map50``: the record's share of true boxes matched at IoU >= 0.5; ``detailed["boxes"]``
  holds each answer box's hit, so AP can be recomputed on any set of records;
- ``parsed``: 1 if the answer named a label (or the labeler read it) / gave a box.

A record without true boxes scores 1 on ``mean_iou`` and ``map50`` when the answer gives no box
either, else 0, and adds nothing to the corpus statistics.

Corpus statistics carry ``pooled`` (``leaderboard.pooled``): the bootstrap intervals here and
the leaderboard's paired tests recompute the statistic itself, never a mean in its place.
``conversation-judge`` runs ``evaluate.judges.conversation.conversation_scores`` when a judge is
given and the questions are known (``--data``); otherwise it is skipped with the reason.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import numpy as np

from radixpert.errors import MetricUnavailable
from radixpert.leaderboard import pooled
from radixpert.leaderboard.benchmarks import JUDGE_METRICS, TASK_METRICS, Benchmark

logger = logging.getLogger(__name__)

__all__ = ["NO_JUDGE", "score_tasks"]

NO_JUDGE = (
    "needs a judge endpoint: give --judge-url URL --judge-model NAME (an OpenAI-compatible "
    "server on this machine; --judge-allow-remote for another host) or --judge-local MODEL"
)
_SOURCE = "radixpert.evaluate.tasks.task_scores"


def _classification(rows: Sequence[tuple[str, str]]) -> dict[str, Any]:
    from radixpert.evaluate.tasks import classification_scores
    from radixpert.vocab import OBSERVATIONS

    cols: dict[str, list[float]] = {k: [] for k in ("tp", "fp", "fn", "gold", "answer", "exact")}
    parsed, f1 = [], []
    for truth, answer in rows:
        # One record scored alone: a label is true when its recall is defined, given when its
        # precision is, which is how classification_scores reads labels (its rules, not ours).
        one = classification_scores([truth], [answer])
        gold = [not math.isnan(one[f"recall/{o}"]) for o in OBSERVATIONS]
        given = [not math.isnan(one[f"precision/{o}"]) for o in OBSERVATIONS]
        tp = sum(g and a for g, a in zip(gold, given))
        fp = sum(a and not g for g, a in zip(gold, given))
        fn = sum(g and not a for g, a in zip(gold, given))
        for key, value in (("tp", tp), ("fp", fp), ("fn", fn), ("exact", gold == given)):
            cols[key].append(float(value))
        cols["gold"].append(float(sum(1 << i for i, g in enumerate(gold) if g)))
        cols["answer"].append(float(sum(1 << i for i, a in enumerate(given) if a)))
        parsed.append(one["parsed"])
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    detail = {"tp": cols["tp"], "fp": cols["fp"], "fn": cols["fn"], "gold_labels": cols["gold"],
              "answer_labels": cols["answer"], "exact": cols["exact"]}  # fmt: skip
    n = len(OBSERVATIONS)
    return {
        "micro_f1": (f1, detail, {"statistic": "micro-f1", "inputs": ["tp", "fp", "fn"]}),
        "macro_f1": (
            f1,
            detail,
            {"statistic": "macro-f1", "inputs": ["gold_labels", "answer_labels"], "labels": n},
        ),
        "parsed": (parsed, {}, None),
        "_labels": list(OBSERVATIONS),
    }


def _grounding(rows: Sequence[tuple[str, str]], keys: Sequence[str]) -> dict[str, Any]:
    from radixpert.evaluate.tasks import iou, parse_boxes

    hits_all: list[list[float]] = []
    iou_sum, n_true, mean_iou, recall, parsed = [], [], [], [], []
    for truth, answer in rows:
        true, given = parse_boxes(truth), parse_boxes(answer)
        # evaluate.tasks.average_precision's greedy rule, which is per record: boxes in answer
        # order, each to the best unused true box at IoU >= 0.5 (the last of equal ones).
        used: set[int] = set()
        hits = []
        for box in given:
            best, best_j = 0.5, None
            for j, t in enumerate(true):
                if j not in used and iou(box, t) >= best:
                    best, best_j = iou(box, t), j
            if best_j is not None:
                used.add(best_j)
            hits.append(float(best_j is not None))
        best_ious = [max((iou(t, b) for b in given), default=0.0) for t in true]
        hits_all.append(hits)
        iou_sum.append(float(sum(best_ious)))
        n_true.append(float(len(true)))
        empty = float(not given)  # no true box: right only if the answer gives none
        mean_iou.append(sum(best_ious) / len(true) if true else empty)
        recall.append(sum(hits) / len(true) if true else empty)
        parsed.append(float(bool(given)))
    series = {"iou_sum": iou_sum, "true_boxes": n_true}
    boxes = {"hits": hits_all, "true_boxes": n_true, "keys": list(keys)}
    return {
        "mean_iou": (mean_iou, series, {"statistic": "ratio", "inputs": ["iou_sum", "true_boxes"]}),
        "map50": (recall, {}, {"statistic": "ap50", "inputs": ["boxes"]}),
        "parsed": (parsed, {}, None),
        "_boxes": boxes,
    }


def _entry(
    name: str,
    aggregate: float,
    per_sample: list[float],
    *,
    bootstrap: int,
    seed: int,
    fn: Callable[[np.ndarray], float] | None,
    settings: dict[str, Any],
    detailed: dict[str, Any] | None = None,
    series: dict[str, list[float]] | None = None,
    recipe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One metric as ``radixpert evaluate`` writes it (``evaluate.runner``'s layout)."""
    import radixpert
    from radixpert.evaluate.stats import bootstrap_replicates, normal_ci, percentile_interval

    mean, se, normal = normal_ci(per_sample)
    reps = bootstrap_replicates(per_sample, bootstrap, seed, fn)
    reps = reps[np.isfinite(reps)] if fn is not None else reps
    entry: dict[str, Any] = {"aggregate": aggregate, "higher_is_better": True,
                             "n": len(per_sample), "mean": mean}  # fmt: skip
    if fn is None:
        entry["ci95_normal"] = {**normal.as_dict(), "se": se}
    else:
        bse = float(reps.std(ddof=1)) if reps.size > 1 else math.nan
        half = 1.959963984540054 * bse
        entry["ci95_normal"] = {
            "low": aggregate - half,
            "high": aggregate + half,
            "method": "normal (bootstrap SE, corpus statistic)",
            "se": bse,
        }
    boot = percentile_interval(reps)
    entry["ci95_bootstrap"] = {**boot.as_dict(), "resamples": int(reps.size), "seed": seed}
    entry["settings"] = settings
    entry["versions"] = {"radixpert": radixpert.__version__, "numpy": np.__version__}
    entry["detailed"] = detailed or {}
    entry["per_sample"] = per_sample
    if series:
        entry["per_sample_detailed"] = series
    if recipe is not None:
        entry["pooled"] = recipe
    entry["registry_name"] = name
    return entry


def score_tasks(
    bench: Benchmark,
    ids: Sequence[str],
    records: dict[str, dict[str, Any]],
    *,
    metrics: Sequence[str] | None = None,
    bootstrap: int = 500,
    seed: int = 0,
    judge: Any = None,
    conversations: dict[str, Any] | None = None,
    progress: TextIO | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(metric entries, skipped metric -> reason) of a task benchmark's records, in ``ids``
    order (module doc).

    Args:
        metrics: Override the benchmark's metrics; named metrics that cannot run are errors.
        judge: A ``JudgeBackend`` for ``conversation-judge`` (None: skipped, the reason said).
        conversations: ``{id: turns}`` of the conversations answered (the questions the judge
            reads).

    Raises:
        MetricUnavailable: An explicitly named judge metric that cannot run.
        RuntimeError: A per-record statistic that does not reproduce ``task_scores``.
    """
    from radixpert.evaluate.tasks import task_scores, token_f1

    family = bench.family or "text"
    wanted = list(metrics or bench.metrics)
    allowed = (*TASK_METRICS[family], *JUDGE_METRICS.get(family, ()))
    unknown = [m for m in wanted if m not in allowed]
    if unknown:
        raise MetricUnavailable(
            f"{', '.join(unknown)}: not a score of a {family} task (one of {', '.join(allowed)})"
        )
    task = bench.tasks[0]  # tasks of one family are pooled under the first name
    pooled_records = {i: {**records[i], "task": task} for i in ids}
    rows = [
        (str(records[i]["report"] or ""), str(records[i]["model_prediction"] or "")) for i in ids
    ]
    reference = task_scores(pooled_records)[task]
    per: dict[str, Any] = {}
    if family == "classification":
        per = _classification(rows)
    elif family == "grounding":
        per = _grounding(rows, ids)
    tokens = [token_f1(t, a) for t, a in rows]
    for key in ("f1", "precision", "recall"):
        per[f"token_{key}"] = ([x[key] for x in tokens], {}, None)
    settings = {"task": task, "tasks_pooled": list(bench.tasks), "source": _SOURCE}
    out: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for name in wanted:
        if name in JUDGE_METRICS.get(family, ()):
            reason = _judge_unavailable(judge, conversations)
            if reason is None:
                out[name] = _judge_entry(ids, pooled_records, judge, conversations, bootstrap, seed)
            elif metrics is not None:
                raise MetricUnavailable(f"{name}: {reason}")
            else:
                skipped[name] = reason
                if progress is not None:
                    print(f"{name}: skipped ({reason})", file=progress, flush=True)
            continue
        values, series, recipe = per[name]
        detailed: dict[str, Any] = {}
        fn = None
        if recipe is not None:
            if recipe["statistic"] == "ap50":
                detailed["boxes"] = per["_boxes"]
            entry = {"pooled": recipe, "per_sample_detailed": series, "detailed": detailed}
            fn = pooled.corpus_fn(entry)
            assert fn is not None
            rebuilt = fn(np.arange(len(ids)))
            if not _same(rebuilt, reference[name]):
                raise RuntimeError(
                    f"{bench.name}: {name} rebuilt per record is {rebuilt}, task_scores gives "
                    f"{reference[name]}"
                )
        elif not _same(float(np.mean(values)), reference[name]):
            raise RuntimeError(
                f"{bench.name}: mean per-record {name} is {np.mean(values)}, task_scores gives "
                f"{reference[name]}"
            )
        if "_labels" in per and name in ("micro_f1", "macro_f1"):
            detailed["labels"] = per["_labels"]
        out[name] = _entry(
            name, float(reference[name]), [float(v) for v in values], bootstrap=bootstrap,
            seed=seed, fn=fn, settings=settings, detailed=detailed, series=series or None,
            recipe=recipe,
        )  # fmt: skip
    return out, skipped


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _judge_unavailable(judge: Any, conversations: dict[str, Any] | None) -> str | None:
    if judge is None:
        return NO_JUDGE
    if conversations is None:
        return "needs the questions: give --data, the folder holding the conversations file"
    return None


def _judge_entry(
    ids: Sequence[str],
    records: dict[str, dict[str, Any]],
    judge: Any,
    conversations: dict[str, Any] | None,
    bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    from radixpert.evaluate.judges.conversation import conversation_scores

    result = conversation_scores(records, judge, conversations=conversations, tasks=None)
    where = {rid: k for k, rid in enumerate(result.detailed["ids"])}
    values = [float(result.per_sample[where[i]]) for i in ids]
    scores = np.asarray(values, dtype=float)

    def fn(idx: np.ndarray) -> float:
        x = scores[np.asarray(idx)]
        x = x[~np.isnan(x)]
        return float(x.mean()) if x.size else math.nan

    detailed = {k: v for k, v in result.detailed.items() if k != "ids"}
    return _entry("conversation-judge", float(result.aggregate), values, bootstrap=bootstrap,
                  seed=seed, fn=fn, settings=result.settings, detailed=detailed)  # fmt: skip
