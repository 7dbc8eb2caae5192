"""Tiny checkpoints in the Hugging Face hub cache layout, loaded by their real hub ids offline.

The test session runs with its own ``HF_HOME`` (set in ``tests/conftest.py`` before transformers
is imported) and ``HF_HUB_OFFLINE=1``. ``hub_checkpoint(repo_id)`` writes a tiny random model of
the repository's real architecture there, with the library's own ``save_pretrained`` (sharded
safetensors with an index where the real repository is sharded, the processor and image
processor configs, tokenizer, chat template, generation config), in the cache layout
huggingface_hub reads::

    $HF_HOME/hub/models--{org}--{name}/refs/main            the commit hash
    $HF_HOME/hub/models--{org}--{name}/snapshots/{hash}/    the files

so that ``from_pretrained("meta-llama/Llama-3.2-11B-Vision-Instruct")`` (or open_clip's
``hf-hub:`` names) resolves them through the real loading code, with no network. Each
repository's builder is registered with ``@builder(repo_id)`` in a module of this package;
what each one mirrors of the real repository is written beside it, with its source.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

BUILDERS: dict[str, Callable[[Path], None]] = {}
_MODULES = ("tests.hub.vlm", "tests.hub.parts", "tests.hub.translation")


def builder(repo_id: str) -> Callable[[Callable[[Path], None]], Callable[[Path], None]]:
    """Registers ``fn(snapshot_dir)`` as the writer of ``repo_id``'s tiny checkpoint."""

    def register(fn: Callable[[Path], None]) -> Callable[[Path], None]:
        BUILDERS[repo_id] = fn
        return fn

    return register


def hub_cache() -> Path:
    """The hub cache of this session: ``$HF_HUB_CACHE`` or ``$HF_HOME/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ["HF_HOME"]) / "hub"


def _load_builders() -> None:
    for name in _MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise


def hub_checkpoint(repo_id: str) -> Path:
    """Writes (once per session) the tiny checkpoint of ``repo_id``; returns its snapshot dir."""
    _load_builders()
    if repo_id not in BUILDERS:
        raise KeyError(f"no tiny hub checkpoint for {repo_id!r}; known: {sorted(BUILDERS)}")
    repo = hub_cache() / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    done = snapshot / ".radixpert-test-complete"
    if done.is_file():
        return snapshot
    if snapshot.exists():  # a builder that failed part-way: start again from nothing
        shutil.rmtree(snapshot)
    snapshot.mkdir(parents=True)
    BUILDERS[repo_id](snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit, encoding="utf-8")
    done.write_text("", encoding="utf-8")
    return snapshot
