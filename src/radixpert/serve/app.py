"""The FastAPI app of ``radixpert serve``: an OpenAI-compatible API over radixpert bundles.

    app = create_app(ModelRegistry.load(["runs/demo/model/04-msa3/bundle"]), ServeSettings())
    uvicorn.run(app, host="127.0.0.1", port=8000)

Endpoints: ``POST /v1/chat/completions`` (OpenAI's request and response, ``stream`` as
server-sent events ending with ``data: [DONE]``), ``GET /v1/models``, ``POST /v1/report``
(an image in, the report and its parsed boxes out; with ``attention`` the attention maps of
the report as overlay PNGs), ``GET /health``, ``GET /metrics`` (Prometheus) and the web page at
``/`` (``serve.page``). With a token set every endpoint but ``/health`` and the page's own
files (``/``, ``/page.js``, ``/page.css``, ``/page/config``) needs
``Authorization: Bearer <token>``. Errors use OpenAI's ``{"error": {...}}`` layout. Request
text and images are never logged unless ``log_content`` is set.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from radixpert.instruct.tasks import ReportTask, parse_boxes
from radixpert.serve.models import (
    ModelRegistry,
    Result,
    Sampling,
    ServedModel,
    conversation_from_messages,
    image_digest,
)
from radixpert.serve.models import (
    Request as GenRequest,
)
from radixpert.serve.queue import BatchQueue, Job, QueueFull, QueueTimeout
from radixpert.serve.security import (
    BodyLimit,
    ImageLimits,
    RequestRejected,
    check_bind,
    decode_image,
    error_body,
    token_matches,
)

logger = logging.getLogger(__name__)

REPORT_PROMPT = ReportTask.PROMPTS[0].format(what="findings")


@dataclass
class ServeSettings:
    """How the server listens, what it accepts, and how it batches.

    Args:
        host: Address to bind; anything but loopback needs ``token``.
        port: TCP port.
        token: Bearer token clients must send (None: none, loopback only).
        max_body_bytes: Largest request body (413 beyond).
        image: Per-image limits (bytes: 413; declared pixels: 400).
        max_images: Images per request.
        max_tokens: Most tokens a request may ask for; ``default_max_tokens`` without one.
        default_max_tokens: Tokens per answer when a request gives no limit.
        max_waiting: Requests that may wait in the queue (503 beyond).
        queue_timeout_s: Longest wait in the queue (then 503).
        max_batch: Rows (requests x n) per ``generate`` call.
        batch_wait_ms: How long the worker collects requests for one batch.
        log_content: Log request text and answers (off: only ids, sizes and timings).
        cors_origins: Origins allowed by CORS (empty: CORS off).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    image: ImageLimits = field(default_factory=ImageLimits)
    max_images: int = 4
    max_tokens: int = 1024
    default_max_tokens: int = 256
    max_waiting: int = 64
    queue_timeout_s: float = 60.0
    max_batch: int = 8
    batch_wait_ms: float = 5.0
    log_content: bool = False
    cors_origins: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ request bodies


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageURL(_Strict):
    url: str
    detail: str | None = None


class ContentPart(_Strict):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatRequest(_Strict):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    n: int = Field(1, ge=1, le=8)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stream_options: StreamOptions | None = None
    user: str | None = None


class ReportRequest(_Strict):
    model: str | None = None
    image: str = Field(description="a data: URL or bare base64 of a PNG, JPEG or DICOM image")
    indication: str | None = None
    prompt: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    attention: bool = False
    report: str | None = Field(
        None, description="with attention: map this report (teacher-forced) instead of a new one"
    )
    phrases: list[str] = Field(default_factory=list, max_length=16)


# ------------------------------------------------------------------------------ metrics


