"""Writing outputs so that no reader ever sees half a file: the package's one set of writers.

    with atomic_write("results.json") as f:      # a temporary sibling, renamed on success
        json.dump(payload, f)
    write_json("position.json", {"step": 10})     # the same, for one JSON document
    with atomic_dir("run/bundle") as tmp:         # a whole folder, swapped in by rename
        model.save_pretrained(tmp)

A failure inside the block (an exception, Ctrl-C) removes the temporary file or folder and
leaves whatever was at the target before untouched. A finished file gets the mode a plain
``open`` would have given it, not ``mkstemp``'s private 0o600.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_dir", "atomic_write", "default_file_mode", "write_bytes", "write_json"]


def default_file_mode() -> int:
    """The mode a plain ``open`` would give a new file (0o666 less the umask).

    ``tempfile.mkstemp`` makes 0o600 files; an atomically written output gets this mode
    instead, so it is as readable as any other file the user writes.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(
    path: str | Path, mode: str = "w", *, fsync: bool = True, **kwargs: Any
) -> Iterator[Any]:
    """Opens a temporary file beside ``path``; moves it into place only if the block succeeds.

    Args:
        path: The file to write; its folder is created.
        mode: ``open`` mode, ``"w"`` (text, the default) or ``"wb"``.
        fsync: Flush to disk before the rename, so that a crash of the machine cannot leave
            an empty file under the final name. Off only for many small files that can be
            made again (phantom images).
        **kwargs: Passed to ``open`` (``encoding``, ``newline``, ...); text defaults to UTF-8.

    Yields:
        The open temporary file.
    """
    path = Path(path)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, payload: Mapping[str, Any] | list[Any], indent: int = 2) -> Path:
    """Writes ``payload`` as indented JSON (and a final newline) to ``path``, atomically."""
    with atomic_write(path) as f:
        json.dump(payload, f, indent=indent)
        f.write("\n")
    return Path(path)


def write_bytes(path: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    """Writes ``data`` to ``path``, atomically (see ``atomic_write`` for ``fsync``)."""
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)
    return Path(path)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yields a temporary sibling folder of ``path``; on success it replaces ``path`` by rename.

    An existing ``path`` is moved aside first and deleted only after the new folder is in
    place, so at every moment the name holds either the old folder or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
