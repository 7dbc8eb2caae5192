"""Loading a saved model directory by the `model_type` in its config.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def load_by_model_type(path: str | Path, classes: dict[str, Any], **kwargs: Any) -> Any:
    """`classes[model_type].from_pretrained(path, **kwargs)`.

    Raises:
        ValueError: naming the config file when its model_type is not one of `classes`.
    """
    config_file = Path(path) / "config.json"
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type not in classes:
        raise ValueError(
            f"{config_file}: model_type {model_type!r} is not one of {sorted(classes)}"
        )
    logger.info("loading %s from %s", model_type, path)
    return classes[model_type].from_pretrained(path, **kwargs)
