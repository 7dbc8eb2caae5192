"""The models a server holds, by name, and how one generates for a batch of requests.

    registry = ModelRegistry.load(["runs/demo/model/04-msa3/bundle", "base=export/base"])
    served = registry.get("bundle")
    results = served.generate(requests, settings)          # one model.generate call
    served.stream(request, settings, emit)                 # answer_streamer, batch of 1

A request is a ``Conversation`` (the project's ShareGPT record, ``instruct.conversation``) cut
at its last human turn plus its decoded images; ``conversation_from_messages`` turns an
OpenAI ``messages`` list into one. Decoding follows ``infer.generate.generate_answers``: the
model's own ``RadProcessor`` with the generation prompt and left padding, only the new tokens
decoded with special tokens skipped, stripped; greedy unless a temperature is given.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radixpert.errors import UsageError
from radixpert.infer.generate import answer_streamer, cancel_when, prompt_turns
from radixpert.instruct.conversation import IMAGE_TOKEN, Conversation
from radixpert.serve.security import RequestRejected

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


@dataclass(frozen=True)
class Sampling:
    """Generation settings one ``generate`` call shares (requests are grouped by them)."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Request:
    """One conversation to answer ``n`` times."""

    conversation: Conversation
    images: list[np.ndarray]
    n: int = 1
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Choice:
    text: str
    tokens: int
    finish_reason: str  # "stop" | "length"


@dataclass
class Result:
    choices: list[Choice]
    prompt_tokens: int


def parse_model_specs(specs: Sequence[str]) -> list[tuple[str, Path]]:
    """``DIR`` or ``NAME=DIR`` -> (name, dir); a bare ``DIR`` is named by its folder.

    Raises:
        UsageError: A bad or repeated name, or a folder that is not a bundle.
    """
    out: list[tuple[str, Path]] = []
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if sep and _NAME.match(name) and not Path(spec).exists():
            path = Path(rest)
        else:
            name, path = Path(spec).name, Path(spec)
        if not _NAME.match(name):
            raise UsageError(f"--model {spec}: name {name!r} must be letters, digits, . _ : -")
        if name in {n for n, _ in out}:
            raise UsageError(f"--model {spec}: the name {name!r} is given twice (use NAME=DIR)")
        if not (path / "radixpert_bundle.json").is_file():
            raise UsageError(
                f"--model {spec}: {path} is not a model bundle (no radixpert_bundle.json)"
            )
        out.append((name, path))
    if not out:
        raise UsageError("give at least one --model DIR")
    return out


def conversation_from_messages(
    request_id: str, messages: Sequence[Any]
) -> tuple[Conversation, list[Any]]:
    """An OpenAI ``messages`` list -> (``Conversation`` ending at the user's turn, image URLs).

    ``user`` turns become ``human`` turns, ``assistant`` turns ``gpt`` turns; consecutive
    messages of one role are joined by a newline. Each ``image_url`` part becomes an
    ``<image>`` placeholder where it stands; the images are returned in order, undecoded.

    Raises:
        RequestRejected: 400 for a system message (the model's system prompt is fixed by its
            processor), an image outside a user turn, a placeholder typed into the text, or a
            conversation that does not end with the user.
    """
    turns: list[dict[str, str]] = []
    urls: list[Any] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.role
        if role in ("system", "developer"):
            raise RequestRejected(
                400,
                f"{where}: {role} messages are not supported: the model answers with the system "
                "prompt it was trained with (its radixpert_processor.json)",
                param=where,
            )
        content = message.content
        parts = (
            []
            if content is None
            else (
                [("text", content)] if isinstance(content, str) else [(p.type, p) for p in content]
            )
        )
        pieces: list[str] = []
        for j, (kind, part) in enumerate(parts):
            if kind == "text":
                text = part if isinstance(part, str) else (part.text or "")
                if IMAGE_TOKEN in text or "<|image|>" in text:
                    raise RequestRejected(
                        400,
                        f"{where}: text must not contain an image placeholder; send the "
                        "image as an image_url part",
                        param=where,
                    )
                pieces.append(text)
            else:
                if role != "user":
                    raise RequestRejected(400, f"{where}: images go in user messages", param=where)
                urls.append((f"{where}.content[{j}]", part.image_url))
                pieces.append(IMAGE_TOKEN)
        value = "\n".join(pieces)
        speaker = "human" if role == "user" else "gpt"
        if turns and turns[-1]["from"] == speaker:
            turns[-1]["value"] += "\n" + value
        else:
            turns.append({"from": speaker, "value": value})
    if not turns or turns[-1]["from"] != "human":
        raise RequestRejected(
            400, "messages: the last message must be the user's", param="messages"
        )
    if turns[0]["from"] != "human":
        raise RequestRejected(
            400, "messages: the first message must be the user's", param="messages"
        )
    conv = Conversation(
        id=request_id,
        image=[],  # filled with content digests once decoded (no paths: images are in memory)
        conversations=prompt_turns(turns),
        task="chat",
        study_id="",
        dataset="api",
    )
    return conv, urls


def image_digest(image: np.ndarray) -> str:
    """A name for an in-memory image in a ``Conversation`` record (not its content)."""
    return "sha256:" + hashlib.sha256(image.tobytes()).hexdigest()[:16]


