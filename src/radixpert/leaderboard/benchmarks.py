"""Benchmarks as data: one versioned YAML file per (dataset, split, track, reference building).

    bench = load_benchmark("rexrank-mimic-cxr-findings-impression")   # shipped, by name
    refs = build_references(bench, records)       # id -> reference text, as the protocol says
    cands = build_candidates(bench, predictions)  # id -> candidate text

A benchmark file (``radixpert/configs/benchmarks/<name>.yaml``, or any path) names:

- ``kind``: ``report`` (the default: a generated report scored against the reference report)
  or ``task`` (answers to instruction tasks, below);
- ``dataset``: ``name``, ``layout`` (``rexrank``: a ReXrank test or prediction JSON,
  ``{id: {section_findings, section_impression, ...}}``; ``rexgradient``: ReXGradient-160K's
  ``metadata/{split}_metadata_view_position.json``, ``{study key: {Findings, Impression,
  ...}}``; ``studies``: radixpert Study JSONL; ``conversations``: the ShareGPT JSONL of
  ``radixpert data instruct``, task benchmarks only), ``file`` (relative to ``--data``),
  ``split`` and, for the published sets, the study count;
- ``track``: ``findings`` or ``findings+impression`` (report benchmarks);
- ``reference``: ``rexrank`` or ``clean`` (below; report benchmarks);
- ``task`` (task benchmarks): the instruction task(s) scored, ``radixpert.vocab`` names
  (``classification``, ``grounding-abnormality``, ...); several tasks of one family are pooled;
- ``prompt``, ``metrics``, ``rank_by`` (the ranking metric when it can run) and
  ``offline_rank_by`` (the one that needs no weights or judge), ``source`` (where the
  protocol is from). A report benchmark's metrics are ``radixpert evaluate`` registry names;
  a task benchmark's are keys of ``evaluate.tasks.task_scores`` (``TASK_METRICS``: ``micro_f1``,
  ``macro_f1``, ``map50``, ``mean_iou``, ``token_f1``, ...) or a judge (``conversation-judge``).

Reference building. ``rexrank`` reproduces ReXrank's evaluation script
(rajpurkarlab/ReXrank, ``example_files/evaluation_script.md``) with its quirks: the
findings + impression reference is ``f"Findings: {findings} Impression: {impression}"`` with
a missing (NaN) section written as Python's ``None`` ("Impression: None" for 723 of the 2,347
MIMIC-CXR studies, "Findings: None" for 138 of the 200 CheXpert Plus ones), and never the test
file's own ``report`` field (which is built differently). The script shows only that track;
for ``findings`` the section is taken as shipped, a missing one written ``None`` the same way
(an assumption, recorded in the benchmark files). ``clean`` keeps the layout and drops the
quirk: a missing section is left out, and a study without any of the track's sections is not
scored (its id is listed in the result as excluded).

Candidates: a model-output field (``model_prediction``, ReXrank's, ``prediction``, ... as
``radixpert evaluate`` reads them: ``evaluate.io.PREDICTION_KEYS``) is scored whole; a
sectioned prediction (``radixpert generate``: ``findings`` [, ``impression``]) is joined in
the clean layout of the track; an unsplit ``report`` is scored whole.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radixpert.errors import InputError, UsageError
from radixpert.evaluate.io import PREDICTION_KEYS, rexrank_reference
from radixpert.paths import configs_dir

__all__ = [
    "JUDGE_METRICS",
    "KINDS",
    "LAYOUTS",
    "REFERENCES",
    "TASK_METRICS",
    "TRACKS",
    "Benchmark",
    "build_candidates",
    "build_references",
    "list_benchmarks",
    "load_benchmark",
    "read_records",
    "task_family",
]

KINDS = ("report", "task")
TRACKS = ("findings", "findings+impression")
REFERENCES = ("rexrank", "clean")
LAYOUTS = ("rexrank", "rexgradient", "studies", "conversations")
_REQUIRED = ("name", "version", "dataset", "metrics", "rank_by")
_REQUIRED_BY_KIND = {"report": ("track", "reference"), "task": ("task",)}

_TOKEN_METRICS = ("token_f1", "token_precision", "token_recall", "parsed")
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("micro_f1", "macro_f1", *_TOKEN_METRICS),
    "grounding": ("map50", "mean_iou", *_TOKEN_METRICS),
    "detection": ("token_f1", "token_precision", "token_recall"),
    "text": ("token_f1", "token_precision", "token_recall"),
}
"""Per task family, the ``task_scores`` keys a task benchmark may declare (``parsed``: the
share of answers read, classification and grounding only)."""
JUDGE_METRICS: dict[str, tuple[str, ...]] = {"text": ("conversation-judge",)}
"""Per task family, the LLM-judge metrics a task benchmark may declare
(``conversation-judge``: ``radixpert.evaluate.judges.conversation``, RadVLM's 0-10 score)."""


def task_family(task: str) -> str:
    """``classification``, ``grounding``, ``detection`` (labelled boxes: token scores only
    here, its per-label mAP is not yet rebuilt per record) or ``text``.

    Raises:
        UsageError: Not a task name of ``radixpert.vocab`` or ``evaluate.tasks``.
    """
    from radixpert import vocab
    from radixpert.evaluate.tasks import GROUNDING_TASKS

    known = (*vocab.TASKS, *vocab.LLM_TASKS, *GROUNDING_TASKS)
    if task not in known:
        raise UsageError(f"unknown task {task!r}; one of {', '.join(dict.fromkeys(known))}")
    if task == "classification":
        return "classification"
    if task in GROUNDING_TASKS:
        return "grounding"
    return "detection" if task == "detection" else "text"


@dataclass(frozen=True)
class Dataset:
    """Where a benchmark's references come from."""

    name: str
    layout: str
    file: str
    split: str | None = None
    studies: int | None = None
    images: str | None = None  # folder the file's image paths are relative to (under --data)


@dataclass(frozen=True)
class Benchmark:
    """One protocol: dataset, track, reference building, prompt and metrics (see module doc).

    Attributes:
        path: The YAML file it was read from; ``sha256`` its bytes' digest (recorded in
            every result, with ``name`` and ``version``).
    """

    name: str
    version: int
    description: str
    dataset: Dataset
    track: str
    reference: str
    prompt: str
    metrics: tuple[str, ...]
    rank_by: str
    offline_rank_by: str | None
    source: str
    path: Path
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)
    kind: str = "report"
    tasks: tuple[str, ...] = ()

    @property
    def family(self) -> str | None:
        """The task family of a task benchmark (``task_family``); None for a report one."""
        return task_family(self.tasks[0]) if self.tasks else None

    def record(self) -> dict[str, Any]:
        """What a result file says about the benchmark."""
        out = {
            "name": self.name,
            "version": self.version,
            "kind": self.kind,
            "file": self.path.name,
            "sha256": self.sha256,
            "dataset": vars(self.dataset),
            "track": self.track,
            "reference": self.reference,
            "prompt": self.prompt,
            "metrics": list(self.metrics),
            "rank_by": self.rank_by,
            "offline_rank_by": self.offline_rank_by,
            "source": self.source,
        }
        if self.kind == "task":
            out["tasks"] = list(self.tasks)
        return out


