"""Test-wide settings: no hub access, an artifact root per session, shared fixtures."""

from __future__ import annotations

import os

import pytest

# A stray download must fail at once instead of hanging (tests never reach a hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _radixpert_home(tmp_path_factory, monkeypatch):
    """Each test session writes caches and weights under its own temporary RADIXPERT_HOME."""
    home = tmp_path_factory.getbasetemp() / "radixpert_home"
    monkeypatch.setenv("RADIXPERT_HOME", str(home))
    return home
