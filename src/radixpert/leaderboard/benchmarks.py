"""Benchmarks as data: one versioned YAML file per (dataset, split, track, reference building).

    bench = load_benchmark("rexrank-mimic-cxr-findings-impression")   # shipped, by name
    refs = build_references(bench, records)       # id -> reference text, as the protocol says
    cands = build_candidates(bench, predictions)  # id -> candidate text

A benchmark file (``radixpert/configs/benchmarks/<name>.yaml``, or any path) names:

- ``dataset``: ``name``, ``layout`` (``rexrank``: a ReXrank test or prediction JSON,
  ``{id: {section_findings, section_impression, ...}}``; ``studies``: radixpert Study JSONL),
  ``file`` (relative to ``--data``), ``split`` and, for the published sets, the study count;
- ``track``: ``findings`` or ``findings+impression``;
- ``reference``: ``rexrank`` or ``clean`` (below);
- ``prompt``, ``metrics``, ``rank_by`` (the ranking metric when it can run) and
  ``offline_rank_by`` (the one that needs no weights), ``source`` (where the protocol is from).

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
from radixpert.evaluate.io import PREDICTION_KEYS
from radixpert.paths import configs_dir

__all__ = [
    "LAYOUTS",
    "REFERENCES",
    "TRACKS",
    "Benchmark",
    "build_candidates",
    "build_references",
    "list_benchmarks",
    "load_benchmark",
    "read_records",
]

TRACKS = ("findings", "findings+impression")
REFERENCES = ("rexrank", "clean")
LAYOUTS = ("rexrank", "studies")
_REQUIRED = ("name", "version", "dataset", "track", "reference", "metrics", "rank_by")


@dataclass(frozen=True)
class Dataset:
    """Where a benchmark's references come from."""

    name: str
    layout: str
    file: str
    split: str | None = None
    studies: int | None = None


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

    def record(self) -> dict[str, Any]:
        """What a result file says about the benchmark."""
        return {
            "name": self.name,
            "version": self.version,
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
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise InputError(f"{path}: missing field(s) {', '.join(missing)}")
    ds = data["dataset"]
    if not isinstance(ds, dict) or not all(k in ds for k in ("name", "layout", "file")):
        raise InputError(f"{path}: dataset needs name, layout and file")
    checks = (
        ("dataset.layout", ds["layout"], LAYOUTS),
        ("track", data["track"], TRACKS),
        ("reference", data["reference"], REFERENCES),
    )
    for key, value, allowed in checks:
        if value not in allowed:
            raise InputError(f"{path}: {key} {value!r} is not one of {', '.join(allowed)}")
    metrics = data["metrics"]
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise InputError(f"{path}: metrics must be a non-empty list of metric names")
    from radixpert.evaluate import registry

    known = set(registry.names())
    unknown = [m for m in [*metrics, data["rank_by"], data.get("offline_rank_by")] if m]
    unknown = [m for m in unknown if m not in known]
    if unknown:
        raise InputError(f"{path}: unknown metric(s) {', '.join(unknown)} (see evaluate --list)")
    if not isinstance(data["version"], int):
        raise InputError(f"{path}: version must be an integer")
    known_keys = {*_REQUIRED, "description", "prompt", "offline_rank_by", "source"}
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
        ),
        track=str(data["track"]),
        reference=str(data["reference"]),
        prompt=str(data.get("prompt", "")),
        metrics=tuple(metrics),
        rank_by=str(data["rank_by"]),
        offline_rank_by=data.get("offline_rank_by"),
        source=str(data.get("source", "")),
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
        extra={k: v for k, v in data.items() if k not in known_keys},
    )


# --------------------------------------------------------------------------------------------
# Records


def read_records(path: str | Path, layout: str, split: str | None = None) -> dict[str, dict]:
    """``{id: record}`` of a ReXrank JSON (test set or prediction file), or of Study records
    (JSONL or Parquet, read by ``data.study.read_studies``: ``{id: {findings, impression}}``).

    Raises:
        InputError: Missing file, bad JSON, a record that is not an object, an invalid Study,
            duplicate ids — naming the file and the line or id.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    out: dict[str, dict] = {}
    if layout == "rexrank":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: expected {{study id: record}} (ReXrank's layout)")
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
    else:
        raise UsageError(f"unknown layout {layout!r}; one of {', '.join(LAYOUTS)}")
    if not out:
        raise InputError(f"{path}: no records" + (f" of split {split!r}" if split else ""))
    return out


def _missing(value: Any) -> bool:
    """pandas.notna's view of a section: None and float NaN are missing."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _sections(record: dict[str, Any], layout: str) -> tuple[Any, Any]:
    if layout == "rexrank":
        return record.get("section_findings"), record.get("section_impression")
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
            f = None if _missing(findings) else findings
            i = None if _missing(impression) else impression
            # ReXrank's evaluation_script.md: f"Findings: {findings} Impression: {impression}"
            refs[rid] = f"Findings: {f} Impression: {i}" if bench.track != "findings" else f"{f}"
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