class _Metrics:
    """Prometheus metrics in a registry of the app's own (several apps never collide)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "radixpert_requests", "HTTP requests", ["path", "status"], registry=r
        )
        self.latency = Histogram(
            "radixpert_request_duration_seconds",
            "Time to the response (a stream: to its start)",
            ["path"],
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.queue_depth = Gauge("radixpert_queue_depth", "Requests waiting", registry=r)
        self.batch_rows = Histogram(
            "radixpert_batch_rows",
            "Rows per generate call",
            registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.rejected = Counter(
            "radixpert_queue_rejected", "Requests refused by the queue", ["reason"], registry=r
        )
        self.generated = Counter(
            "radixpert_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.prompt = Counter(
            "radixpert_prompt_tokens", "Prompt tokens read", ["model"], registry=r
        )


# ------------------------------------------------------------------------------ the app


@dataclass
class _Payload:
    model: ServedModel
    request: GenRequest
    sampling: Sampling
    emit: Any = None  # streaming: emit(index, text), called from the worker thread
    task: Any = None  # other work on the model (attention maps), run alone by the worker


def _run_jobs(jobs: Sequence[Job]) -> None:
    """The queue's handler: one generate call for a batch (or one stream, or one task)."""
    first: _Payload = jobs[0].payload
    if first.task is not None:
        jobs[0].future.set_result(first.task())
        return
    if first.emit is not None:
        jobs[0].future.set_result(first.model.stream(first.request, first.sampling, first.emit))
        return
    results = first.model.generate([j.payload.request for j in jobs], first.sampling)
    for job, result in zip(jobs, results):
        job.future.set_result(result)