def shipped_dir() -> Path:
    """The benchmarks shipped in the package (``radixpert/configs/benchmarks``)."""
    return configs_dir("benchmarks")


def list_benchmarks() -> list[str]:
    """Names of the shipped benchmarks, sorted."""
    folder = shipped_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_benchmark(name_or_path: str | Path) -> Benchmark:
    """A benchmark by shipped name or by file path, validated.

    Raises:
        UsageError: Neither a file nor a shipped name (the names are listed).
        InputError: A malformed file: the file and the field are named.
    """
    from radixpert._optional import require

    require("yaml", purpose="reading benchmark files")
    import yaml

    path = Path(name_or_path)
    if not path.is_file():
        candidate = (
            shipped_dir() / f"{path.stem if path.suffix in ('.yaml', '.yml') else path}.yaml"
        )
        if not candidate.is_file():
            raise UsageError(
                f"{name_or_path}: no such benchmark file or shipped benchmark; shipped: "
                f"{', '.join(list_benchmarks())}"
            )
        path = candidate
    raw = path.read_bytes()
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise InputError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    kind = data.get("kind", "report")
    if kind not in KINDS:
        raise InputError(f"{path}: kind {kind!r} is not one of {', '.join(KINDS)}")
    missing = [k for k in (*_REQUIRED, *_REQUIRED_BY_KIND[kind]) if k not in data]
    if missing:
        raise InputError(f"{path}: missing field(s) {', '.join(missing)}")
    ds = data["dataset"]
    if not isinstance(ds, dict) or not all(k in ds for k in ("name", "layout", "file")):
        raise InputError(f"{path}: dataset needs name, layout and file")
    layouts = (
        ("conversations",) if kind == "task" else tuple(x for x in LAYOUTS if x != "conversations")
    )
    checks = [("dataset.layout", ds["layout"], layouts)]
    if kind == "report":
        checks += [("track", data["track"], TRACKS), ("reference", data["reference"], REFERENCES)]
    for key, value, allowed in checks:
        if value not in allowed:
            raise InputError(f"{path}: {key} {value!r} is not one of {', '.join(allowed)}")
    metrics = data["metrics"]
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise InputError(f"{path}: metrics must be a non-empty list of metric names")
    named = [m for m in [*metrics, data["rank_by"], data.get("offline_rank_by")] if m]
    tasks: tuple[str, ...] = ()
    if kind == "task":
        raw_tasks = data["task"] if isinstance(data["task"], list) else [data["task"]]
        if not raw_tasks or not all(isinstance(t, str) for t in raw_tasks):
            raise InputError(f"{path}: task must be a task name or a non-empty list of them")
        tasks = tuple(raw_tasks)
        try:
            families = {task_family(t) for t in tasks}
        except UsageError as e:
            raise InputError(f"{path}: {e}") from None
        if len(families) > 1:
            raise InputError(
                f"{path}: tasks {', '.join(tasks)} are of different families "
                f"({', '.join(sorted(families))}); one benchmark pools tasks of one family"
            )
        family = families.pop()
        allowed = (*TASK_METRICS[family], *JUDGE_METRICS.get(family, ()))
        unknown = [m for m in named if m not in allowed]
        if unknown:
            raise InputError(
                f"{path}: metric(s) {', '.join(unknown)} are not scores of a {family} task "
                f"(one of {', '.join(allowed)})"
            )
    else:
        from radixpert.evaluate import registry

        known = set(registry.names())
        unknown = [m for m in named if m not in known]
        if unknown:
            raise InputError(
                f"{path}: unknown metric(s) {', '.join(unknown)} (see evaluate --list)"
            )
    if kind == "task":
        outside = [m for m in named if m not in metrics]
        if outside:
            raise InputError(f"{path}: rank_by / offline_rank_by {outside[0]!r} is not in metrics")
    if not isinstance(data["version"], int):
        raise InputError(f"{path}: version must be an integer")
    known_keys = {*_REQUIRED, "kind", "track", "reference", "task", "description", "prompt",
                  "offline_rank_by", "source"}  # fmt: skip
    return Benchmark(
        name=str(data["name"]),
        version=int(data["version"]),
        description=str(data.get("description", "")),
        dataset=Dataset(
            name=str(ds["name"]),
            layout=str(ds["layout"]),
            file=str(ds["file"]),
            split=ds.get("split"),
            studies=ds.get("studies"),
            images=ds.get("images"),
        ),
        track=str(data.get("track", "")),
        reference=str(data.get("reference", "")),
        prompt=str(data.get("prompt", "")),
        metrics=tuple(metrics),
        rank_by=str(data["rank_by"]),
        offline_rank_by=data.get("offline_rank_by"),
        source=str(data.get("source", "")),
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        extra={k: v for k, v in data.items() if k not in known_keys},
        kind=kind,
        tasks=tasks,
    )


