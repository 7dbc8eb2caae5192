"""Where an LLM judge's answers come from, and how one question is asked, parsed and cached.

    backend = EndpointJudge("http://127.0.0.1:8000/v1", model="qwen2.5-72b-instruct")
    # or: LocalJudge("Qwen/Qwen2.5-7B-Instruct")  (a transformers model, this process)
    results = ask_all(backend, conversations, parse_counts, prompt_version="chexprompt-v1")
    ok = [r.value for r in results if r.ok]       # failures are counted, never guessed

Two backends share one small interface (``JudgeBackend.complete(messages, max_tokens)``):

- ``EndpointJudge``: any OpenAI-compatible ``/v1/chat/completions`` server (vLLM, SGLang,
  llama.cpp, Ollama, ``radixpert serve``). Reports are patient data, so a host that is not
  this machine is refused unless ``allow_remote=True`` (``--judge-allow-remote``), the
  explicit opt-in (the rule of ``radixpert.llm.ChatClient``, which does the HTTP).
- ``LocalJudge``: a causal language model loaded with transformers in this process, greedy,
  its own chat template; read from a local folder or the hub cache (offline when
  ``HF_HUB_OFFLINE=1``).

``ask`` sends one conversation at temperature 0 and hands the answer to a strict parser. A
parser raises ``JudgeParseError`` with what was wrong; the question is then asked again (at
most ``retries`` times) with the bad answer and the reason appended, so the judge can correct
its format. An answer that never parses is a counted failure (``Judgement.ok`` false, its last
raw text and error kept): a metric reports how many there were, and never invents a value. A
transport failure (server down, timeout) is retried as well and then raised as ``LLMError``:
that is a setup problem, not a judgement.

Parsed judgements are cached in ``$RADIXPERT_HOME/cache/metrics/<namespace>.sqlite`` keyed by
(judge identity, prompt version, the exact messages), so a re-run or a second model scored
against the same references asks nothing twice. Failures are not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from radixpert.errors import LLMError, MetricUnavailable
from radixpert.evaluate.base import Metric, progress
from radixpert.evaluate.cache import TextCache, file_sha256

__all__ = [
    "EndpointJudge",
    "JudgeBackend",
    "JudgeMetric",
    "JudgeParseError",
    "Judgement",
    "LocalJudge",
    "ask",
    "ask_all",
    "backend_from_options",
    "json_answer",
    "mean_over_judged",
]

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]


class JudgeParseError(ValueError):
    """A judge's answer is not in the asked format; the message says what is wrong."""


class JudgeBackend(ABC):
    """Something that answers a chat conversation with text.

    Attributes:
        identity: names the judge exactly enough for the cache and the results file
            (endpoint and served model, or the local model and a hash of its files).
        concurrent: whether several questions may be in flight at once (an HTTP server
            batches them; a model in this process answers one at a time).
    """

    identity: str = ""
    concurrent: bool = False

    @abstractmethod
    def complete(self, messages: Messages, *, max_tokens: int) -> str:
        """The assistant's answer to `messages`, greedy (temperature 0)."""

    def describe(self) -> dict[str, Any]:
        """What the results file records about the judge."""
        return {"judge": self.identity}


class EndpointJudge(JudgeBackend):
    """An OpenAI-compatible chat endpoint; loopback only unless `allow_remote`.

    Args:
        base_url: e.g. "http://127.0.0.1:8000/v1".
        model: the model name the server serves.
        api_key_env: an environment variable holding a bearer token, if the server wants one.
        allow_remote: permit another host (report text then leaves this machine).
        timeout: seconds per request.
    """

    concurrent = True

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        allow_remote: bool = False,
        timeout: float = 300.0,
    ) -> None:
        from radixpert.llm import ChatClient

        try:
            self.client = ChatClient(base_url, model, api_key_env, allow_remote, timeout)
        except LLMError as e:
            raise LLMError(str(e).replace("--llm-", "--judge-")) from None
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.identity = f"endpoint:{model}@{self.base_url}"

    def complete(self, messages: Messages, *, max_tokens: int) -> str:
        return self.client.complete(messages, temperature=0.0, max_tokens=max_tokens)

    def describe(self) -> dict[str, Any]:
        return {"judge": self.identity, "judge_model": self.model, "judge_url": self.base_url}


