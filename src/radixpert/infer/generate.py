"""Batch generation: the model's answer to the last human turn of each conversation.

    from radixpert.infer.generate import generate_answers
    model, processor = load_bundle("runs/demo/model/04-msa3/bundle")
    answers = generate_answers(model, processor, conversations, batch_size=32)

Each conversation is cut before its first ``gpt`` turn that follows the last human turn (so a
training conversation can be given as is), encoded by the model's own ``RadProcessor`` with
the generation prompt and left padding, decoded greedily (deterministic) until the end-of-turn
token or ``max_new_tokens``, and only the new tokens are decoded. Works for the llava, Mllama
and OneVision families (``model.generate`` of transformers) and RadScribe (its own greedy
decoder). Batches are sorted by prompt length to pad little; answers come back in input order.

``generate_batch`` is one such ``generate`` call (the engine of ``radixpert generate``,
``radixpert.infer.batch``); ``check_decoding`` refuses settings a family cannot run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from radixpert.instruct.conversation import images_and_turns

logger = logging.getLogger(__name__)

__all__ = [
    "answer_streamer",
    "cancel_when",
    "check_decoding",
    "generate_answers",
    "generate_batch",
    "prompt_turns",
]


def prompt_turns(turns: Sequence[dict[str, str]]) -> list[dict[str, str]]:
    """The turns up to and including the last human turn (the question to answer)."""
    last = max((i for i, t in enumerate(turns) if t["from"] == "human"), default=None)
    if last is None:
        raise ValueError("a conversation without a human turn has nothing to answer")
    return [dict(t) for t in turns[: last + 1]]


def answer_streamer(tokenizer: Any, emit: Callable[[str], None]) -> Any:
    """A transformers streamer that hands each finalised piece of an answer to ``emit``.

    Built on ``TextIteratorStreamer`` (prompt and special tokens skipped, text released at
    word boundaries), with the answer's outer whitespace removed as ``generate_batch`` strips
    an answer: the pieces join to exactly the answer ``generate_batch`` returns. The chat
    session's ``stream`` and the server's streaming both use it.
    """
    from transformers import TextIteratorStreamer

    class AnswerStreamer(TextIteratorStreamer):
        def __init__(self) -> None:
            super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self._started, self._held = False, ""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self._started:
                text = text.lstrip()
                self._started = bool(text)
            text = self._held + text
            body = text.rstrip()
            self._held = text[len(body) :]  # trailing whitespace waits for more text
            if body:
                emit(body)

    return AnswerStreamer()


def cancel_when(flags: Sequence[threading.Event]) -> Any:
    """``stopping_criteria`` for ``generate`` that ends row ``i`` once ``flags[i]`` is set
    (a client gone, a stream closed early)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            done = [f.is_set() for f in flags]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Cancelled()])


STATIC_CACHE_FAMILIES = ("llava", "mllama", "llava_onevision")


def check_decoding(model: Any, processor: Any, settings: dict[str, Any]) -> None:
    """Refuses decoding settings the model's family cannot run, naming the setting.

    A static key/value cache (``cache_implementation="static"``) works with transformers'
    ``generate`` for plain llava, Mllama and OneVision (the same ids as the dynamic cache);
    the HCF connectors fail with it (their prompt mask does not follow the cache's fixed
    length) and RadScribe has its own greedy decoder, which also has no beams or sampling.

    Raises:
        UsageError: For a setting the family does not support.
    """
    from radixpert.errors import UsageError
    from radixpert.models.families import connector_of

    family = processor.config.family
    if family == "radscribe":
        asked = [
            name
            for name, bad in (
                ("sampling", bool(settings.get("do_sample"))),
                ("beam search", int(settings.get("num_beams") or 1) > 1),
                ("static cache", settings.get("cache_implementation") is not None),
            )
            if bad
        ]
        if asked:
            raise UsageError(
                f"RadScribe decodes greedily with its own decoder: it has no {', '.join(asked)} "
                "(drop --num-beams, --temperature, --top-p and --cache)"
            )
        return
    if settings.get("cache_implementation") == "static":
        connector = connector_of(model)
        if family not in STATIC_CACHE_FAMILIES or connector == "hcf":
            raise UsageError(
                f"--cache static does not work for the {family} family with the {connector} "
                "connector (its prompt mask does not follow a fixed-length cache); use the "
                "default dynamic cache"
            )