# --------------------------------------------------------------------------------------------
# Records


def read_records(path: str | Path, layout: str, split: str | None = None) -> dict[str, dict]:
    """``{id: record}`` of a ReXrank JSON (test set or prediction file), a ReXGradient-160K
    metadata JSON (``{study key: {Findings, Impression, ...}}``, bare ``NaN`` read), Study
    records (JSONL or Parquet, read by ``data.study.read_studies``: ``{id: {findings,
    impression}}``) or conversations (``radixpert data instruct``'s JSONL: ``{id: {task,
    study_id, answer (the last turn, which radixpert generate's answer is scored against),
    conversations}}``).

    Raises:
        InputError: Missing file, bad JSON, a record that is not an object, an invalid Study,
            duplicate ids — naming the file and the line or id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    out: dict[str, dict] = {}
    if layout in ("rexrank", "rexgradient"):
        try:  # Python's json reads the bare NaN both releases write
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected {{study id: record}} ({layout}'s layout)")
        for rid, rec in data.items():
            if not isinstance(rec, dict):
                raise InputError(f"{path}: id {rid!r}: expected an object")
            out[str(rid)] = rec
    elif layout == "studies":
        from radixpert.data.study import read_studies
        from radixpert.errors import StudyError

        try:
            for study in read_studies(path):  # validated Study records (JSONL or Parquet)
                if split is not None and study.split != split:
                    continue
                if study.id in out:
                    raise InputError(f"{path}: duplicate study id {study.id!r}")
                out[study.id] = {"findings": study.findings, "impression": study.impression}
        except StudyError as e:
            raise InputError(str(e)) from None
    elif layout == "conversations":
        out = _read_conversations(path)
    else:
        raise UsageError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
    if not out:
        raise InputError(f"{path}: no records" + (f" of split {split!r}" if split else ""))
    return out


def _read_conversations(path: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
            turns = rec.get("conversations") if isinstance(rec, dict) else None
            if not isinstance(turns, list) or "id" not in rec:
                raise InputError(f"{path}: line {n}: expected an object with id and conversations")
            if not turns or not isinstance(turns[-1], dict) or turns[-1].get("from") != "gpt":
                raise InputError(f"{path}: line {n}: the last turn is not an answer (gpt)")
            rid = str(rec["id"])
            if rid in out:
                raise InputError(f"{path}: line {n}: duplicate id {rid!r}")
            out[rid] = {
                "task": str(rec.get("task", "")),
                "study_id": str(rec.get("study_id", "")),
                "answer": str(turns[-1].get("value", "")),
                "conversations": turns,
            }
    return out


def _missing(value: Any) -> bool:
    """pandas.notna's view of a section: None and float NaN are missing."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _sections(record: dict[str, Any], layout: str) -> tuple[Any, Any]:
    if layout == "rexrank":
        return record.get("section_findings"), record.get("section_impression")
    if layout == "rexgradient":  # a missing section is NaN or the string "None" there
        return tuple(
            None if isinstance(v, str) and v.strip().lower() in ("none", "nan") else v
            for v in (record.get("Findings"), record.get("Impression"))
        )
    return record.get("findings"), record.get("impression")