class LocalJudge(JudgeBackend):
    """A transformers causal LM in this process: chat template, greedy decoding.

    Args:
        name: a local model folder or a hub id (read from the local cache; no download when
            HF_HUB_OFFLINE=1).
        device: torch device ("auto": cuda when visible).
        dtype: "auto" (bfloat16 on cuda, float32 on cpu) or a torch dtype name.
    """

    def __init__(self, name: str, device: str | None = None, dtype: str = "auto") -> None:
        from radixpert.evaluate.base import resolve_device

        self.name = name
        self.device = resolve_device(device)
        self.dtype = dtype
        self._model: Any = None
        self._tokenizer: Any = None
        self.folder = _local_folder(name)
        # Greedy answers differ between float32 and bfloat16, so the dtype names the judge too.
        fingerprint = model_fingerprint(self.folder) if self.folder is not None else "uncached"
        self.identity = f"local:{name}:{fingerprint}:{self._dtype_name()}"

    def _dtype_name(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.device.startswith("cuda") else "float32"

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from radixpert.paths import offline as hub_offline

        offline = hub_offline()
        dtype = getattr(torch, self._dtype_name())
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.name, local_files_only=offline)
            self._model = AutoModelForCausalLM.from_pretrained(
                self.name, dtype=dtype, local_files_only=offline
            )
        except OSError as e:
            raise MetricUnavailable(f"judge model {self.name!r} cannot be loaded: {e}") from None
        if self._tokenizer.chat_template is None:
            raise MetricUnavailable(
                f"judge model {self.name!r} has no chat template (an instruction-tuned model "
                "is needed)"
            )
        self._model.to(self.device).eval()

    def complete(self, messages: Messages, *, max_tokens: int) -> str:
        import torch

        self._load()
        tok = self._tokenizer
        enc = tok.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode():
            out = self._model.generate(
                **enc, max_new_tokens=max_tokens, do_sample=False, pad_token_id=pad
            )
        answer = out[0, enc["input_ids"].shape[1] :]
        return str(tok.decode(answer, skip_special_tokens=True))

    def describe(self) -> dict[str, Any]:
        return {
            "judge": self.identity,
            "judge_model": self.name,
            "judge_device": self.device,
            "judge_dtype": self._dtype_name(),
        }


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def _local_folder(name: str) -> Path | None:
    """The folder a local judge loads: `name` itself, or its snapshot in the hub cache."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not cached or not a hub id: loading will say so, with the reason
        return None


def model_fingerprint(folder: Path) -> str:
    """A short hash naming a checkpoint folder's exact files, quickly.

    Config, tokenizer, chat template and generation files are hashed whole; weight files
    (many GB) by name and size, which with the rest identifies a checkpoint without reading
    it on every run. A hub snapshot's folder name (its commit) is part of the hash.
    """
    h = hashlib.sha256(folder.name.encode() if folder.parent.name == "snapshots" else b"")
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if path.name.startswith("."):
            continue
        if path.suffix in WEIGHT_SUFFIXES:
            h.update(f"{path.name}:{path.stat().st_size}|".encode())
        else:
            h.update(f"{path.name}:{file_sha256(path)}|".encode())
    return h.hexdigest()[:16]


@dataclass
class Judgement:
    """The outcome of one question.

    Attributes:
        value: the parsed judgement (JSON-serialisable), None when it failed.
        raw: the judge's last answer.
        attempts: answers asked for (0 when it came from the cache).
        error: why the last answer could not be parsed, when it failed.
        cached: read from the cache.
    """

    value: Any
    raw: str
    attempts: int
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


CORRECTION = (
    "Your answer could not be read: {error}. Answer the same question again, in exactly the "
    "format asked for, with nothing else."
)


def cache_key(identity: str, prompt_version: str, messages: Messages) -> str:
    """The text a judgement is cached under: judge, prompt version and the exact messages."""
    return json.dumps([identity, prompt_version, messages], sort_keys=True, ensure_ascii=False)


def ask(
    backend: JudgeBackend,
    messages: Messages,
    parse: Callable[[str], Any],
    *,
    retries: int = 2,
    max_tokens: int = 1024,
    transport_retries: int = 2,
) -> Judgement:
    """Ask one question; parse strictly; on a parse error ask again with the reason.

    Args:
        parse: text -> JSON-serialisable value; raises JudgeParseError when the text is not
            in the asked format.
        retries: further attempts after an unparsable answer.
        transport_retries: further attempts after a transport error (then LLMError).
    """
    history = list(messages)
    raw, error = "", None
    for attempt in range(1, retries + 2):
        raw = _complete(backend, history, max_tokens, transport_retries)
        try:
            return Judgement(parse(raw), raw, attempt)
        except JudgeParseError as e:
            error = str(e) or "unreadable answer"
            log.debug("judge answer %d unparsable: %s", attempt, error)
            history = [
                *history,
                {"role": "assistant", "content": raw},
                {"role": "user", "content": CORRECTION.format(error=error)},
            ]
    return Judgement(None, raw, retries + 1, error=error)


TRANSPORT_BACKOFF_S = 1.0  # first wait after a transport error; doubled each time, at most 8x


def _complete(backend: JudgeBackend, messages: Messages, max_tokens: int, retries: int) -> str:
    for attempt in range(retries + 1):
        try:
            return backend.complete(messages, max_tokens=max_tokens)
        except (LLMError, OSError) as e:
            # A reset connection surfaces as a bare OSError from http.client, not an LLMError.
            # A refusal of the request itself (4xx but 429) is not asked again.
            status = getattr(e, "status", None)
            refused = isinstance(e, LLMError) and status is not None and 400 <= status < 500
            if attempt == retries or (refused and status != 429):
                if isinstance(e, LLMError):
                    raise
                raise LLMError(f"judge {backend.identity}: {e}") from None
            log.warning("judge request failed (%s); retrying", e)
            time.sleep(TRANSPORT_BACKOFF_S * min(2.0**attempt, 8.0))
    raise AssertionError("unreachable")


Parse = Callable[[str], Any]


def ask_all(
    backend: JudgeBackend,
    conversations: Sequence[Messages],
    parse: Parse | Sequence[Parse],
    *,
    prompt_version: str,
    namespace: str = "judges",
    cache: bool = True,
    cache_path: Path | None = None,
    retries: int = 2,
    max_tokens: int = 1024,
    workers: int = 4,
    desc: str = "judge",
) -> list[Judgement]:
    """`ask` for each conversation, in order: identical ones asked once, parsed ones cached.

    Args:
        parse: the parser of every answer, or one per conversation (when what is valid
            depends on the question, e.g. the number of lines to be judged).
        prompt_version: part of the cache key; change it whenever the prompt or the parser
            changes what a judgement means.
        workers: questions in flight at once, for a backend that takes several (an HTTP
            server); a local model answers one at a time.
    """
    keys = [cache_key(backend.identity, prompt_version, list(c)) for c in conversations]
    store = TextCache(
        namespace,
        {"judge": backend.identity, "prompt": prompt_version},
        path=cache_path,
        enabled=cache,
    )
    try:
        hits = store.get_many(set(keys))
        done: dict[str, Judgement] = {
            k: Judgement(v["value"], v["raw"], 0, cached=True) for k, v in hits.items()
        }
        parsers = [parse] * len(keys) if callable(parse) else list(parse)
        if len(parsers) != len(keys):
            raise ValueError(f"{len(parsers)} parsers for {len(keys)} conversations")
        parser_of = dict(zip(keys, parsers))
        todo = {k: c for k, c in zip(keys, conversations, strict=True) if k not in done}

        def one(key: str) -> Judgement:
            return ask(
                backend, list(todo[key]), parser_of[key], retries=retries, max_tokens=max_tokens
            )

        def keep(key: str, j: Judgement) -> None:
            # Stored as each answer arrives (from this thread: sqlite connections are not
            # shared), so a run stopped by a transport error keeps what it had.
            done[key] = j
            if j.ok:
                store.put_many({key: {"value": j.value, "raw": j.raw}})
            bar.update(1)

        with progress(len(todo), desc, unit="questions") as bar:
            n = max(1, workers) if backend.concurrent else 1
            if n == 1:
                for key in todo:
                    keep(key, one(key))
            else:
                with ThreadPoolExecutor(n) as pool:
                    futures = {pool.submit(one, k): k for k in todo}
                    error: BaseException | None = None
                    for f in as_completed(futures):
                        if f.cancelled():
                            continue
                        if f.exception() is not None:
                            # Stop asking; what is in flight finishes and is kept.
                            error = error or f.exception()
                            for other in futures:
                                other.cancel()
                            continue
                        keep(futures[f], f.result())
                    if error is not None:
                        raise error
    finally:
        store.close()
    return [done[k] for k in keys]


def judge_settings(results: Sequence[Judgement]) -> dict[str, int]:
    """Counts a judge metric reports beside its scores."""
    return {
        "questions": len(results),
        "failed": sum(not r.ok for r in results),
        "cached": sum(r.cached for r in results),
        "retried": sum(r.attempts > 1 for r in results),
    }


def backend_from_options(
    judge_url: str | None = None,
    judge_model: str | None = None,
    judge_api_key_env: str | None = None,
    judge_allow_remote: bool = False,
    judge_local: str | None = None,
    device: str | None = None,
) -> JudgeBackend | None:
    """The backend the command-line options name (`--judge-url/--judge-model` or
    `--judge-local`), or None when none is given."""
    if judge_url and judge_local:
        raise LLMError("give --judge-url or --judge-local, not both")
    if judge_url:
        if not judge_model:
            raise LLMError("--judge-url needs --judge-model (the model name the server serves)")
        return EndpointJudge(judge_url, judge_model, judge_api_key_env, judge_allow_remote)
    if judge_local:
        return LocalJudge(judge_local, device=device)
    return None


NO_JUDGE = (
    "needs a judge: --judge-url URL --judge-model NAME (an OpenAI-compatible server on this "
    "machine; --judge-allow-remote for another host) or --judge-local MODEL (a transformers "
    "model folder or cached hub id)"
)


_FENCE = re.compile(r"\A```(?:json)?[ \t]*\n(?P<body>.*?)\n?```\Z", re.DOTALL)


def json_answer(text: str) -> Any:
    """The one JSON value an answer consists of, strictly.

    Surrounding whitespace and one Markdown fence (```json ... ```) around the whole answer
    are tolerated; anything else before or after the value, a duplicated key, NaN or
    Infinity raise JudgeParseError with a reason the judge can act on.
    """
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group("body").strip()
    if not body:
        raise JudgeParseError("the answer is empty")
    if body[0] not in "{[":
        raise JudgeParseError(
            "the answer must start with the JSON value itself, with no text before it"
        )

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise JudgeParseError(f"key {repeated[0]!r} appears twice")
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise JudgeParseError(f"{name} is not allowed; use numbers only")

    decoder = json.JSONDecoder(object_pairs_hook=no_duplicates, parse_constant=no_constant)
    try:
        value, end = decoder.raw_decode(body)
    except json.JSONDecodeError as e:
        raise JudgeParseError(
            f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    if body[end:].strip():
        raise JudgeParseError("there is text after the JSON value; give the JSON value only")
    return value


def mean_over_judged(values: Sequence[float]) -> tuple[float, Callable[[Any], float]]:
    """(mean of the non-NaN values, the same statistic on a resample's index array).

    A judge metric scores a pair whose answer never parsed as NaN: it is counted (the
    metric's `detailed` says how many), and left out of the mean rather than guessed.
    """
    import numpy as np

    scores = np.asarray(values, dtype=float)

    def corpus_fn(idx: Any) -> float:
        x = scores[np.asarray(idx, dtype=int)]
        x = x[~np.isnan(x)]
        return float(x.mean()) if x.size else math.nan

    return corpus_fn(np.arange(len(scores))), corpus_fn


def digest(text: str) -> str:
    """A short content hash (for prompt texts recorded in settings)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


class JudgeMetric(Metric):
    """A metric whose scores come from an LLM judge (`ask_all` through a `JudgeBackend`).

    The judge is named by the command line's options (`backend_from_options`) or given as
    `backend`; without one the metric cannot run and `check()` says what to pass.
    Subclasses set `prompt_version` and call `self.judge(conversations, parse)`. Metrics
    that read the same judgement in different ways (one prompt, several scores) share
    `cache_namespace`, so the second asks nothing.
    """

    prompt_version: str = ""
    max_tokens: int = 1024
    cache_namespace: str = ""  # default: the metric's name

    def __init__(
        self,
        judge_url: str | None = None,
        judge_model: str | None = None,
        judge_api_key_env: str | None = None,
        judge_allow_remote: bool = False,
        judge_local: str | None = None,
        judge_workers: int = 4,
        judge_retries: int = 2,
        cache: bool = True,
        device: str | None = None,
        backend: JudgeBackend | None = None,
    ) -> None:
        self.backend = backend or backend_from_options(
            judge_url, judge_model, judge_api_key_env, judge_allow_remote, judge_local, device
        )
        self.workers = judge_workers
        self.retries = judge_retries
        self.use_cache = cache

    def check(self) -> str | None:
        return super().check() or (None if self.backend is not None else NO_JUDGE)

    def judge(
        self, conversations: Sequence[Messages], parse: Parse | Sequence[Parse]
    ) -> list[Judgement]:
        if self.backend is None:
            raise MetricUnavailable(f"{self.name}: {NO_JUDGE}")
        return ask_all(
            self.backend,
            conversations,
            parse,
            prompt_version=self.prompt_version,
            namespace=f"judge-{self.cache_namespace or self.name}",
            cache=self.use_cache,
            retries=self.retries,
            max_tokens=self.max_tokens,
            workers=self.workers,
            desc=self.name,
        )

    def judge_settings(self, results: Sequence[Judgement]) -> dict[str, Any]:
        """What the results file records: the judge, the prompt version, the counts."""
        assert self.backend is not None
        return {
            **self.backend.describe(),
            "prompt_version": self.prompt_version,
            "retries": self.retries,
            "max_tokens": self.max_tokens,
            **judge_settings(results),
        }
