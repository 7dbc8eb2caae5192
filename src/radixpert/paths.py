"""Where things are: the artifact root (RADIXPERT_HOME) and the configs shipped in the package.

`RADIXPERT_HOME` defaults to `~/.cache/radixpert`; caches, model weights and metric caches live
under it. Nothing else in the package builds paths to user data on its own. The shipped
training recipes and accelerate configs are package data (`radixpert/configs/`), found with
`importlib.resources`, so they are there in a wheel install as in a source checkout.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

CONFIG_KINDS = ("recipes", "accelerate", "benchmarks")


def home() -> Path:
    """The artifact root (`$RADIXPERT_HOME`, default `~/.cache/radixpert`); not created here."""
    env = os.environ.get("RADIXPERT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "radixpert"


def models_dir() -> Path:
    """Where `radixpert weights pull` puts weights: one folder per model name."""
    return home() / "models"


def cache_dir(kind: str) -> Path:
    """A cache folder under the root, e.g. `cache_dir("metrics")`."""
    return home() / "cache" / kind


def offline() -> bool:
    """True when the Hugging Face offline flags are set: no hub access may be attempted."""
    return any(
        os.environ.get(k, "").strip().lower() in {"1", "true", "yes", "on"}
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def configs_dir(kind: str) -> Path:
    """The folder of shipped configs of one kind: ``"recipes"``, ``"accelerate"`` or
    ``"benchmarks"``.

    Raises:
        ValueError: ``kind`` is not one of ``CONFIG_KINDS``.
    """
    if kind not in CONFIG_KINDS:
        raise ValueError(f"unknown config kind {kind!r}; known: {', '.join(CONFIG_KINDS)}")
    # pip installs wheels unpacked, so the package's files are real paths on disk.
    return Path(str(resources.files("radixpert") / "configs" / kind))
