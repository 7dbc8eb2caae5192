"""The web page of ``radixpert serve``: upload a radiograph, read its report as it streams, ask
follow-up questions, see the answers' boxes and the attention over the image, copy the report.

    add_page_routes(app, settings, guarded, report_prompt=REPORT_PROMPT)   # in create_app

Routes: ``GET /`` (the page), ``GET /page.js`` and ``GET /page.css`` (its script and style,
package data under ``serve/static/``), ``GET /page/config`` (the report prompt and the limits
the page needs; no secrets), ``POST /page/decode`` (an uploaded PNG, JPEG or DICOM decoded by
the server as the model reads it, returned as a PNG the browser can show) and
``POST /page/boxes`` (the boxes of an answer, parsed by ``infer.grounding.parse_grounding``,
the parser of ``radixpert chat``). The page itself talks to the OpenAI-compatible API:
``/v1/models``, ``/v1/chat/completions`` (streamed; the history kept in the browser, the image
in the first user message) and ``/v1/report`` with ``attention``.

Nothing is loaded from anywhere but this server (a Content-Security-Policy forbids it), model
output is put on the page as text only, and with a token configured the page sends it as
``Authorization: Bearer`` (kept in the tab's ``sessionStorage``); the page and its assets
carry nothing private, so they are served without it.
"""

from __future__ import annotations

import base64
import functools
import io
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from radixpert.serve.security import decode_image

__all__ = ["CSP", "DISPLAY_MAX_SIDE", "add_page_routes", "png_data_url"]

# The page may load its own script, style and images and call its own server; nothing else.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DISPLAY_MAX_SIDE = 1024  # the decoded image shown on the page (boxes are 0-1: any size fits)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
_ASSETS = {"/page.js": "text/javascript", "/page.css": "text/css"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecodeRequest(_Strict):
    image: str = Field(description="a data: URL (or bare base64) of a PNG, JPEG or DICOM image")


class BoxesRequest(_Strict):
    text: str = Field(max_length=100_000)


@functools.cache
def _asset(name: str) -> str:
    return resources.files("radixpert.serve").joinpath("static", name).read_text("utf-8")


def png_data_url(gray: np.ndarray | Any, max_side: int | None = None) -> str:
    """A 2-D image in [0, 1] (or a PIL image) as a PNG ``data:`` URL, shrunk to ``max_side``."""
    from PIL import Image

    img = gray if isinstance(gray, Image.Image) else _to_pil(gray)
    if max_side and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _to_pil(gray: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray((np.clip(gray, 0.0, 1.0) * 255.0).round().astype(np.uint8), mode="L")


def add_page_routes(app: FastAPI, settings: Any, guarded: list[Any], *, report_prompt: str) -> None:
    """Mounts the page's routes (see the module docstring) on ``app``.

    Args:
        app: The server's app.
        settings: Its ``ServeSettings`` (image limits, whether a token is set).
        guarded: The dependencies that check the bearer token (for the routes that read
            request content).
        report_prompt: The prompt of the report the page asks for first (the one
            ``/v1/report`` uses, a prompt the report task trained with).
    """

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_asset("index.html"), headers=_HEADERS)

    for path, media in _ASSETS.items():

        async def asset(name: str = path.lstrip("/"), media: str = media) -> Response:
            return Response(_asset(name), media_type=media, headers=_HEADERS)

        app.add_api_route(path, asset, methods=["GET"], include_in_schema=False)

    @app.get("/page/config", include_in_schema=False)
    async def config() -> dict[str, Any]:
        return {
            "report_prompt": report_prompt,
            "token_required": bool(settings.token),
            "max_image_bytes": settings.image.max_bytes,
            "max_body_bytes": settings.max_body_bytes,
        }

    @app.post("/page/decode", dependencies=guarded, include_in_schema=False)
    async def decode(body: DecodeRequest) -> dict[str, Any]:
        def work() -> dict[str, Any]:
            gray = decode_image(body.image, settings.image, param="image")
            head = body.image[:40].lower()
            return {
                "png": png_data_url(gray, DISPLAY_MAX_SIDE),
                "width": int(gray.shape[1]),
                "height": int(gray.shape[0]),
                "dicom": "dicom" in head,
            }

        return await run_in_threadpool(work)

    @app.post("/page/boxes", dependencies=guarded, include_in_schema=False)
    async def boxes(body: BoxesRequest) -> dict[str, Any]:
        from radixpert.infer.grounding import parse_grounding

        return parse_grounding(body.text).to_dict()
