"""Per-text cache of model outputs, keyed by content hash, under RADIXPERT_HOME.

Model-based metrics encode each distinct text once: references shared by many models,
and repeated runs, come from the cache. Keys include the metric's settings (checkpoint,
layer, ...) so a change of settings never reads stale values.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from radixpert.paths import cache_dir


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (weights, vocabularies), remembered per (path, size, mtime) for the
    life of the process, so cache scopes can name the exact checkpoint cheaply."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def files_fingerprint(folder: Path, names: Iterable[str]) -> str:
    """One short hash over those of `names` that exist in `folder` (name and content)."""
    parts = [f"{n}:{file_sha256(folder / n)}" for n in names if (folder / n).is_file()]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


class TextCache:
    """A small SQLite store: (namespace, settings, text hash) -> JSON value.

    Args:
        namespace: the metric, e.g. "chexbert".
        settings: anything that changes the value (checkpoint hash, layer, max length).
        path: database file; default `$RADIXPERT_HOME/cache/metrics/<namespace>.sqlite`.
        enabled: False makes every lookup miss and every store a no-op.
    """

    def __init__(
        self,
        namespace: str,
        settings: dict[str, Any],
        path: Path | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.scope = hashlib.sha256(
            json.dumps(settings, sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        self.path = path or cache_dir("metrics") / f"{namespace}.sqlite"
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS kv (scope TEXT, key TEXT, value TEXT, "
                "PRIMARY KEY (scope, key))"
            )
        return self._db

    def get_many(self, texts: Iterable[str]) -> dict[str, Any]:
        """Cached values of the texts that have one, keyed by text."""
        if not self.enabled:
            return {}
        by_key = {text_key(t): t for t in texts}
        out: dict[str, Any] = {}
        keys = list(by_key)
        db = self._conn()
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT key, value FROM kv WHERE scope = ? AND key IN ({marks})",
                [self.scope, *chunk],
            ).fetchall()
            for k, v in rows:
                out[by_key[k]] = json.loads(v)
        return out

    def put_many(self, values: dict[str, Any]) -> None:
        if not self.enabled or not values:
            return
        db = self._conn()
        with db:
            db.executemany(
                "INSERT OR REPLACE INTO kv VALUES (?, ?, ?)",
                [(self.scope, text_key(t), json.dumps(v)) for t, v in values.items()],
            )

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
