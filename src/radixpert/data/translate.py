"""Machine translation of report text with a local MarianMT model, cached per text.

The papers that train on PadChest translate its Spanish reports to English with MarianMT
(``Helsinki-NLP/opus-mt-es-en``). This module does the same, locally: the model is loaded by
its hub id from the local Hugging Face cache only (``local_files_only``: no outside service is
ever called), texts are translated in batches, and every translation is stored in
``$RADIXPERT_HOME/cache/translations/translations.sqlite`` under the SHA-256 of model id and
text, so a second run (or a report repeated in the dataset) never reaches the model.

    translator = Translator("Helsinki-NLP/opus-mt-es-en", batch_size=32)
    english = translator(["cardiomegalia .", "sin hallazgos ."])   # same order as given
    translator.stats       # {"texts": 2, "cached": 0, "translated": 2, "batches": 1, ...}
    translator.marking()   # what a Study records about the translation

Fetch the model once, with network, before running offline:
``hf download Helsinki-NLP/opus-mt-es-en``. Install ``sacremoses`` for the Moses punctuation
normalisation the OPUS-MT models were trained with (MarianTokenizer warns without it).
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from radixpert.errors import MissingDependency
from radixpert.paths import cache_dir

__all__ = ["DEFAULT_MODEL", "Translator", "cache_path", "translation_key"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "Helsinki-NLP/opus-mt-es-en"
"""The Spanish -> English MarianMT checkpoint the papers name."""


def cache_path() -> Path:
    """The translation cache: ``$RADIXPERT_HOME/cache/translations/translations.sqlite``."""
    return cache_dir("translations") / "translations.sqlite"


def translation_key(model: str, text: str) -> str:
    """SHA-256 of the model id and the text (NUL-separated): the cache key of one translation."""
    return hashlib.sha256(f"{model}\0{text}".encode()).hexdigest()


def _local_folder(model: str) -> str:
    """The folder of ``model``: itself when it is one, else its snapshot in the local hub cache.

    Raises:
        MissingDependency: Neither (the message says how to fetch it).
    """
    if Path(model).is_dir():
        return model
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    try:
        return snapshot_download(model, local_files_only=True)
    except (OSError, HFValidationError) as e:  # not cached; not a hub id (nor a folder)
        raise MissingDependency(
            f"translation model {model!r} is neither a folder nor in the local Hugging Face "
            f"cache (HF_HOME); fetch it once with `hf download {model}` "
            f"({type(e).__name__})"
        ) from None


class Translator:
    """Translates texts with a local MarianMT checkpoint, in batches, through a cache.

    Args:
        model: Hub id (read from the local hub cache only) or a local folder.
        batch_size: Texts per ``generate`` call.
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        cache: The SQLite cache file; default ``cache_path()``.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        batch_size: int = 32,
        device: str = "auto",
        cache: Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"translation batch size must be at least 1, got {batch_size}")
        self.model_id, self.batch_size, self.device = model, int(batch_size), device
        self.cache = Path(cache) if cache is not None else cache_path()
        self.stats: Counter[str] = Counter()
        self._model: Any = None
        self._tokenizer: Any = None

    def marking(self) -> dict[str, str]:
        """What a translated record keeps about how its text was made."""
        return {
            "method": "machine translation",
            "engine": "MarianMT (transformers)",
            "model": self.model_id,
            "source_language": "es",
            "target_language": "en",
        }

    def __call__(self, texts: Iterable[str]) -> list[str]:
        """The translations of ``texts``, in order; each distinct text is translated once."""
        texts = list(texts)
        distinct = list(dict.fromkeys(texts))
        self.stats["texts"] += len(distinct)
        done = self._cached(distinct)
        self.stats["cached"] += len(done)
        missing = [t for t in distinct if t not in done]
        # Similar lengths in one batch pad less; the order of the output does not depend on it.
        missing.sort(key=len)
        for start in range(0, len(missing), self.batch_size):
            batch = missing[start : start + self.batch_size]
            out = self._translate(batch)
            self._store(dict(zip(batch, out, strict=True)))
            done.update(zip(batch, out, strict=True))
            self.stats["translated"] += len(batch)
            self.stats["batches"] += 1
            if self.stats["batches"] % 50 == 0:
                logger.info("translated %d of %d texts", start + len(batch), len(missing))
        return [done[t] for t in texts]

    # ------------------------------------------------------------------ cache

    def _connect(self) -> sqlite3.Connection:
        self.cache.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.cache)
        db.execute(
            "CREATE TABLE IF NOT EXISTS translations "
            "(key TEXT PRIMARY KEY, model TEXT, source TEXT, target TEXT)"
        )
        return db

    def _cached(self, texts: Sequence[str]) -> dict[str, str]:
        by_key = {translation_key(self.model_id, t): t for t in texts}
        keys, found = list(by_key), {}
        db = self._connect()
        try:
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT key, target FROM translations WHERE key IN ({marks})", chunk
                ).fetchall()
                found.update((by_key[k], v) for k, v in rows)
        finally:
            db.close()
        return found

    def _store(self, pairs: dict[str, str]) -> None:
        db = self._connect()
        try:
            with db:
                db.executemany(
                    "INSERT OR REPLACE INTO translations VALUES (?, ?, ?, ?)",
                    [
                        (translation_key(self.model_id, s), self.model_id, s, t)
                        for s, t in pairs.items()
                    ],
                )
        finally:
            db.close()

    # ------------------------------------------------------------------ model

    def _load(self) -> None:
        from radixpert._optional import require

        require("torch", "transformers", "sentencepiece", purpose="MarianMT translation")
        import torch
        from transformers import MarianMTModel, MarianTokenizer

        folder = _local_folder(self.model_id)
        self._tokenizer = MarianTokenizer.from_pretrained(folder)
        model = MarianMTModel.from_pretrained(folder)
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._model = model.to(device).eval()
        logger.info("translation model %s loaded on %s", self.model_id, device)

    def _translate(self, batch: list[str]) -> list[str]:
        import torch

        if self._model is None:
            self._load()
        tok, model = self._tokenizer, self._model
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True)
        limit = tok.model_max_length
        lengths = enc["attention_mask"].sum(dim=1)
        self.stats["truncated"] += int((lengths >= limit).sum())
        enc = {k: v.to(model.device) for k, v in enc.items()}
        # A guard against runaway repetition: no translation is longer than twice its source
        # (plus a margin); the model's own generation settings apply otherwise.
        budget = min(limit, 2 * int(lengths.max()) + 16)
        with torch.inference_mode():
            out = model.generate(**enc, max_length=budget)
        return [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