def generate_batch(
    model: Any,
    processor: Any,
    images: Sequence[Sequence[Any]],
    prompts: Sequence[Sequence[dict[str, str]]],
    *,
    max_new_tokens: int = 160,
    **generate_kwargs: Any,
) -> list[str]:
    """The answers of one batch: ``generate`` on the processor's left-padded prompts.

    Args:
        model: A llava, Mllama, OneVision or RadScribe model (peft-wrapped or not), in eval
            mode.
        processor: Its ``RadProcessor``.
        images: One list per prompt: image paths, arrays or PIL images (may be empty).
        prompts: Turns ending with the human turn to answer (``prompt_turns``).
        max_new_tokens: Most tokens per answer.
        **generate_kwargs: Further ``generate`` arguments (``num_beams``, ``do_sample``,
            ``temperature``, ``top_p``, ``cache_implementation``); greedy by default.

    Returns:
        One stripped answer per prompt, in order.
    """
    param = next(model.parameters())
    family = processor.config.family
    tokenizer = processor.decoder_tokenizer if family == "radscribe" else processor.tokenizer
    batch = processor(
        [list(i) for i in images] if any(images) else None,
        [list(p) for p in prompts],
        add_generation_prompt=True,
    )
    batch = {
        k: v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device)
        for k, v in batch.items()
    }
    batch.pop("labels", None)
    with torch.no_grad():
        if family == "radscribe":
            if generate_kwargs.get("do_sample") or generate_kwargs.get("num_beams", 1) != 1:
                raise ValueError("RadScribe decodes greedily: no beams or sampling")
            out = model.generate(**batch, max_new_tokens=max_new_tokens)
            new = out[:, 1:]
        else:
            settings = {"do_sample": False, **generate_kwargs}
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **settings,
            )
            new = out[:, batch["input_ids"].shape[1] :]
    return [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new]


@torch.no_grad()
def generate_answers(
    model: Any,
    processor: Any,
    conversations: Sequence[Any],
    *,
    image_root: str | Path = Path("."),
    batch_size: int = 16,
    max_new_tokens: int = 160,
    progress: bool = True,
    desc: str = "generate",
    **generate_kwargs: Any,
) -> list[str]:
    """Greedy answers to the last human turn of each conversation.

    Args:
        model: A llava, Mllama, OneVision or RadScribe model (peft-wrapped or not).
        processor: Its ``RadProcessor``.
        conversations: ``Conversation`` records or ShareGPT mappings; image paths relative to
            ``image_root`` or absolute.
        image_root: Folder of relative image paths.
        batch_size: Conversations per ``generate`` call.
        max_new_tokens: Most tokens per answer.
        progress: Show a progress bar.
        desc: The progress bar's label.
        **generate_kwargs: Further ``generate`` arguments for the transformers families
            (``num_beams``, ``do_sample``, ``temperature``, ...); greedy by default.

    Returns:
        One answer per conversation, in order, stripped.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    root = Path(image_root)
    items = [images_and_turns(c) for c in conversations]
    prompts = [prompt_turns(turns) for _, turns in items]
    order = sorted(range(len(items)), key=lambda i: -sum(len(t["value"]) for t in prompts[i]))
    answers: list[str] = [""] * len(items)
    bar = tqdm(total=len(items), desc=desc, disable=not progress, unit="ex", dynamic_ncols=True)
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            written = generate_batch(
                model,
                processor,
                [[root / p for p in items[i][0]] for i in chunk],
                [prompts[i] for i in chunk],
                max_new_tokens=max_new_tokens,
                **generate_kwargs,
            )
            for i, answer in zip(chunk, written):
                answers[i] = answer
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    return answers
