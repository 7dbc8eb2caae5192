"""``radixpert benchmark``: score a model's predictions under a declared, versioned protocol.

    radixpert benchmark list
    radixpert benchmark show rexrank-mimic-cxr-findings-impression
    radixpert benchmark run rexrank-mimic-cxr-findings rexrank-mimic-cxr-findings-clean \\
        --predictions preds.json --data ReXrank/data --model-name mymodel --out results/
    radixpert benchmark run phantoms-findings --model runs/demo/model/05-msa3/bundle \\
        --data runs/demo/data --out results/           # generates first, then scores

One result file per (model, benchmark), ``OUT/<model>/<benchmark>.json``: the benchmark's
record (name, version, file digest, dataset, track, reference building, prompt, metrics), the
model (name, the prediction file's digest, and the ``.meta.json`` that ``radixpert generate``
writes beside it: checkpoint, decoding settings, seed, versions), the references (file,
digest, excluded ids), every metric as ``radixpert evaluate`` reports it (aggregate, mean,
normal and bootstrap 95% intervals, per-sample scores in ``ids`` order, settings, versions),
the metrics that could not run here and why, and the ranking value. The leaderboard reads
these files.

With ``--model BUNDLE`` instead of ``--predictions`` the predictions are generated first by
``radixpert generate``'s engine (``infer.batch.run_generate``: batched, resumable, the
bundle's own report prompt and greedy decoding; the settings land in the predictions'
``.meta.json``, which the result embeds) into ``OUT/<model>/<benchmark>.predictions.json``;
a ReXrank set is first read into Study records by the ``rexrank`` reader (images under
``--data``, as ReXrank's README lays them out).

References come from ``--data`` (the folder the benchmark's ``dataset.file`` is relative to:
ReXrank's ``data/`` for the ReXrank sets), or, without it, from the prediction file itself
when it carries the gold sections (ReXrank's prediction layout does). A benchmark's metric
that cannot run here (its weights are absent) is skipped and listed with the reason; the
ranking falls back to the benchmark's ``offline_rank_by`` and the result says so.

A task benchmark (``kind: task``) reads ``radixpert generate``'s answers to conversations
(``--predictions``), or generates them for the benchmark's conversations only (``--model``),
takes the truth from the conversations file under ``--data`` (else the answers' ``report``),
and scores them with ``leaderboard.tasks.score_tasks`` into the same result layout. Its judge
metric needs ``--judge-url/--judge-model`` or ``--judge-local``; without one it is skipped and
the run says it needs a judge endpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from radixpert.errors import InputError, UsageError
from radixpert.leaderboard.benchmarks import (
    Benchmark,
    build_candidates,
    build_references,
    list_benchmarks,
    load_benchmark,
    read_records,
)

logger = logging.getLogger(__name__)

__all__ = ["RESULT_FORMAT", "add_parser", "metric_key", "result_path", "run_benchmark", "safe_name"]

RESULT_FORMAT = "radixpert.benchmark-result"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def result_path(out_dir: str | Path, model: str, bench: Benchmark) -> Path:
    """``OUT/<model>/<benchmark>.json`` (the model name made safe for a folder)."""
    return Path(out_dir) / (safe_name(model).strip("_") or "model") / f"{bench.name}.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_benchmark(
    bench: Benchmark,
    predictions: str | Path,
    *,
    data: str | Path | None = None,
    model: str | None = None,
    out_dir: str | Path | None = None,
    metrics: list[str] | None = None,
    bootstrap: int = 500,
    seed: int = 0,
    allow_missing: bool = False,
    metric_options: dict[str, Any] | None = None,
    judge: Any = None,
    progress: TextIO | None = None,
) -> dict[str, Any]:
    """Scores ``predictions`` under ``bench``; returns (and, with ``out_dir``, writes) the
    result document described in the module docstring.

    Args:
        bench: The protocol (``load_benchmark``).
        predictions: A prediction file: ReXrank's layout (``model_prediction`` beside the
            gold sections) or ``radixpert generate``'s (``{id: {findings[, impression]}}``).
        data: Folder holding ``bench.dataset.file``; None reads the gold sections from the
            prediction file.
        model: The model's name in the result (default: the prediction file's stem).
        out_dir: Where to write ``<model>/<benchmark>.json`` (atomically).
        metrics: Override the benchmark's metrics (names or groups); named metrics that
            cannot run are then errors.
        bootstrap, seed: Resamples and seed of the bootstrap intervals.
        allow_missing: Score the common ids when a reference has no prediction (else an
            error naming them).
        judge: A ``JudgeBackend`` for a task benchmark's judge metric (None: it is skipped,
            and the result says it needs a judge endpoint).

    Raises:
        InputError: Missing or malformed files, predictions without text, unmatched ids.
    """
    from radixpert.evaluate.io import Pairs
    from radixpert.evaluate.runner import EvaluationOptions, run_metrics

    predictions = Path(predictions)
    if bench.kind == "task":
        return _run_task(
            bench, predictions, data=data, model=model, out_dir=out_dir, metrics=metrics,
            bootstrap=bootstrap, seed=seed, allow_missing=allow_missing, judge=judge,
            progress=progress,
        )  # fmt: skip
    pred_records = read_records(predictions, "rexrank")
    if data is not None:
        ref_file = Path(data) / bench.dataset.file
        gold = read_records(ref_file, bench.dataset.layout, bench.dataset.split)
        layout = bench.dataset.layout
    else:
        has_gold = all(
            isinstance(r, dict) and ("section_findings" in r or "section_impression" in r)
            for r in pred_records.values()
        )
        if not has_gold:
            raise InputError(
                f"{predictions}: no gold sections (section_findings / section_impression) "
                f"in the predictions; give --data, the folder holding {bench.dataset.file}"
            )
        ref_file, gold, layout = predictions, pred_records, "rexrank"
    references, excluded = build_references(bench, gold, layout)
    candidates = build_candidates(bench, pred_records)
    missing = [i for i in references if i not in candidates]
    extra = [i for i in candidates if i not in references and i not in excluded]
    if missing and not allow_missing:
        raise InputError(
            f"{predictions}: no prediction for {len(missing)} of {len(references)} reference "
            f"ids of {bench.name} (e.g. {', '.join(map(repr, missing[:5]))}); pass "
            "--allow-missing to score the common ids"
        )
    ids = [i for i in references if i in candidates]
    if not ids:
        raise InputError(f"{predictions}: no prediction matches an id of {bench.name}")
    pairs = Pairs(
        ids=ids,
        references=[references[i] for i in ids],
        candidates=[candidates[i] for i in ids],
        only_references=missing,
        only_candidates=extra,
        empty_candidates=[i for i in ids if not candidates[i].strip()],
    )
    opts = EvaluationOptions(
        metrics=list(metrics or bench.metrics),
        bootstrap=bootstrap,
        seed=seed,
        metric_options=metric_options or {},
        explicit=metrics is not None,
    )
    scored, skipped = run_metrics(pairs, opts, progress)
    return _document(
        bench, predictions, model, out_dir, ref_file, len(gold), ids, scored, skipped,
        excluded=excluded, missing=missing, extra=extra, empty=pairs.empty_candidates,
        bootstrap=bootstrap, seed=seed,
        why="no text for the track's sections (clean reference)",
    )  # fmt: skip


def _document(
    bench: Benchmark,
    predictions: Path,
    model: str | None,
    out_dir: str | Path | None,
    ref_file: Path,
    records: int,
    ids: list[str],
    scored: dict[str, Any],
    skipped: dict[str, str],
    *,
    excluded: list[str],
    missing: list[str],
    extra: list[str],
    empty: list[str],
    bootstrap: int,
    seed: int,
    why: str,
) -> dict[str, Any]:
    """The result document (module doc), written under ``out_dir`` when given."""
    import radixpert
    from radixpert.evaluate.base import package_versions
    from radixpert.evaluate.runner import write_results

    meta_file = predictions.with_name(predictions.stem + ".meta.json")
    model_name = model or predictions.stem
    result = {
        "format": RESULT_FORMAT,
        "format_version": 1,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "benchmark": bench.record(),
        "model": {
            "name": model_name,
            "predictions": {"path": str(predictions), "sha256": _sha256(predictions)},
            "generation": (
                json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else None
            ),
        },
        "references": {
            "path": str(ref_file),
            "sha256": _sha256(ref_file),
            "records": records,
            "scored": len(ids),
            "excluded": {"count": len(excluded), "ids": excluded, "why": why},
            "without_prediction": {"count": len(missing), "ids": missing},
            "predictions_not_in_benchmark": {"count": len(extra), "ids": extra[:100]},
            "empty_predictions": {"count": len(empty), "ids": empty},
        },
        "confidence": {"level": 0.95, "bootstrap_resamples": bootstrap, "bootstrap_seed": seed},
        "ranking": _rank_metric(bench, scored),
        "metrics": scored,
        "skipped_metrics": skipped,
        "ids": ids,
        "versions": {
            "radixpert": radixpert.__version__,
            **package_versions("numpy", "torch", "transformers"),
        },
    }
    if out_dir is not None:
        path = result_path(out_dir, model_name, bench)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_results(result, path)
        result["_path"] = str(path)
    return result


def _run_task(
    bench: Benchmark,
    predictions: Path,
    *,
    data: str | Path | None,
    model: str | None,
    out_dir: str | Path | None,
    metrics: list[str] | None,
    bootstrap: int,
    seed: int,
    allow_missing: bool,
    judge: Any,
    progress: TextIO | None,
) -> dict[str, Any]:
    """A task benchmark: the answers of ``radixpert generate`` to the benchmark's tasks, the
    truth from the conversations file under ``data`` (else the answers' own ``report``)."""
    from radixpert.leaderboard.tasks import score_tasks

    preds = read_records(predictions, "rexrank")
    wanted = set(bench.tasks)
    turns: dict[str, Any] | None = None
    if data is not None:
        ref_file = Path(data) / bench.dataset.file
        gold = read_records(ref_file, "conversations")
        truth = {i: r["answer"] for i, r in gold.items() if r["task"] in wanted}
        turns = {i: gold[i]["conversations"] for i in truth}
        records = len(gold)
    else:
        lacking = [i for i, r in preds.items() if "task" not in r or "report" not in r]
        if lacking:
            raise InputError(
                f"{predictions}: no task or true answer (report) in {len(lacking)} record(s), "
                f"e.g. {lacking[0]!r}; give --data, the folder holding {bench.dataset.file}"
            )
        truth = {i: str(r["report"] or "") for i, r in preds.items() if r["task"] in wanted}
        ref_file, records = predictions, len(preds)
    if not truth:
        raise InputError(
            f"{ref_file}: no conversation of task {', '.join(bench.tasks)} ({bench.name})"
        )
    for rid, rec in preds.items():
        if "model_prediction" not in rec:
            raise InputError(
                f"prediction {rid!r}: no model_prediction (radixpert generate's answer to a "
                f"conversation); has {', '.join(sorted(rec)) or 'nothing'}"
            )
        if rid in truth and rec.get("task") not in (None, "", *wanted):
            raise InputError(
                f"prediction {rid!r} answers task {rec['task']!r}, the benchmark's file has it "
                f"as {', '.join(bench.tasks)}: are these answers to {bench.dataset.file}?"
            )
    missing = [i for i in truth if i not in preds]
    extra = [i for i in preds if i not in truth]
    if missing and not allow_missing:
        raise InputError(
            f"{predictions}: no answer for {len(missing)} of {len(truth)} conversations of "
            f"{bench.name} (e.g. {', '.join(map(repr, missing[:5]))}); pass --allow-missing "
            "to score the common ids"
        )
    ids = [i for i in truth if i in preds]
    if not ids:
        raise InputError(f"{predictions}: no answer matches a conversation of {bench.name}")
    scoring = {
        i: {"task": preds[i].get("task") or bench.tasks[0], "report": truth[i],
            "model_prediction": preds[i]["model_prediction"],
            "study_id": preds[i].get("study_id", "")}
        for i in ids
    }  # fmt: skip
    scored, skipped = score_tasks(
        bench, ids, scoring, metrics=metrics, bootstrap=bootstrap, seed=seed, judge=judge,
        conversations=turns, progress=progress,
    )  # fmt: skip
    empty = [i for i in ids if not str(scoring[i]["model_prediction"] or "").strip()]
    return _document(
        bench, predictions, model, out_dir, ref_file, records, ids, scored, skipped,
        excluded=[], missing=missing, extra=extra, empty=empty, bootstrap=bootstrap,
        seed=seed, why="none (every conversation of the benchmark's tasks is scored)",
    )  # fmt: skip


def metric_key(metrics: dict[str, Any], name: str) -> str | None:
    """The result key of metric ``name``: itself, else the first result that metric produced
    (``f1-chexpert`` gives ``f1-chexpert-14-micro`` first); None if it did not run."""
    if name in metrics:
        return name
    return next((k for k, v in metrics.items() if v.get("registry_name") == name), None)


def safe_name(text: str) -> str:
    """``text`` with every run of characters outside ``[A-Za-z0-9._-]`` made one ``_``."""
    return _SAFE.sub("_", text)


def _rank_metric(bench: Benchmark, scored: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ranking metric and its value: ``rank_by`` when it ran, else ``offline_rank_by``."""
    for name, why in ((bench.rank_by, "rank_by"), (bench.offline_rank_by, "offline_rank_by")):
        if not name:
            continue
        key = metric_key(scored, name)
        if key is None:
            continue
        entry = scored[key]
        higher = bool(entry["higher_is_better"])
        value = entry.get("display") if entry.get("display_transform") else entry["aggregate"]
        return {
            "metric": name,
            "from": why,
            "value": value,
            "higher_is_better": True if entry.get("display_transform") else higher,
            "transform": entry.get("display_transform"),
        }
    return {"metric": None, "from": None, "value": None, "why": "no ranking metric ran"}


# --------------------------------------------------------------------------------------------
# Command line


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Registers ``radixpert benchmark {list,show,run}``."""
    p = sub.add_parser(
        "benchmark",
        help="score predictions under declared, versioned protocols (ReXrank's and others)",
        description=(
            "Benchmarks are YAML files naming the dataset and split, the track, how the "
            "reference text is built (ReXrank's exact quirks, or a clean variant), the prompt "
            "and the metrics. `run` writes one result file per (model, benchmark)."
        ),
    )
    bsub = p.add_subparsers(dest="benchmark_command", required=True)
    ls = bsub.add_parser("list", help="the shipped benchmarks")
    ls.set_defaults(func=_run_list)
    show = bsub.add_parser("show", help="a benchmark's definition")
    show.add_argument("benchmark", help="shipped name or YAML file")
    show.set_defaults(func=_run_show)
    run = bsub.add_parser("run", help="score a prediction file under one or more benchmarks")
    run.add_argument("benchmarks", nargs="+", help="shipped names or YAML files")
    run.add_argument("--predictions", help="prediction JSON (ReXrank's layout "
                     "or radixpert generate's)")  # fmt: skip
    run.add_argument("--model", help="a model bundle: generate the predictions first")
    run.add_argument("--batch-size", type=int, default=16, help="generation batch (with --model)")
    run.add_argument("--data", help="folder holding the benchmark's dataset file (ReXrank's "
                     "data/); default: the gold sections in the prediction file")  # fmt: skip
    run.add_argument("--model-name", help="the model's name (default: the prediction file's "
                     "stem, or the bundle's parent folder)")  # fmt: skip
    run.add_argument("--out", "-o", required=True, help="results folder (<model>/<bench>.json)")
    run.add_argument("--metrics", "-m", nargs="+", help="override the benchmark's metrics")
    run.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples (500)")
    run.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    run.add_argument(
        "--allow-missing",
        action="store_true",
        help="score the common ids when some references have no prediction",
    )
    judge = run.add_argument_group("LLM judge (a task benchmark's conversation-judge)")
    judge.add_argument("--judge-url", help="an OpenAI-compatible server (/v1) on this machine")
    judge.add_argument("--judge-model", help="the model name the server serves")
    judge.add_argument("--judge-api-key-env", help="environment variable holding its token")
    judge.add_argument("--judge-allow-remote", action="store_true",
                       help="allow a judge on another host (reports are patient data)")  # fmt: skip
    judge.add_argument("--judge-local", help="a transformers model folder or cached hub id")
    run.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    run.set_defaults(func=_run_run)


def _run_list(args: argparse.Namespace) -> int:
    for name in list_benchmarks():
        bench = load_benchmark(name)
        print(f"{name:48s} v{bench.version}  {bench.description}")
    return 0


def _run_show(args: argparse.Namespace) -> int:
    bench = load_benchmark(args.benchmark)
    print(json.dumps(bench.record(), indent=2))
    return 0


def generate_for(
    bench: Benchmark,
    model_dir: str | Path,
    data: str | Path,
    out_dir: str | Path,
    model: str,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> Path:
    """Generates ``model_dir``'s predictions for ``bench``'s studies; returns the file.

    Raises:
        InputError: The dataset file is missing under ``data``.
    """
    from radixpert.infer.batch import GenerateSettings, prompt_style, run_generate

    data = Path(data)
    source = data / bench.dataset.file
    if not source.is_file():
        raise InputError(f"{source}: no such file (the dataset file of {bench.name})")
    folder = result_path(out_dir, model, bench).parent
    folder.mkdir(parents=True, exist_ok=True)
    split = bench.dataset.split
    image_root: Path | None = None
    if bench.kind == "task":
        # Only the benchmark's tasks are answered; images stay relative to the original file.
        studies = folder / f"{bench.name}.conversations.jsonl"
        _task_conversations(source, set(bench.tasks), studies)
        images = bench.dataset.images
        image_root, split = (data / images if images else source.parent), None
    elif bench.dataset.layout in ("rexrank", "rexgradient"):
        from radixpert.data.prepare import prepare

        studies = folder / f"{bench.dataset.name}.studies.jsonl"
        if not studies.is_file():
            if bench.dataset.layout == "rexrank":
                prepare("rexrank", data, studies, files=source.name)
            else:  # the release's root holds metadata/ and deid_png/
                prepare("rexgradient", data, studies, splits=(split or "test",))
        image_root, split = data, None
    else:
        studies = source
    out = folder / f"{bench.name}.predictions.json"
    # A task benchmark has no report track; its conversations carry their own questions.
    track = bench.track if bench.kind != "task" else "findings"
    settings = GenerateSettings(track=track, batch_size=batch_size, **prompt_style(model_dir))
    run_generate(
        model_dir, studies, out, settings, image_root=image_root, split=split, progress=progress
    )
    return out


def _task_conversations(source: Path, tasks: set[str], out: Path) -> None:
    """The lines of ``source`` whose ``task`` is one of ``tasks``, written to ``out``."""
    from radixpert.io import atomic_write

    kept = 0
    with source.open(encoding="utf-8") as f, atomic_write(out) as w:
        for line in f:
            if line.strip() and json.loads(line).get("task") in tasks:
                w.write(line if line.endswith("\n") else line + "\n")
                kept += 1
    if not kept:
        raise InputError(f"{source}: no conversation of task {', '.join(sorted(tasks))}")


def _judge(args: argparse.Namespace) -> Any:
    """The judge backend the options name, or None."""
    if not (args.judge_url or args.judge_local):
        return None
    from radixpert.evaluate.judges.backend import backend_from_options

    return backend_from_options(
        args.judge_url, args.judge_model, args.judge_api_key_env, args.judge_allow_remote,
        args.judge_local,
    )  # fmt: skip


def _run_run(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.predictions is None):
        raise UsageError("give --predictions FILE or --model BUNDLE (which generates them)")
    if args.model and not args.data:
        raise UsageError("--model needs --data, the folder holding the benchmark's dataset")
    benches = [load_benchmark(b) for b in args.benchmarks]
    names = [b.name for b in benches]
    if len(set(names)) != len(names):
        raise UsageError(f"a benchmark is named twice: {names}")
    progress = None if args.quiet else sys.stderr
    judge = _judge(args)
    for bench in benches:
        if progress:
            print(f"benchmark {bench.name} (v{bench.version})", file=progress, flush=True)
        model_name = args.model_name or (
            Path(args.model).resolve().parent.name if args.model else None
        )
        predictions = args.predictions
        if args.model:
            predictions = generate_for(
                bench, args.model, args.data, args.out, model_name,
                batch_size=args.batch_size, progress=not args.quiet,
            )  # fmt: skip
        result = run_benchmark(
            bench,
            predictions,
            data=args.data,
            model=model_name,
            out_dir=args.out,
            metrics=args.metrics,
            bootstrap=args.bootstrap,
            seed=args.seed,
            allow_missing=args.allow_missing,
            judge=judge,
            progress=progress,
        )
        for name, why in result["skipped_metrics"].items():
            print(f"{bench.name}: {name} not run: {why}", file=sys.stderr)
        rank = result["ranking"]
        shown = "n/a" if rank["value"] is None else f"{rank['value']:.4f}"
        label = rank["metric"] if not rank.get("transform") else f"1/{rank['metric']}"
        skipped = ", ".join(result["skipped_metrics"]) or "none"
        print(
            f"{bench.name}: {result['references']['scored']} studies, {label} = {shown}; "
            f"skipped here: {skipped} -> {result['_path']}"
        )
    return 0
