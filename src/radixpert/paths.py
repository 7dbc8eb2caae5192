"""The one artifact root: caches, model weights and metric caches live under RADIXPERT_HOME.

`RADIXPERT_HOME` defaults to `~/.cache/radixpert`. Nothing else in the package builds
paths to user data on its own.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The artifact root (`$RADIXPERT_HOME`, default `~/.cache/radixpert`); not created here."""
    env = os.environ.get("RADIXPERT_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "radixpert"


def models_dir() -> Path:
    """Where `radixpert models pull` puts weights: one folder per model name."""
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
