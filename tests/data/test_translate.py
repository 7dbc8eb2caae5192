"""MarianMT translation: batches, the per-text cache under RADIXPERT_HOME, and the real loading
path on a tiny Helsinki-NLP/opus-mt-es-en (tests/hub/translation.py) read by its hub id."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from radixpert.data.translate import DEFAULT_MODEL, Translator, cache_path, translation_key
from radixpert.errors import MissingDependency

TEXTS = [
    "cardiomegalia .",
    "sin hallazgos patologicos .",
    "derrame pleural derecho .",
    "cardiomegalia .",  # repeated: translated once
    "nodulo pulmonar en lobulo superior derecho .",
    "escoliosis dorsal .",
]


class Fake(Translator):
    """A Translator whose model upper-cases, recording the batches it is given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[list[str]] = []

    def _translate(self, batch):
        self.batches.append(list(batch))
        return [t.upper() for t in batch]


def test_batches_order_and_repeats(tmp_path):
    tr = Fake(batch_size=2, cache=tmp_path / "t.sqlite")
    assert tr(TEXTS) == [t.upper() for t in TEXTS]
    assert [len(b) for b in tr.batches] == [2, 2, 1]  # five distinct texts
    assert sorted(t for b in tr.batches for t in b) == sorted(set(TEXTS))
    assert dict(tr.stats) == {"texts": 5, "cached": 0, "translated": 5, "batches": 3}


def test_second_run_reads_the_cache(tmp_path):
    cache = tmp_path / "t.sqlite"
    Fake(batch_size=4, cache=cache)(TEXTS[:3])
    again = Fake(batch_size=4, cache=cache)
    assert again(TEXTS) == [t.upper() for t in TEXTS]
    assert again.batches == [
        ["escoliosis dorsal .", "nodulo pulmonar en lobulo superior derecho ."]
    ]
    assert (again.stats["cached"], again.stats["translated"]) == (3, 2)
    other_model = Fake("Helsinki-NLP/opus-mt-ROMANCE-en", cache=cache)
    other_model(TEXTS[:1])
    assert other_model.stats["cached"] == 0  # the model id is part of the key


def test_key_and_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIXPERT_HOME", str(tmp_path))
    assert cache_path() == tmp_path / "cache" / "translations" / "translations.sqlite"
    expected = hashlib.sha256(f"{DEFAULT_MODEL}\0cardiomegalia .".encode()).hexdigest()
    assert translation_key(DEFAULT_MODEL, "cardiomegalia .") == expected
    Fake()(["cardiomegalia ."])
    with sqlite3.connect(cache_path()) as db:
        rows = db.execute("SELECT key, model, source, target FROM translations").fetchall()
    assert rows == [(expected, DEFAULT_MODEL, "cardiomegalia .", "CARDIOMEGALIA .")]


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        Translator(batch_size=0)


def test_a_model_not_in_the_cache_is_a_clear_error(tmp_path):
    tr = Translator("Helsinki-NLP/opus-mt-xx-yy", cache=tmp_path / "t.sqlite")
    with pytest.raises(
        MissingDependency,
        match=r"neither a folder nor in the local Hugging Face cache.*hf download",
    ):
        tr(["hola"])


def test_tiny_marian_by_hub_id(hub_checkpoint, tmp_path):
    import torch
    from transformers import MarianMTModel, MarianTokenizer

    hub_checkpoint(DEFAULT_MODEL)
    tr = Translator(DEFAULT_MODEL, batch_size=2, device="cpu", cache=tmp_path / "t.sqlite")
    out = tr(TEXTS)
    assert tr.stats["batches"] == 3 and tr._model is not None
    assert len(out) == len(TEXTS) and out[0] == out[3] and all(isinstance(t, str) for t in out)
    # The same as the model's own generate on that text alone (one text per batch).
    tok = MarianTokenizer.from_pretrained(DEFAULT_MODEL, local_files_only=True)
    model = MarianMTModel.from_pretrained(DEFAULT_MODEL, local_files_only=True).eval()
    enc = tok([TEXTS[1]], return_tensors="pt")
    with torch.inference_mode():
        ids = model.generate(**enc, max_length=2 * enc["input_ids"].shape[1] + 16)
    single = Translator(DEFAULT_MODEL, batch_size=1, device="cpu", cache=tmp_path / "u.sqlite")
    assert single([TEXTS[1]]) == [tok.decode(ids[0], skip_special_tokens=True).strip()]
    # A fresh translator answers from the cache without loading the model.
    cached = Translator(DEFAULT_MODEL, batch_size=2, cache=tmp_path / "t.sqlite")
    assert cached(TEXTS) == out and cached._model is None and cached.stats["translated"] == 0
