"""Reading report files for evaluation.

Accepted inputs (format from the extension, `.json`, `.jsonl`, `.csv`):

* ReXrank-style JSON: an object `{id: report}` or `{id: {...}}` as ReXrank ships its test
  sets (`report`, `section_findings`, `section_impression`) and its prediction files (gold
  `findings` / `impression` beside `model_prediction`), or a list of records with an id.
* JSONL: one such record per line.
* CSV: an id column (`id`, `study_id`, `uid`, ...) and a report column (`report`, or
  `findings` / `impression`).

Every problem is an `InputError` naming the file, and the line or id where it applies.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radixpert.errors import InputError

ID_KEYS = ("id", "study_id", "uid", "dicom_id", "image_id", "case_id", "key")
REPORT_KEYS = ("report", "text")  # a whole report (references and candidates)
PREDICTION_KEYS = ("model_prediction", "prediction", "generated_report", "generated", "output")
SECTION_KEYS = {  # plain names, and the ReXrank data files' names
    "findings": ("findings", "section_findings"),
    "impression": ("impression", "section_impression"),
}
SECTIONS = ("auto", "report", "findings", "impression", "findings+impression")


@dataclass
class Reports:
    """Reports of one file, in file order: `texts[id] -> report`."""

    path: Path
    texts: dict[str, str]
    fmt: str
    section: str
    sha256: str = ""
    notes: list[str] = field(default_factory=list)


def _first(d: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    lowered = {str(k).lower(): k for k in d}
    for k in keys:
        if k in lowered:
            return lowered[k]
    return None


def _text_of(rec: dict[str, Any], section: str, where: str, role: str = "any") -> str:
    """The report text of one record for the chosen section and side.

    A candidate record's model output (`model_prediction`, `prediction`, ...) is scored
    whole; a reference is never read from such a field, so one ReXrank prediction file
    (gold `findings`/`impression` beside `model_prediction`) can serve as both sides.
    """

    def field_text(keys: tuple[str, ...]) -> str | None:
        k = _first(rec, keys)
        if k is None:
            return None
        v = rec[k]
        if v is None or (isinstance(v, float) and v != v):  # JSON null / pandas NaN
            return ""
        if not isinstance(v, str):
            raise InputError(f"{where}: field {k!r} must be text, got {type(v).__name__}")
        return v

    def joined(*parts: str | None) -> str:
        return " ".join(p.strip() for p in parts if p and p.strip())

    if role in ("candidates", "any"):
        t = field_text(PREDICTION_KEYS)
        if t is not None:
            return t
    findings, impression = (
        field_text(SECTION_KEYS["findings"]),
        field_text(SECTION_KEYS["impression"]),
    )
    if section in ("findings", "impression"):
        t = findings if section == "findings" else impression
        if t is None:
            raise InputError(f"{where}: no {section!r} field (fields: {', '.join(map(str, rec))})")
        return t
    if section == "findings+impression":
        if findings is None and impression is None:
            raise InputError(f"{where}: neither 'findings' nor 'impression' field")
        return joined(findings, impression)
    t = field_text(REPORT_KEYS)
    if t is not None:
        return t
    expected = ", ".join(REPORT_KEYS + (PREDICTION_KEYS if role != "references" else ()))
    if section == "report" or (findings is None and impression is None):
        hint = ""
        if role == "references" and _first(rec, PREDICTION_KEYS) is not None:
            hint = "; a model's output field is read only on the --candidates side"
        raise InputError(
            f"{where}: no report text: expected one of {expected}"
            f"{'' if section == 'report' else ' or findings/impression'} "
            f"(fields: {', '.join(map(str, rec))}){hint}"
        )
    return joined(findings, impression)


def _decode(path: Path, data: bytes, fmt: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line_no = data.count(b"\n", 0, e.start) + 1
        line = data.split(b"\n")[line_no - 1].decode("utf-8", errors="replace")
        rid = ""
        if fmt in ("jsonl", "csv"):
            m = re.match(r'\s*"?([^",]+)"?,', line) if fmt == "csv" else None
            if fmt == "jsonl":
                m = re.search(r'"(?:' + "|".join(ID_KEYS) + r')"\s*:\s*"?([^",}]+)', line)
            if m:
                rid = f", record id {m.group(1).strip()!r}"
        raise InputError(
            f"{path}: line {line_no}{rid}: bytes that are not UTF-8 at offset {e.start} "
            f"({data[e.start : e.start + 4]!r}); re-encode the file as UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`)"
        ) from None


def _records_json(path: Path, obj: Any) -> Iterator[tuple[str, dict[str, Any] | str, str]]:
    """(id, record or text, where) from a parsed JSON document."""
    if isinstance(obj, dict):
        # {"predictions": [...]} style wrappers
        if len(obj) == 1 and isinstance(next(iter(obj.values())), list):
            yield from _records_json(path, next(iter(obj.values())))
            return
        for k, v in obj.items():
            where = f"{path}: id {k!r}"
            if isinstance(v, (str, dict)) or v is None:
                yield str(k), v if v is not None else "", where
            else:
                raise InputError(
                    f"{where}: expected a report text or an object, got {type(v).__name__} "
                    "(see `radixpert evaluate --help` for the accepted layouts)"
                )
    elif isinstance(obj, list):
        for i, rec in enumerate(obj):
            where = f"{path}: record {i}"
            if not isinstance(rec, dict):
                raise InputError(
                    f"{where}: expected an object with an id and a report, got {type(rec).__name__}"
                )
            k = _first(rec, ID_KEYS)
            if k is None:
                raise InputError(f"{where}: no id field (expected one of {', '.join(ID_KEYS)})")
            yield str(rec[k]), rec, f"{path}: id {rec[k]!r}"
    else:
        raise InputError(
            f"{path}: expected a JSON object or list at the top level, got {type(obj).__name__}"
        )


def read_reports(
    path: str | Path, section: str = "auto", role: str = "any", split: str | None = None
) -> Reports:
    """Read one report file; see the module docstring for the layouts.

    Args:
        path: .json, .jsonl or .csv file.
        section: "auto" (report field, else findings + impression), "report",
            "findings", "impression" or "findings+impression".
        role: "references" (gold text only), "candidates" (a model-output field first,
            scored whole) or "any".
        split: Keep only the records whose ``split`` field is this (a Study file holds every
            split; ``radixpert generate --split`` answers one). Records without the field are
            an error then; how many were left out is in ``notes``.

    Raises:
        InputError: missing file, undecodable bytes, wrong shape, missing fields,
            duplicate ids — naming the file and the record.
    """
    import hashlib

    if section not in SECTIONS:
        raise InputError(f"unknown section {section!r}; choose from {', '.join(SECTIONS)}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    data = path.read_bytes()
    suffix = path.suffix.lower()
    fmt = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}.get(suffix)
    if fmt is None:
        raise InputError(f"{path}: unknown extension {suffix!r}; use .json, .jsonl or .csv")
    text = _decode(path, data, fmt)
    items: list[tuple[str, dict[str, Any] | str, str]] = []
    if fmt == "json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(
                f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: "
                f"{e.msg}); is it JSON Lines? then name it .jsonl"
            ) from None
        items = list(_records_json(path, obj))
    elif fmt == "jsonl":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise InputError(f"{path}: line {n}: expected an object, got {type(rec).__name__}")
            k = _first(rec, ID_KEYS)
            if k is None:
                raise InputError(
                    f"{path}: line {n}: no id field (expected one of {', '.join(ID_KEYS)})"
                )
            items.append((str(rec[k]), rec, f"{path}: line {n}, id {rec[k]!r}"))
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames:
            raise InputError(f"{path}: empty CSV (no header)")
        id_col = _first({f: None for f in reader.fieldnames}, ID_KEYS)
        if id_col is None:
            raise InputError(
                f"{path}: no id column (header: {', '.join(reader.fieldnames)}; "
                f"expected one of {', '.join(ID_KEYS)})"
            )
        for n, row in enumerate(reader, 2):
            if None in row:
                raise InputError(
                    f"{path}: line {n}, id {row.get(id_col)!r}: more fields than the header has"
                )
            items.append((row[id_col], row, f"{path}: line {n}, id {row[id_col]!r}"))

    notes: list[str] = []
    if split is not None:
        kept = []
        for rid, rec, where in items:
            value = None if isinstance(rec, str) else rec.get("split")
            if value is None:
                raise InputError(f"{where}: no split field (--split {split} needs one per record)")
            if str(value) == split:
                kept.append((rid, rec, where))
        if not kept:
            raise InputError(f"{path}: no record of split {split!r}")
        notes.append(f"split {split!r}: {len(kept)} of {len(items)} records")
        items = kept
    texts: dict[str, str] = {}
    dupes: list[str] = []
    for rid, rec, where in items:
        rid = rid.strip()
        if not rid:
            raise InputError(f"{where}: empty id")
        t = rec if isinstance(rec, str) else _text_of(rec, section, where, role)
        if rid in texts:
            dupes.append(rid)
            continue
        texts[rid] = t
    if dupes:
        raise InputError(
            f"{path}: {len(dupes)} duplicate id(s), e.g. "
            f"{', '.join(map(repr, dupes[:5]))}; ids must be unique"
        )
    if not texts:
        raise InputError(f"{path}: no records")
    return Reports(path, texts, fmt, section, hashlib.sha256(data).hexdigest(), notes)


@dataclass
class Pairs:
    """References and candidates matched by id, in the references' order."""

    ids: list[str]
    references: list[str]
    candidates: list[str]
    only_references: list[str]
    only_candidates: list[str]
    empty_candidates: list[str]


