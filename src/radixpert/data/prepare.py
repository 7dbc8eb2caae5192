"""`radixpert data prepare DATASET --root DIR --out FILE`: a dataset, as its publisher ships
it, into `Study` records (JSONL or Parquet).

Readers are registered by name as "module:function" strings and imported only when used.
Each reader streams; records are validated and written atomically, with progress on stderr.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from radixpert.data.study import Study, write_studies

log = logging.getLogger(__name__)

_R = "radixpert.data.readers"
READERS: dict[str, str] = {
    "mimic-cxr": f"{_R}.mimic_cxr:read",
    "iu-xray": f"{_R}.iu_xray:read",
    "chexpert": f"{_R}.chexpert:read",
    "rexrank": f"{_R}.rexrank:read",
    "rexgradient": f"{_R}.rexrank:read_rexgradient",
    "ms-cxr": f"{_R}.ms_cxr:read",
    "roco-v2": f"{_R}.roco:read",
    "vindr-cxr": f"{_R}.vindr_cxr:read",
    "chexpert-plus": f"{_R}.chexpert_plus:read",
    "padchest": f"{_R}.padchest:read",
    "imagenome": f"{_R}.imagenome:read",
    "padchest-gr": f"{_R}.padchest_gr:read",
    "labelled-csv": f"{_R}.labelled_csv:read",
}


def reader(name: str) -> Any:
    """The `read(root, **options)` function of dataset `name`."""
    if name not in READERS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(READERS)}")
    module, _, attr = READERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def _with_progress(studies: Iterator[Study], stream: TextIO | None) -> Iterator[Study]:
    t0 = last = time.perf_counter()
    for n, s in enumerate(studies, 1):
        now = time.perf_counter()
        if stream is not None and now - last >= 2.0:
            print(f"  {n:,} studies ({n / (now - t0):,.0f}/s)", file=stream, flush=True)
            last = now
        yield s


class PriorRemover:
    """Removes sentences about prior examinations from findings and impression.

    `mode="rules"` uses `radixpert.data.reports.remove_prior_references`; `mode="llm"` asks a
    local model (`radixpert.data.llm_passes`) and, where its answer does not parse, uses the
    rules for that study, says so in the study's `extra` and counts it. Removed sentences are
    kept in `extra["removed_prior_sentences"]`.
    """

    def __init__(self, mode: str = "rules", client: Any = None) -> None:
        if mode not in ("rules", "llm") or (mode == "llm" and client is None):
            raise ValueError("prior removal: mode 'rules', or 'llm' with a client")
        self.mode, self.client = mode, client
        self.counts: Counter[str] = Counter()

    def __call__(self, study: Study) -> Study:
        from radixpert.data.llm_passes import llm_prior_sentences
        from radixpert.data.reports import remove_prior_references
        from radixpert.llm import LLMError

        removed: dict[str, list[str]] = {}
        how = self.mode
        for name in ("findings", "impression"):
            text = getattr(study, name)
            if not text.strip():
                continue
            if self.mode == "llm":
                try:
                    kept, gone = llm_prior_sentences(text, self.client)
                except LLMError as e:
                    log.warning("%s: LLM prior-reference pass failed (%s); rules used", study.id, e)
                    self.counts["llm failed, rules used"] += 1
                    how = "rules (llm answer unusable)"
                    kept, gone = remove_prior_references(text)
            else:
                kept, gone = remove_prior_references(text)
            setattr(study, name, kept)
            if gone:
                removed[name] = gone
                self.counts["sentences removed"] += len(gone)
        study.extra["removed_prior_sentences"] = removed
        study.extra["prior_removal"] = how
        self.counts["studies"] += 1
        return study


def prepare(
    dataset: str,
    root: str | Path,
    out: str | Path,
    progress: TextIO | None = None,
    transform: Callable[[Study], Study] | None = None,
    **options: Any,
) -> int:
    """Read `dataset` under `root` and write its Study records to `out`; returns the count.

    `transform` (e.g. a `PriorRemover`) is applied to each study before it is written.
    """
    read = reader(dataset)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root is not a directory")
    t0 = time.perf_counter()
    studies = read(root, **options)
    if transform is not None:
        studies = (transform(s) for s in studies)
    n = write_studies(_with_progress(studies, progress), out)
    took = time.perf_counter() - t0
    if progress is not None:
        print(f"{dataset}: {n:,} studies -> {out} in {took:.1f} s", file=progress, flush=True)
    return n
