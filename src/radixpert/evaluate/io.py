"""Reading report files for evaluation.

Accepted inputs (format from the extension, `.json`, `.jsonl`, `.csv`):

* ReXrank-style JSON: an object `{id: report}` or `{id: {...}}` as ReXrank ships its test
  sets (`report`, `section_findings`, `section_impression`) and its prediction files (gold
  `findings` / `impression` beside `model_prediction`), or a list of records with an id.
* JSONL: one such record per line.
* CSV: an id column (`id`, `study_id`, `uid`, ...) and a report column (`report`, or
  `findings` / `impression`).

Columns of other names are chosen with `id_column` / `text_column` (`--id-column`,
`--text-column`); a named column that a file lacks is an error listing the columns it has.
Ids are matched after Unicode NFC normalisation (a decomposed "é" meets a composed one) and
keep the spelling of their file in every output.

Every problem is an `InputError` naming the file, and the line or id where it applies.
"""

from __future__ import annotations

import csv
import io
import json
import re
import unicodedata
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
REXRANK_SECTION = "findings+impression-rexrank"
SECTIONS = ("auto", "report", "findings", "impression", "findings+impression", REXRANK_SECTION)


def rexrank_reference(findings: object, impression: object) -> str:
    """The findings + impression reference exactly as ReXrank's evaluation script builds it
    (rajpurkarlab/ReXrank, example_files/evaluation_script.md):
    ``f"Findings: {findings} Impression: {impression}"``, the values as shipped, a missing
    (None / NaN) section written as Python's ``None``."""

    def shown(v: object) -> object:
        return None if isinstance(v, float) and v != v else v

    return f"Findings: {shown(findings)} Impression: {shown(impression)}"


@dataclass
class Reports:
    """Reports of one file, in file order: `texts[id] -> report`, ids as the file spells them.

    `keys[nfc(id)] -> id` matches ids across files whatever their Unicode normal form.
    """

    path: Path
    texts: dict[str, str]
    fmt: str
    section: str
    sha256: str = ""
    notes: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys = {nfc(i): i for i in self.texts}


def nfc(rid: str) -> str:
    """The form ids are compared in: Unicode NFC."""
    return unicodedata.normalize("NFC", rid)


