"""Dataset readers: each dataset's files, exactly as its publisher ships them, into `Study`s.

Every reader is a module with `read(root: Path, **options) -> Iterator[Study]` (see
ARCHITECTURE.md, "Reader"); `radixpert.data.prepare.READERS` maps dataset names to them.
This package also holds what the readers share: a streaming CSV opener for plain and gzip
files and the parser of the CheXpert label coding (`1.0` / `0.0` / `-1.0` / empty). Their
errors are `radixpert.errors.ReaderError`, whose message names the file and the field.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from radixpert.errors import ReaderError

__all__ = ["iter_csv", "parse_label", "require_columns"]


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
