"""Tests of ``radixpert serve``: tiny random-init bundles built as tests/models builds them."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

TEXTS = [
    "no acute cardiopulmonary process. the lungs are clear. heart size is normal.",
    "there is a small left pleural effusion [0.10, 0.52, 0.41, 0.88].",
    "write the findings of the radiology report for this chest x-ray.",
]


def tiny_bundle(path: Path, family: str = "llava") -> Path:
    """A random-init tiny model of ``family`` with a BPE trained on ``TEXTS``, saved as a
    bundle at ``path``."""
    import torch

    from radixpert.models.bundle import save_bundle
    from radixpert.models.processor import RadProcessor
    from radixpert.models.tokenizers import train_tokenizers

    torch.manual_seed(0)
    if family == "llava":
        from radixpert.models.llava import tiny_llava

        model = tiny_llava("mlp")
    else:
        from radixpert.models.mllama import tiny_mllama

        model = tiny_mllama()
    tokenizer, _ = train_tokenizers(model, TEXTS * 5)
    processor = RadProcessor.from_model(model, tokenizer)
    return save_bundle(model.eval(), processor, path)


def png_data_url(array: np.ndarray | None = None, size: tuple[int, int] = (40, 32)) -> str:
    """A grayscale PNG as a ``data:`` URL."""
    from PIL import Image

    if array is None:
        array = (np.random.default_rng(0).random(size[::-1]) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def user_message(text: str, image_url: str | None = None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if image_url:
        parts.append({"type": "image_url", "image_url": {"url": image_url}})
    parts.append({"type": "text", "text": text})
    return {"role": "user", "content": parts}


_BUILT: dict[tuple[str, str], Any] = {}


def served_models(root: Path) -> Any:
    """A ``ModelRegistry`` of a tiny llava (``llava``, the default) and a tiny Mllama
    (``mllama``), built once per test session under ``root``."""
    from radixpert.serve.models import ModelRegistry

    key = (str(root), "registry")
    if key not in _BUILT:
        llava = tiny_bundle(root / "llava")
        mllama = tiny_bundle(root / "mllama", "mllama")
        _BUILT[key] = ModelRegistry.load([str(llava), f"mllama={mllama}"])
    return _BUILT[key]


def sse_events(text: str) -> list[Any]:
    """The ``data:`` payloads of a server-sent-event stream, JSON-decoded ([DONE] as is)."""
    import json

    out = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out