def _first(d: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    lowered = {str(k).lower(): k for k in d}
    for k in keys:
        if k in lowered:
            return lowered[k]
    return None


def _text_of(
    rec: dict[str, Any],
    section: str,
    where: str,
    role: str = "any",
    text_column: str | None = None,
) -> str:
    """The report text of one record for the chosen section and side.

    A candidate record's model output (`model_prediction`, `prediction`, ...) is scored
    whole; a reference is never read from such a field, so one ReXrank prediction file
    (gold `findings`/`impression` beside `model_prediction`) can serve as both sides.
    A `text_column` is read as named, on either side, and nothing else is.
    """

    def field_text(keys: tuple[str, ...]) -> str | None:
        k = keys[0] if text_column is not None else _first(rec, keys)
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

    if text_column is not None:
        if text_column not in rec:
            raise InputError(
                f"{where}: no {text_column!r} field (--text-column; fields: "
                f"{', '.join(map(str, rec))})"
            )
        t = field_text((text_column,))
        return "" if t is None else t
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
    if section == REXRANK_SECTION:
        if findings is None and impression is None:
            raise InputError(f"{where}: neither 'findings' nor 'impression' field")
        if role == "references":

            def shipped(keys: tuple[str, ...]) -> object:
                k = _first(rec, keys)
                return None if k is None else rec[k]

            return rexrank_reference(
                shipped(SECTION_KEYS["findings"]), shipped(SECTION_KEYS["impression"])
            )
        # a sectioned model output: the same labels, a missing section left out
        labelled = [f"Findings: {findings.strip()}" if findings and findings.strip() else ""]
        labelled.append(
            f"Impression: {impression.strip()}" if impression and impression.strip() else ""
        )
        return joined(*labelled)
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


def _id_of(rec: dict[str, Any], id_column: str | None, where: str) -> str | None:
    """The id field's name in a record: `id_column` exactly, else the first of ID_KEYS."""
    if id_column is None:
        k = _first(rec, ID_KEYS)
        if k is None:
            raise InputError(f"{where}: no id field (expected one of {', '.join(ID_KEYS)})")
        return k
    if id_column not in rec:
        raise InputError(
            f"{where}: no {id_column!r} field (--id-column; fields: {', '.join(map(str, rec))})"
        )
    return id_column


def _records_json(
    path: Path, obj: Any, id_column: str | None = None
) -> Iterator[tuple[str, dict[str, Any] | str, str]]:
    """(id, record or text, where) from a parsed JSON document."""
    if isinstance(obj, dict):
        # {"predictions": [...]} style wrappers
        if _is_wrapper(obj):
            yield from _records_json(path, next(iter(obj.values())), id_column)
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
            k = _id_of(rec, id_column, where)
            yield str(rec[k]), rec, f"{path}: id {rec[k]!r}"
    else:
        raise InputError(
            f"{path}: expected a JSON object or list at the top level, got {type(obj).__name__}"
        )


def read_reports(
    path: str | Path,
    section: str = "auto",
    role: str = "any",
    split: str | None = None,
    id_column: str | None = None,
    text_column: str | None = None,
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
        id_column: The id's field or column, by its exact name, instead of the usual names.
            In the ``{id: report}`` layout the keys are the ids (said in ``notes``).
        text_column: The report's field or column, by its exact name, on either side;
            ``section`` then does not apply.

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
        items = list(_records_json(path, obj, id_column))
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
            k = _id_of(rec, id_column, f"{path}: line {n}")
            items.append((str(rec[k]), rec, f"{path}: line {n}, id {rec[k]!r}"))
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames:
            raise InputError(f"{path}: empty CSV (no header)")
        header = ", ".join(reader.fieldnames)
        for flag, name in (("--id-column", id_column), ("--text-column", text_column)):
            if name is not None and name not in reader.fieldnames:
                raise InputError(f"{path}: no column {name!r} ({flag}; header: {header})")
        id_col = id_column or _first({f: None for f in reader.fieldnames}, ID_KEYS)
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
    if fmt == "json" and items and isinstance(obj, dict) and not _is_wrapper(obj):
        unused = [
            f"{flag} {name!r}"
            for flag, name in (("--id-column", id_column), ("--text-column", text_column))
            if name is not None and (flag == "--id-column" or isinstance(items[0][1], str))
        ]
        if unused:
            notes.append(f"{' and '.join(unused)} not used: the ids are the object's keys")
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
    keys: dict[str, str] = {}
    dupes: list[str] = []
    for rid, rec, where in items:
        rid = rid.strip()
        if not rid:
            raise InputError(f"{where}: empty id")
        t = rec if isinstance(rec, str) else _text_of(rec, section, where, role, text_column)
        key = nfc(rid)
        if key in keys:
            first = keys[key]
            dupes.append(rid if first == rid else f"{rid} (also spelled {first!r})")
            continue
        keys[key] = rid
        texts[rid] = t
    if dupes:
        raise InputError(
            f"{path}: {len(dupes)} duplicate id(s), e.g. "
            f"{', '.join(map(repr, dupes[:5]))}; ids must be unique"
        )
    if not texts:
        raise InputError(f"{path}: no records")
    return Reports(path, texts, fmt, section, hashlib.sha256(data).hexdigest(), notes, keys)


def _is_wrapper(obj: dict[str, Any]) -> bool:
    """`{"predictions": [...]}`: one key holding the list of records."""
    return len(obj) == 1 and isinstance(next(iter(obj.values())), list)


@dataclass
class Pairs:
    """References and candidates matched by id, in the references' order.

    Ids are spelled as in the references file (on one side only: as in their own file).
    """

    ids: list[str]
    references: list[str]
    candidates: list[str]
    only_references: list[str]
    only_candidates: list[str]
    empty_candidates: list[str]
    skipped_empty_references: list[str] = field(default_factory=list)


def pair_reports(
    refs: Reports,
    cands: Reports,
    allow_missing: bool = False,
    skip_empty_references: bool = False,
) -> Pairs:
    """Match by id (compared in NFC); ids on one side only are an error unless `allow_missing`.

    Args:
        refs: the references.
        cands: the candidates.
        allow_missing: score the common ids when some are on one side only.
        skip_empty_references: leave out the pairs whose reference is blank (listed in
            `Pairs.skipped_empty_references`) instead of refusing them.

    Raises:
        InputError: unmatched ids (without allow_missing), no common id, empty references
            (without skip_empty_references), or candidates identical to the references (the
            same file passed twice).
    """
    only_r = [i for k, i in refs.keys.items() if k not in cands.keys]
    only_c = [i for k, i in cands.keys.items() if k not in refs.keys]
    common = [k for k in refs.keys if k in cands.keys]
    if not common:
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
            "; ".join(parts) + f"; pass --allow-missing to score the {len(common)} common ids only"
        )
    empty_refs = [refs.keys[k] for k in common if not refs.texts[refs.keys[k]].strip()]
    if empty_refs and not skip_empty_references:
        raise InputError(
            f"{refs.path}: {len(empty_refs)} empty reference report(s), e.g. "
            f"{', '.join(map(repr, empty_refs[:5]))} (section {refs.section!r}); "
            "a reference must have text: choose another --section, drop them, or pass "
            "--skip-empty-references to leave them out (counted)"
        )
    skipped = set(empty_refs)
    kept = [k for k in common if refs.keys[k] not in skipped]
    if not kept:
        raise InputError(
            f"{refs.path}: all {len(common)} references of the common ids are empty "
            f"(section {refs.section!r}); nothing to score"
        )
    ids = [refs.keys[k] for k in kept]
    references = [refs.texts[i] for i in ids]
    candidates = [cands.texts[cands.keys[k]] for k in kept]
    if len(ids) > 1 and all(r.strip() == c.strip() for r, c in zip(references, candidates)):
        raise InputError(
            f"{cands.path}: the candidates equal the references for all {len(ids)} ids; "
            "was the references file passed as --candidates?"
        )
    empty = [i for i, c in zip(ids, candidates) if not c.strip()]
    return Pairs(ids, references, candidates, only_r, only_c, empty, empty_refs)
