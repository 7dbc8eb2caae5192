"""`Conversation` records in the LLaVA/ShareGPT layout, written as JSON Lines.

    {"id": ..., "image": [paths], "conversations": [{"from": "human", "value": "<image>\\n..."},
     {"from": "gpt", "value": ...}, ...], "task": ..., "study_id": ..., "dataset": ...,
     "target": {...}}

`target` keeps the structured truth (labels, boxes) the task's `score` grades against.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from radixpert.errors import ConversationError
from radixpert.io import atomic_write

IMAGE_TOKEN = "<image>"


def images_and_turns(item: Any) -> tuple[list[str], list[dict[str, str]]]:
    """(image paths, turns) of a ``Conversation`` or of a ShareGPT mapping
    (``{"image": path or [paths], "conversations": [...]}``)."""
    if isinstance(item, Mapping):
        images, turns = item.get("image") or [], item["conversations"]
    else:
        images, turns = item.image, item.conversations
    if isinstance(images, str | Path):
        images = [images]
    return [str(p) for p in images], list(turns)


@dataclass
class Conversation:
    id: str
    image: list[str]
    conversations: list[dict[str, str]]
    task: str
    study_id: str
    dataset: str
    target: dict[str, Any] = field(default_factory=dict)

    def validate(self, where: str = "") -> Conversation:
        where = where or f"conversation {self.id!r}"
        if not self.conversations or len(self.conversations) % 2:
            raise ConversationError(f"{where}: 'conversations' must hold human/gpt turn pairs")
        for i, turn in enumerate(self.conversations):
            want = "human" if i % 2 == 0 else "gpt"
            if turn.get("from") != want or not isinstance(turn.get("value"), str):
                raise ConversationError(f"{where}: conversations[{i}] must be a {want} turn")
        n_tokens = sum(t["value"].count(IMAGE_TOKEN) for t in self.conversations)
        if n_tokens != len(self.image):
            raise ConversationError(
                f"{where}: {n_tokens} {IMAGE_TOKEN} token(s) for {len(self.image)} image(s)"
            )
        return self


def write_conversations(items: Iterable[Conversation], path: str | Path) -> int:
    """Write conversations as JSON Lines, atomically; returns the count."""
    n = 0
    with atomic_write(path) as f:
        for c in items:
            f.write(json.dumps(asdict(c.validate()), ensure_ascii=False) + "\n")
            n += 1
    return n


def read_conversations(path: str | Path) -> Iterator[Conversation]:
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}: line {n}"
            try:
                d = json.loads(line)
                yield Conversation(**d).validate(where)
            except (json.JSONDecodeError, TypeError) as e:
                raise ConversationError(f"{where}: {e}") from None
