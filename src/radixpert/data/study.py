"""`Study` records: the one format between the dataset readers and everything after them.

One record per imaging study, for chest X-ray and other modalities alike (ARCHITECTURE.md,
"data -> instruct"). Written as JSONL or Parquet and read back losslessly:

    write_studies(studies, "train.jsonl")      # or .parquet
    for s in read_studies("train.jsonl"): ...

A malformed record is a `StudyError` naming the file, the line (or row) and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from radixpert.errors import StudyError
from radixpert.io import atomic_write
from radixpert.vocab import LABEL_VALUES, OBSERVATIONS

REPORT_SOURCES = ("original", "synthesised-from-labels", "phantom", "translated")


@dataclass
class Image:
    """One image of a study: path relative to the dataset root (or absolute), and its view
    (`PA`, `AP`, `LATERAL`, `LL`, ... as the publisher names it; "" when unknown)."""

    path: str
    view: str = ""


@dataclass
class Box:
    """A box in 0–1 image coordinates on `images[image]`, with its label and phrase."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float
    phrase: str = ""
    image: int = 0

    def validate(self, where: str) -> None:
        for name in ("x1", "y1", "x2", "y2"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise StudyError(f"{where}: box field {name!r} = {v!r} is not in [0, 1]")
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise StudyError(f"{where}: box {self.label!r} has x2 < x1 or y2 < y1")


@dataclass
class Study:
    """One imaging study. Text fields are "" when absent; `labels` holds all 14 CheXpert
    observations (1 / 0 / -1 / None = not mentioned), or is empty when the dataset has none;
    `report_source` marks text that was synthesised (from labels, or for a phantom)."""

    id: str
    dataset: str
    split: str = ""
    patient_id: str = ""
    images: list[Image] = field(default_factory=list)
    indication: str = ""
    comparison: str = ""
    findings: str = ""
    impression: str = ""
    labels: dict[str, int | None] = field(default_factory=dict)
    boxes: list[Box] = field(default_factory=list)
    language: str = "en"
    modality: str = "CXR"
    report_source: str = "original"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = "") -> Study:
        """Check field types and values; returns self. Raises StudyError naming the field."""
        where = where or f"study {self.id!r}"
        if not isinstance(self.id, str) or not self.id:
            raise StudyError(f"{where}: field 'id' must be a non-empty string")
        for name in (
            "dataset",
            "split",
            "patient_id",
            "indication",
            "comparison",
            "findings",
            "impression",
            "language",
            "modality",
        ):
            if not isinstance(getattr(self, name), str):
                raise StudyError(f"{where}: field {name!r} must be a string")
        if self.report_source not in REPORT_SOURCES:
            raise StudyError(
                f"{where}: field 'report_source' = {self.report_source!r}, "
                f"expected one of {', '.join(REPORT_SOURCES)}"
            )
        if self.labels and set(self.labels) != set(OBSERVATIONS):
            missing = [o for o in OBSERVATIONS if o not in self.labels]
            extra = [k for k in self.labels if k not in OBSERVATIONS]
            raise StudyError(
                f"{where}: labels must hold all 14 observations (null = not "
                f"mentioned) or none; missing {missing}, unknown {extra}"
            )
        for k, v in self.labels.items():
            if k not in OBSERVATIONS:
                raise StudyError(f"{where}: labels: unknown observation {k!r}")
            if v not in LABEL_VALUES or isinstance(v, bool):
                raise StudyError(f"{where}: labels[{k!r}] = {v!r}, expected 1, 0, -1 or null")
        for i, b in enumerate(self.boxes):
            b.validate(f"{where}: boxes[{i}]")
            if self.images and not 0 <= b.image < len(self.images):
                raise StudyError(
                    f"{where}: boxes[{i}].image = {b.image} but the study has "
                    f"{len(self.images)} image(s)"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "") -> Study:
        """Build and validate a Study from a dict (as written by `to_dict`)."""
        where = where or f"record {d.get('id')!r}"
        if not isinstance(d, dict):
            raise StudyError(f"{where}: expected an object, got {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise StudyError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        for required in ("id", "dataset"):
            if required not in d:
                raise StudyError(f"{where}: missing field {required!r}")
        try:
            images = [Image(**i) for i in d.get("images") or []]
            boxes = [Box(**b) for b in d.get("boxes") or []]
        except TypeError as e:
            raise StudyError(f"{where}: images/boxes: {e}") from None
        rest = {k: v for k, v in d.items() if k not in ("images", "boxes")}
        rest["labels"] = dict(rest.get("labels") or {})
        rest["extra"] = dict(rest.get("extra") or {})
        return cls(images=images, boxes=boxes, **rest).validate(where)


def _parquet_schema() -> Any:
    import pyarrow as pa

    label_struct = pa.struct([(o, pa.int8()) for o in OBSERVATIONS])
    return pa.schema([
        ("id", pa.string()), ("dataset", pa.string()), ("split", pa.string()),
        ("patient_id", pa.string()),
        ("images", pa.list_(pa.struct([("path", pa.string()), ("view", pa.string())]))),
        ("indication", pa.string()), ("comparison", pa.string()), ("findings", pa.string()),
        ("impression", pa.string()),
        ("labels", label_struct), ("has_labels", pa.bool_()),
        ("boxes", pa.list_(pa.struct([
            ("label", pa.string()), ("x1", pa.float64()), ("y1", pa.float64()),
            ("x2", pa.float64()), ("y2", pa.float64()), ("phrase", pa.string()),
            ("image", pa.int32())]))),
        ("language", pa.string()), ("modality", pa.string()), ("report_source", pa.string()),
        ("extra", pa.string()),  # JSON: dataset-specific fields of any shape
    ])  # fmt: skip


def write_studies(studies: Iterable[Study], path: str | Path, row_group: int = 5000) -> int:
    """Write records to .jsonl or .parquet atomically, streaming; returns how many."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        n = 0
        with atomic_write(path) as f:
            for s in studies:
                f.write(json.dumps(s.validate().to_dict(), ensure_ascii=False) + "\n")
                n += 1
        return n
    if suffix == ".parquet":
        from radixpert._optional import require

        require("pyarrow", purpose="writing Parquet")
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _parquet_schema()
        n = 0
        rows: list[dict[str, Any]] = []
        with atomic_write(path, "wb") as f, pq.ParquetWriter(f, schema) as writer:
            # Row groups of `row_group` records: memory stays bounded however many studies.
            for s in studies:
                d = s.validate().to_dict()
                d["has_labels"] = bool(d["labels"])
                d["labels"] = {o: d["labels"].get(o) for o in OBSERVATIONS}
                d["extra"] = json.dumps(d["extra"], ensure_ascii=False, sort_keys=True)
                rows.append(d)
                n += 1
                if len(rows) >= row_group:
                    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                    rows = []
            if rows or n == 0:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
        return n
    raise StudyError(f"{path}: unknown extension {suffix!r}; use .jsonl or .parquet")


def read_studies(path: str | Path) -> Iterator[Study]:
    """Stream records from .jsonl (line by line) or .parquet (row group by row group)."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as e:
                    raise StudyError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
                yield Study.from_dict(d, f"{path}: line {n}")
        return
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        row = 0
        for g in range(pf.num_row_groups):
            for d in pf.read_row_group(g).to_pylist():
                row += 1
                has = d.pop("has_labels")
                d["labels"] = d["labels"] if has else {}
                d["extra"] = json.loads(d["extra"] or "{}")
                yield Study.from_dict(d, f"{path}: row {row}")
        return
    raise StudyError(f"{path}: unknown extension {suffix!r}; use .jsonl or .parquet")