class ServedModel:
    """One loaded bundle: model, processor, and generation for requests."""

    def __init__(self, name: str, path: Path | None, model: Any, processor: Any) -> None:
        import torch

        self.name, self.path, self.model, self.processor = name, path, model.eval(), processor
        self.family = processor.config.family
        self.tokenizer = (
            processor.decoder_tokenizer if self.family == "radscribe" else processor.tokenizer
        )
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self._torch = torch
        self.eos_ids = self._eos_ids()

    def _eos_ids(self) -> list[int]:
        """The tokenizer's eos and the chat templates' end-of-turn tokens it knows."""
        from radixpert.models.processor import END_OF_TURN

        tok = self.tokenizer
        ids = [] if tok.eos_token_id is None else [int(tok.eos_token_id)]
        if self.family != "radscribe":
            vocab = tok.get_vocab()
            ids += [int(vocab[m]) for m in END_OF_TURN if m in vocab and vocab[m] not in ids]
        return ids

    @classmethod
    def load(cls, name: str, path: Path, device: str | None = None) -> ServedModel:
        from radixpert.models.bundle import load_bundle

        model, processor = load_bundle(path)
        if device:
            model = model.to(device)
        return cls(name, path, model, processor)

    def check(self, sampling: Sampling) -> None:
        """Raises RequestRejected for settings this family cannot honour."""
        if self.family == "radscribe" and not sampling.greedy:
            raise RequestRejected(
                400,
                f"model {self.name!r} (radscribe) decodes greedily only: use temperature 0",
                param="temperature",
            )

    def _batch(self, requests: Sequence[Request]) -> tuple[dict[str, Any], list[int]]:
        rows = [r for r in requests for _ in range(r.n)]
        images = [list(r.images) for r in rows]
        batch = self.processor(
            images if any(images) else None,
            [r.conversation.conversations for r in rows],
            add_generation_prompt=True,
        )
        batch.pop("labels", None)
        batch = {
            k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
            for k, v in batch.items()
        }
        prompt = batch["attention_mask"].sum(dim=1).tolist()
        return batch, [int(p) for p in prompt]

    def _settings(self, sampling: Sampling) -> dict[str, Any]:
        if sampling.seed is not None:
            self._torch.manual_seed(sampling.seed)
        out: dict[str, Any] = {
            "max_new_tokens": sampling.max_new_tokens,
            "eos_token_id": self.eos_ids or None,
            "pad_token_id": self.tokenizer.pad_token_id,
            "do_sample": not sampling.greedy,
        }
        if not sampling.greedy:
            out.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        return out

    def _choice(self, ids: Any, limit: int) -> Choice:
        ids = ids.tolist()
        end = next((i for i, t in enumerate(ids) if t in self.eos_ids), None)
        kept = ids if end is None else ids[: end + 1]
        pad = self.tokenizer.pad_token_id
        while end is None and kept and kept[-1] == pad:
            kept.pop()  # a row ended by the cancel criterion is padded to the batch's length
        text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
        reason = "length" if end is None and len(kept) >= limit else "stop"
        return Choice(text, len(kept), reason)

    def generate(self, requests: Sequence[Request], sampling: Sampling) -> list[Result]:
        """Answers for several requests in one ``generate`` call (each ``n`` times)."""
        with self._torch.no_grad():
            batch, prompt = self._batch(requests)
            flags = [r.cancelled for r in requests for _ in range(r.n)]
            if self.family == "radscribe":
                out = self.model.generate(**batch, max_new_tokens=sampling.max_new_tokens)
                new = out[:, 1:]
            else:
                out = self.model.generate(
                    **batch, stopping_criteria=cancel_when(flags), **self._settings(sampling)
                )
                new = out[:, batch["input_ids"].shape[1] :]
        results, row = [], 0
        for r in requests:
            choices = [self._choice(new[row + k], sampling.max_new_tokens) for k in range(r.n)]
            results.append(Result(choices, prompt[row]))
            row += r.n
        return results

    def stream(
        self, request: Request, sampling: Sampling, emit: Callable[[int, str], None]
    ) -> Result:
        """Generates ``request``'s answers one at a time, calling ``emit(index, text)`` with
        each piece of text as ``infer.generate.answer_streamer`` finalises it; the pieces of a
        choice join to its ``Choice.text``. Returns the usage and finish reasons."""
        if self.family == "radscribe":  # its own greedy decoder has no streamer: one piece
            result = self.generate([request], sampling)[0]
            for i, c in enumerate(result.choices):
                emit(i, c.text)
            return result
        single = Request(request.conversation, request.images, 1, request.cancelled)
        choices, prompt = [], 0
        for index in range(request.n):
            streamer = answer_streamer(self.tokenizer, lambda t, i=index: emit(i, t))
            with self._torch.no_grad():
                batch, lengths = self._batch([single])
                settings = self._settings(sampling)
                if sampling.seed is not None and index:
                    self._torch.manual_seed(sampling.seed + index)  # n different samples
                out = self.model.generate(
                    **batch,
                    streamer=streamer,
                    stopping_criteria=cancel_when([request.cancelled]),
                    **settings,
                )
            prompt = lengths[0]
            choice = self._choice(out[0, batch["input_ids"].shape[1] :], sampling.max_new_tokens)
            choices.append(choice)
            if request.cancelled.is_set():
                break
        return Result(choices, prompt)


class ModelRegistry:
    """The served models by name; the first is the default."""

    def __init__(self, models: Sequence[ServedModel]) -> None:
        if not models:
            raise UsageError("a server needs at least one model")
        self.models = {m.name: m for m in models}
        if len(self.models) != len(models):
            raise UsageError("two served models share a name")
        self.default = models[0].name

    @classmethod
    def load(cls, specs: Sequence[str], device: str | None = None) -> ModelRegistry:
        return cls([ServedModel.load(n, p, device) for n, p in parse_model_specs(specs)])

    def get(self, name: str | None) -> ServedModel:
        if not name:
            return self.models[self.default]
        if name not in self.models:
            raise RequestRejected(
                404,
                f"model {name!r} is not served here; served: {', '.join(self.models)}",
                param="model",
                kind="model_not_found",
            )
        return self.models[name]
