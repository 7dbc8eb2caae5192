"""Dataset readers: each dataset's files, exactly as its publisher ships them, into `Study`s.

Every reader is a module with `read(root: Path, **options) -> Iterator[Study | Skip]` (see
ARCHITECTURE.md, "Reader"); `radixpert.data.prepare.READERS` maps dataset names to them.

Irregularities are data, not crashes: a record the reader cannot use is yielded as a `Skip`
(its reason, the file and line, what was wrong), and so is a part of a record that is left out
while the record is kept (``part="image"``, ``"box"``, ``"label"``, ``"view"``, ``"field"``).
`SkipLog` counts them per reason; ``radixpert data prepare`` prints the counts and writes them
beside the output, and ``--strict`` turns the first one into an error naming the file and line.
A broken *file* (missing, unreadable, without a required column) is still an error at once.

    log = SkipLog(strict=False)
    studies = list(log.studies(read(root)))   # the Studies; the Skips counted in log
    log.counts                                # {("study", "no scene graph"): 24, ...}

This package also holds what the readers share: a streaming CSV opener for plain and gzip
files and the parser of the CheXpert label coding (`1.0` / `0.0` / `-1.0` / empty). Their
errors are `radixpert.errors.ReaderError`, whose message names the file and the field.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from radixpert.errors import ReaderError

if TYPE_CHECKING:
    from radixpert.data.study import Study

__all__ = ["PARTS", "Skip", "SkipLog", "iter_csv", "parse_label", "require_columns"]

Part = Literal["study", "image", "box", "label", "view", "field"]
PARTS: tuple[str, ...] = ("study", "image", "box", "label", "view", "field")


@dataclasses.dataclass(frozen=True)
class Skip:
    """Something a reader left out, with why and where.

    Attributes:
        reason: Short and stable, the key it is counted under ("no scene graph",
            "image without a view entry"); details go in ``detail``.
        where: The file and line, or the file and record id.
        detail: What was found (the value, the lengths, ...).
        part: ``"study"``: the whole record is left out; any other part (``"image"``,
            ``"box"``, ``"label"``, ``"view"``, ``"field"``): the record is kept without it.
    """

    reason: str
    where: str
    detail: str = ""
    part: Part = "study"

    def __post_init__(self) -> None:
        if self.part not in PARTS:
            raise ValueError(f"Skip.part {self.part!r}: expected one of {', '.join(PARTS)}")

    def message(self) -> str:
        """One line naming the place, the reason and the detail."""
        what = "record skipped" if self.part == "study" else f"{self.part} left out"
        return f"{self.where}: {what}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


_PLURAL = {"box": "boxes"}


class SkipLog:
    """Counts the `Skip`s of a read, per (part, reason), with the first few places of each.

    Args:
        strict: Raise ``ReaderError`` (the skip's message) at the first skip instead.
        examples: How many places to keep per reason.
    """

    def __init__(self, strict: bool = False, examples: int = 5) -> None:
        self.strict = strict
        self.counts: Counter[tuple[str, str]] = Counter()
        self.examples: dict[tuple[str, str], list[str]] = {}
        self._keep = examples

    def add(self, skip: Skip) -> None:
        """Counts ``skip`` (raises in strict mode)."""
        if self.strict:
            raise ReaderError(skip.message() + " [--strict]")
        key = (skip.part, skip.reason)
        self.counts[key] += 1
        places = self.examples.setdefault(key, [])
        if len(places) < self._keep:
            places.append(skip.message())

    def studies(self, items: Iterable[Study | Skip]) -> Iterator[Study]:
        """The Studies of a reader's stream; its Skips are counted here."""
        for item in items:
            if isinstance(item, Skip):
                self.add(item)
            else:
                yield item

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def skipped(self, part: str = "study") -> int:
        """How many of ``part`` were left out."""
        return sum(n for (p, _), n in self.counts.items() if p == part)

    def to_dict(self) -> dict[str, Any]:
        """``{"skipped": {part: {reason: n}}, "examples": {part: {reason: [...]}}}``."""
        skipped: dict[str, dict[str, int]] = {}
        examples: dict[str, dict[str, list[str]]] = {}
        for (part, reason), n in sorted(self.counts.items()):
            skipped.setdefault(part, {})[reason] = n
            examples.setdefault(part, {})[reason] = self.examples[(part, reason)]
        return {"skipped": skipped, "examples": examples}

    def summary(self) -> list[str]:
        """Lines for a person: each part and reason with its count and a first place."""
        lines = []
        for (part, reason), n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            what = (
                "records skipped"
                if part == "study"
                else f"{_PLURAL.get(part, part + 's')} left out"
            )
            lines.append(f"  {n:>8,}  {what}: {reason}  (e.g. {self.examples[(part, reason)][0]})")
        return lines


@contextmanager
def _open_text(path: Path) -> Iterator[io.TextIOBase]:
    # newline="" lets the csv module see quoted newlines (MIMIC and CheXpert never need it,
    # but a report column in a derived file might).
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            yield f
    else:
        with path.open(encoding="utf-8", newline="") as f:
            yield f


def iter_csv(path: Path, required: Sequence[str] = ()) -> Iterator[tuple[int, dict[str, str]]]:
    """Stream a CSV (plain or `.gz`) as `(line_number, row)` pairs, one row at a time.

    Args:
        path: the CSV file.
        required: column names that must be in the header; columns are always selected by
            name, because publishers and mirrors differ in column order.

    Yields:
        The 1-based line number of the row in the file (the header is line 1) and the row.

    Raises:
        ReaderError: the file is missing, not valid gzip/UTF-8, lacks a required column, or a
            row has more or fewer fields than the header.
    """
    if not path.is_file():
        raise ReaderError(f"{path}: no such file")
    try:
        with _open_text(path) as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ReaderError(f"{path}: empty file (no header row)")
            # A UTF-8 byte-order mark would otherwise become part of the first column's name.
            header[0] = header[0].lstrip("\ufeff")
            require_columns(path, header, required)
            width = len(header)
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if len(row) != width:
                    raise ReaderError(
                        f"{path}: line {line}: {len(row)} fields but the header has {width}"
                    )
                yield line, dict(zip(header, row))
    except (OSError, UnicodeDecodeError, EOFError, csv.Error) as e:
        # gzip.BadGzipFile is an OSError; a truncated .gz ends in EOFError.
        raise ReaderError(f"{path}: cannot be read as CSV ({type(e).__name__}: {e})") from None


def require_columns(path: Path, header: Sequence[str], required: Sequence[str]) -> None:
    """Raise ReaderError naming `path` and every required column missing from `header`."""
    missing = [c for c in required if c not in header]
    if missing:
        raise ReaderError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"header is {', '.join(header)}"
        )


_LABEL_CODES = {"1.0": 1, "0.0": 0, "-1.0": -1, "1": 1, "0": 0, "-1": -1, "": None}


def parse_label(value: str, where: str, column: str) -> int | None:
    """Parse one CheXpert-coded label cell: `1.0` positive, `0.0` negative, `-1.0` uncertain,
    empty = not mentioned (kept as None, which is not the same as negative).

    Args:
        value: the cell text.
        where: the file and line, for the error message.
        column: the column (observation) name, for the error message.

    Raises:
        ReaderError: any other value, e.g. `2.0`.
    """
    try:
        return _LABEL_CODES[value.strip()]
    except KeyError:
        raise ReaderError(
            f"{where}: column {column!r} = {value!r}, expected 1.0, 0.0, -1.0 or empty"
        ) from None