def create_app(models: ModelRegistry | Sequence[ServedModel], settings: ServeSettings) -> FastAPI:
    """The server's app over ``models`` (see the module docstring).

    Raises:
        UsageError: ``settings.host`` is not loopback and ``settings.token`` is not set.
    """
    check_bind(settings.host, settings.token)
    registry = models if isinstance(models, ModelRegistry) else ModelRegistry(list(models))
    metrics = _Metrics()
    queue = BatchQueue(
        _run_jobs,
        max_waiting=settings.max_waiting,
        max_rows=settings.max_batch,
        wait_s=settings.batch_wait_ms / 1000.0,
        timeout_s=settings.queue_timeout_s,
        on_depth=metrics.queue_depth.set,
        on_batch=metrics.batch_rows.observe,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        queue.start()
        try:
            yield
        finally:
            await run_in_threadpool(queue.stop)

    app = FastAPI(
        title="radixpert", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.registry, app.state.queue, app.state.metrics = registry, queue, metrics
    app.state.settings = settings
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)

    @app.middleware("http")
    async def count(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        metrics.requests.labels(path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(RequestRejected)
    async def rejected(request: Request, e: RequestRejected) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 503 else None
        if e.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        return JSONResponse(error_body(e.message, e.kind, e.param), e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        # The fields and what is wrong with them, never the values (they may be patient text).
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'][1:]) or 'body'}: {err['msg']}"
            for err in e.errors()
        )
        return JSONResponse(error_body(problems, "invalid_request_error"), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(e.detail), "invalid_request_error"), e.status_code)

    async def authorised(request: Request) -> None:
        if settings.token and not token_matches(
            request.headers.get("authorization"), settings.token
        ):
            raise RequestRejected(
                401,
                "missing or wrong bearer token (Authorization: Bearer ...)",
                kind="authentication_error",
            )

    guarded = [Depends(authorised)]
    from radixpert.serve.page import add_page_routes

    add_page_routes(app, settings, guarded, report_prompt=REPORT_PROMPT)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(registry.models)}

    @app.get("/metrics", dependencies=guarded)
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=guarded)
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": m.name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "radixpert",
                    "family": m.family,
                }
                for m in registry.models.values()
            ],
        }

    def _sampling(body: ChatRequest | ReportRequest, model: ServedModel) -> Sampling:
        asked = getattr(body, "max_completion_tokens", None) or body.max_tokens
        if asked is not None and asked > settings.max_tokens:
            raise RequestRejected(
                400, f"max_tokens: at most {settings.max_tokens}", param="max_tokens"
            )
        temperature = getattr(body, "temperature", None) or 0.0
        sampling = Sampling(
            max_new_tokens=asked or settings.default_max_tokens,
            temperature=temperature,
            top_p=getattr(body, "top_p", None) or 1.0,
            seed=getattr(body, "seed", None),
        )
        model.check(sampling)
        return sampling

    async def _decode(urls: list[tuple[str, Any]]) -> list[Any]:
        if len(urls) > settings.max_images:
            raise RequestRejected(400, f"at most {settings.max_images} images per request")

        def work() -> list[Any]:
            out = []
            for where, url in urls:
                text = url if isinstance(url, str) else url.url
                out.append(decode_image(text, settings.image, param=where))
            return out

        return await run_in_threadpool(work)

    def _submit(payload: _Payload, batchable: bool) -> asyncio.Future:
        s = payload.sampling
        key = (payload.model.name, s) if batchable and s.seed is None else None
        try:
            future = queue.submit(Job(key, payload, rows=payload.request.n))
        except QueueFull as e:
            metrics.rejected.labels("full").inc()
            raise RequestRejected(
                503, f"the server is busy: {e}; retry later", kind="server_busy"
            ) from None
        return asyncio.wrap_future(future)

    async def _await(future: asyncio.Future) -> Result:
        try:
            return await future
        except QueueTimeout as e:
            metrics.rejected.labels("timeout").inc()
            raise RequestRejected(
                503, f"the server is busy: {e}; retry later", kind="server_busy"
            ) from None

    def _log(rid: str, model: ServedModel, req: GenRequest, result: Result | None) -> None:
        tokens = sum(c.tokens for c in result.choices) if result else 0
        if result:
            metrics.generated.labels(model.name).inc(tokens)
            metrics.prompt.labels(model.name).inc(result.prompt_tokens)
        logger.info(
            "%s model=%s images=%d n=%d prompt_tokens=%s completion_tokens=%d",
            rid,
            model.name,
            len(req.images),
            req.n,
            result and result.prompt_tokens,
            tokens,
        )
        if settings.log_content:
            logger.info("%s content: %s", rid, json.dumps(req.conversation.conversations))
            for i, c in enumerate(result.choices if result else []):
                logger.info("%s answer %d: %s", rid, i, c.text)

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat(body: ChatRequest) -> Any:
        rid = "chatcmpl-" + secrets.token_hex(12)
        model = registry.get(body.model)
        sampling = _sampling(body, model)
        conversation, urls = conversation_from_messages(rid, body.messages)
        images = await _decode(urls)
        conversation.image = [image_digest(im) for im in images]
        req = GenRequest(conversation, images, body.n)
        created = int(time.time())
        if not body.stream:
            result = await _await(_submit(_Payload(model, req, sampling), batchable=True))
            _log(rid, model, req, result)
            return {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model.name,
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": i,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": None,
                        "finish_reason": c.finish_reason,
                    }
                    for i, c in enumerate(result.choices)
                ],
                "usage": _usage(result),
            }
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()

        def emit(index: int, text: str) -> None:  # worker thread -> event loop
            loop.call_soon_threadsafe(pieces.put_nowait, (index, text))

        future = _submit(_Payload(model, req, sampling, emit), batchable=False)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(choices: list[dict[str, Any]], usage: Any = None) -> str:
            data = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model.name,
                "system_fingerprint": None,
                "choices": choices,
            }
            if include_usage:
                data["usage"] = usage
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        async def events() -> AsyncIterator[str]:
            for i in range(body.n):
                yield chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            done = asyncio.ensure_future(future)
            try:
                while True:
                    getter = asyncio.ensure_future(pieces.get())
                    finished, _ = await asyncio.wait(
                        {getter, done}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if getter in finished:
                        index, text = getter.result()
                        yield chunk(
                            [
                                {
                                    "index": index,
                                    "delta": {"content": text},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ]
                        )
                        continue
                    getter.cancel()
                    while not pieces.empty():
                        index, text = pieces.get_nowait()
                        yield chunk(
                            [
                                {
                                    "index": index,
                                    "delta": {"content": text},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ]
                        )
                    try:
                        result = await _await(done)
                    except RequestRejected as e:
                        err = error_body(e.message, e.kind)
                        yield f"data: {json.dumps(err)}\n\n"
                        break
                    _log(rid, model, req, result)
                    for i, c in enumerate(result.choices):
                        yield chunk(
                            [
                                {
                                    "index": i,
                                    "delta": {},
                                    "logprobs": None,
                                    "finish_reason": c.finish_reason,
                                }
                            ]
                        )
                    if include_usage:
                        yield chunk([], _usage(result))
                    break
            finally:
                req.cancelled.set()  # a client gone mid-stream stops the generation
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.post("/v1/report", dependencies=guarded)
    async def report(body: ReportRequest) -> dict[str, Any]:
        rid = "report-" + secrets.token_hex(12)
        model = registry.get(body.model)
        if body.report is not None and not body.attention:
            raise RequestRejected(
                400, "report: give a report only with attention: true", param="report"
            )
        if body.attention and model.family == "radscribe":
            raise RequestRejected(
                400,
                f"model {model.name!r} (radscribe) has no image tokens: no attention maps",
                param="attention",
            )
        sampling = _sampling(body, model)
        (image,) = await _decode([("image", body.image)])
        prompt = body.prompt or REPORT_PROMPT
        if body.indication:
            prompt = f"Indication: {body.indication.strip()}\n{prompt}"
        from radixpert.instruct.conversation import IMAGE_TOKEN, Conversation

        if IMAGE_TOKEN in prompt:
            raise RequestRejected(
                400, "prompt must not contain an image placeholder", param="prompt"
            )
        conversation = Conversation(
            id=rid,
            image=[image_digest(image)],
            conversations=[{"from": "human", "value": f"{IMAGE_TOKEN}\n{prompt}"}],
            task="report",
            study_id="",
            dataset="api",
        )
        req = GenRequest(conversation, [image], 1)
        result: Result | None = None
        if body.report is None:
            result = await _await(_submit(_Payload(model, req, sampling), batchable=True))
            _log(rid, model, req, result)
            text = result.choices[0].text
        else:
            text = body.report.strip()
        boxes, invalid = boxes_in(text)
        out: dict[str, Any] = {
            "id": rid,
            "object": "report",
            "created": int(time.time()),
            "model": model.name,
            "report": text,
            "boxes": boxes,
            "invalid_boxes": invalid,
            "finish_reason": result.choices[0].finish_reason if result else None,
            "usage": _usage(result) if result else None,
        }
        if body.attention:
            task = functools.partial(
                attention_maps, model, image, text, prompt, body.phrases, body.report is None
            )
            out["attention"] = await _await(
                _submit(_Payload(model, req, sampling, task=task), batchable=False)
            )
        return out

    return app


def boxes_in(text: str) -> tuple[list[list[float]], list[list[float]]]:
    """The ``[x1, y1, x2, y2]`` boxes (0-1) in an answer: (valid, invalid), in order. Valid
    means 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1."""
    valid, invalid = [], []
    for box in parse_boxes(text):
        ok = 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
        (valid if ok else invalid).append(list(box))
    return valid, invalid


ATTENTION_MAX_SIDE = 1024  # overlays in a response are shrunk to this side (boxes are 0-1)


def attention_maps(
    model: ServedModel,
    image: Any,
    report: str,
    prompt: str,
    phrases: Sequence[str] = (),
    generated: bool = True,
    max_side: int = ATTENTION_MAX_SIDE,
) -> dict[str, Any]:
    """The ``attention`` of ``/v1/report``: ``infer.attention.explain`` of ``report`` on the
    image (teacher-forced, the default aggregation: mean over heads, max over layers), as
    overlay PNGs (``data:`` URLs, the image's aspect, at most ``max_side`` pixels a side).

    ``maps`` holds the whole report first (the mean of its tokens' maps), then each phrase
    (``found`` false and no overlay when the report does not contain it), then each sentence
    (a finding with its side and size words: where the map says most, see
    ``infer.attention``). An empty report or a
    model whose maps cannot be read gives ``{"error": ...}`` instead (the report still comes).
    """
    import numpy as np

    from radixpert.infer.attention import explain, overlay
    from radixpert.serve.page import png_data_url

    try:
        result = explain(model.model, model.processor, image, report=report, prompt=prompt,
                         phrases=list(phrases))  # fmt: skip
    except ValueError as e:
        return {"error": f"attention: {e}"}
    geometry = result.geometry

    def picture(grid: Any) -> str:
        return png_data_url(overlay(result.image, grid, geometry), max_side)

    maps: list[dict[str, Any]] = [
        {
            "kind": "report",
            "text": result.report,
            "found": True,
            "overlay": picture(result.token_maps.mean(axis=0)),
            "image_mass": float(np.mean(result.image_mass)),
        }
    ]
    for span in result.phrase_maps:
        entry: dict[str, Any] = {"kind": "phrase", "text": span.text, "found": bool(span.tokens)}
        entry["start"] = span.start
        if span.tokens:
            entry["overlay"] = picture(span.grid)
            entry["image_mass"] = float(np.mean([result.image_mass[t] for t in span.tokens]))
        maps.append(entry)
    for span in result.sentence_maps:
        maps.append(
            {
                "kind": "sentence",
                "text": span.text,
                "found": True,
                "start": span.start,
                "overlay": picture(span.grid),
                "image_mass": float(np.mean([result.image_mass[t] for t in span.tokens])),
            }
        )
    return {
        "report": result.report,
        "generated": generated,
        "aggregation": {**result.aggregation, "report": "mean over all the report's tokens"},
        "geometry": {
            "grid": list(geometry.grid),
            "original_height_width": list(geometry.original),
            "note": geometry.note,
        },
        "maps": maps,
    }


def _usage(result: Result) -> dict[str, int]:
    completion = sum(c.tokens for c in result.choices)
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": result.prompt_tokens + completion,
    }