def pair_reports(refs: Reports, cands: Reports, allow_missing: bool = False) -> Pairs:
    """Match by id; ids on one side only are an error unless `allow_missing`.

    Raises:
        InputError: unmatched ids (without allow_missing), no common id, empty references,
            or candidates identical to the references (the same file passed twice).
    """
    only_r = [i for i in refs.texts if i not in cands.texts]
    only_c = [i for i in cands.texts if i not in refs.texts]
    ids = [i for i in refs.texts if i in cands.texts]
    if not ids:
        raise InputError(
            f"no id in common between {refs.path} ({len(refs.texts)} ids, e.g. "
            f"{', '.join(map(repr, list(refs.texts)[:3]))}) and {cands.path} "
            f"({len(cands.texts)} ids, e.g. {', '.join(map(repr, list(cands.texts)[:3]))})"
        )
    if (only_r or only_c) and not allow_missing:
        parts = []
        if only_r:
            parts.append(
                f"{len(only_r)} id(s) only in the references {refs.path} "
                f"(e.g. {', '.join(map(repr, only_r[:5]))})"
            )
        if only_c:
            parts.append(
                f"{len(only_c)} id(s) only in the candidates {cands.path} "
                f"(e.g. {', '.join(map(repr, only_c[:5]))})"
            )
        raise InputError(
            "; ".join(parts) + f"; pass --allow-missing to score the {len(ids)} common ids only"
        )
    empty_refs = [i for i in ids if not refs.texts[i].strip()]
    if empty_refs:
        raise InputError(
            f"{refs.path}: {len(empty_refs)} empty reference report(s), e.g. "
            f"{', '.join(map(repr, empty_refs[:5]))} (section {refs.section!r}); "
            "a reference must have text: choose another --section or drop them"
        )
    references = [refs.texts[i] for i in ids]
    candidates = [cands.texts[i] for i in ids]
    if len(ids) > 1 and all(r.strip() == c.strip() for r, c in zip(references, candidates)):
        raise InputError(
            f"{cands.path}: the candidates equal the references for all {len(ids)} ids; "
            "was the references file passed as --candidates?"
        )
    empty = [i for i, c in zip(ids, candidates) if not c.strip()]
    return Pairs(ids, references, candidates, only_r, only_c, empty)