def _clean(findings: Any, impression: Any, track: str) -> str | None:
    have_f = not _missing(findings) and str(findings).strip()
    have_i = not _missing(impression) and str(impression).strip()
    if track == "findings":
        return str(findings).strip() if have_f else None
    parts = ([f"Findings: {str(findings).strip()}"] if have_f else []) + (
        [f"Impression: {str(impression).strip()}"] if have_i else []
    )
    return " ".join(parts) or None


def build_references(
    bench: Benchmark, records: dict[str, dict[str, Any]], layout: str | None = None
) -> tuple[dict[str, str], list[str]]:
    """(id -> reference text, excluded ids) as the benchmark's ``reference`` says.

    ``rexrank`` never excludes (a missing section becomes "None", as ReXrank's script writes
    it); ``clean`` excludes the studies without the track's sections.
    """
    layout = layout or bench.dataset.layout
    refs: dict[str, str] = {}
    excluded: list[str] = []
    for rid, rec in records.items():
        findings, impression = _sections(rec, layout)
        if bench.reference == "rexrank":
            if bench.track == "findings":
                refs[rid] = str(None if _missing(findings) else findings)
            else:
                refs[rid] = rexrank_reference(findings, impression)
        else:
            text = _clean(findings, impression, bench.track)
            if text is None:
                excluded.append(rid)
            else:
                refs[rid] = text
    return refs, excluded


def build_candidates(bench: Benchmark, predictions: dict[str, dict[str, Any] | str]) -> dict:
    """id -> candidate text (see the module docstring).

    Raises:
        InputError: A record with no prediction text, naming the id and the fields it has.
    """
    out: dict[str, str] = {}
    for rid, rec in predictions.items():
        if isinstance(rec, str):
            out[rid] = rec
            continue
        key = next((k for k in PREDICTION_KEYS if k in rec), None)
        if key is not None:
            value = rec[key]
            out[rid] = "" if _missing(value) else str(value)
        elif "findings" in rec or "impression" in rec:
            text = _clean(rec.get("findings"), rec.get("impression"), bench.track)
            out[rid] = text or ""
        elif "report" in rec:
            out[rid] = "" if _missing(rec["report"]) else str(rec["report"])
        else:
            raise InputError(
                f"prediction {rid!r}: no prediction text (expected one of "
                f"{', '.join(PREDICTION_KEYS)}, findings/impression or report; has "
                f"{', '.join(sorted(rec)) or 'nothing'})"
            )
    return out
