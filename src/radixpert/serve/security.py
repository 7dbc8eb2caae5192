"""What the server accepts: who may call it, how much they may send, which images it decodes.

* ``check_bind(host, token)``: a bearer token is required unless the server listens on a
  loopback address only; ``token_matches`` compares in constant time.
* ``BodyLimit``: an ASGI middleware answering 413 to a body over the limit (``Content-Length``
  checked up front, a chunked body counted as it arrives).
* ``decode_image(url_or_b64, limits)``: an image from the request itself, a ``data:`` URL or
  bare base64, never a remote URL or a server-side path; PNG/JPEG by Pillow and DICOM by
  pydicom, each refused (400) when its header declares more pixels than ``max_pixels`` before
  any pixel is decoded (the decompression-bomb guard), and 413 when its bytes exceed
  ``max_bytes``. The result is the same 2-D grayscale float array in [0, 1] that
  ``radixpert.data.images.load_image`` gives for a file, by the same intensity rules.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from radixpert.errors import ImageError, UsageError

LOOPBACK_NAMES = ("localhost",)
_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)"
    r"(?P<b64>;base64)?,",
    re.IGNORECASE,
)


class RequestRejected(Exception):
    """A request the server refuses: HTTP ``status`` with an OpenAI-style error body."""

    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", param: str = ""
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def is_loopback(host: str) -> bool:
    """True when ``host`` names a loopback address only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuses to listen beyond this machine without a bearer token.

    Raises:
        UsageError: ``host`` is not loopback and no token is set.
    """
    if not token and not is_loopback(host):
        raise UsageError(
            f"--host {host} is reachable from other machines: give a bearer token with "
            "--token-file FILE (clients send 'Authorization: Bearer <token>'), or bind 127.0.0.1"
        )


def read_token(path: str) -> str:
    """The token in ``path`` (surrounding whitespace removed).

    Raises:
        UsageError: The file is empty or the token is shorter than 16 characters.
    """
    with open(path, encoding="utf-8") as f:
        token = f.read().strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise UsageError(
            f"{path}: the token must be one word of at least 16 characters "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (constant-time compare)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _reply_413(send, self.max_bytes)
            return
        seen, started, refused = 0, False, False

        async def counted_receive() -> dict:
            nonlocal seen, started, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Answer 413 now; the app sees a client gone and its reply is dropped.
                    refused = True
                    if not started:
                        started = True
                        await _reply_413(send, self.max_bytes)
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, tracked_send)


async def _reply_413(send: Any, limit: int) -> None:
    body = json.dumps(
        error_body(f"request body over the limit of {limit} bytes", "invalid_request_error")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def error_body(message: str, kind: str, param: str = "", code: Any = None) -> dict[str, Any]:
    """OpenAI's error layout."""
    return {"error": {"message": message, "type": kind, "param": param or None, "code": code}}


# --------------------------------------------------------------------------------------------
# Images


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits: encoded bytes (413 beyond) and declared pixels (400 beyond)."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000


def image_bytes(url: str, limits: ImageLimits, param: str) -> bytes:
    """The bytes of a ``data:`` URL (or of bare base64) given in a request.

    Raises:
        RequestRejected: 400 for a remote URL, a path or malformed base64; 413 when too large.
    """
    text = url.strip()
    lowered = text[:16].lower()
    if not lowered.startswith("data:"):
        if re.match(r"^[a-z][a-z0-9+.-]*://", lowered) or text.startswith(("/", "~", ".")):
            raise RequestRejected(
                400,
                f"{param}: images are read only from the request body as data: URLs "
                "(data:image/png;base64,...); this server never fetches URLs or opens paths",
                param=param,
            )
        payload = text  # bare base64 (the report endpoint accepts it)
    else:
        m = _DATA_URL.match(text)
        if not m or not m.group("b64"):
            raise RequestRejected(
                400, f"{param}: expected a base64 data: URL (data:<type>;base64,...)", param=param
            )
        payload = text[m.end() :]
    if len(payload) * 3 // 4 > limits.max_bytes + 3:
        raise RequestRejected(
            413, f"{param}: image over the limit of {limits.max_bytes} bytes", param=param
        )
    try:
        data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError):
        raise RequestRejected(400, f"{param}: not valid base64", param=param) from None
    if len(data) > limits.max_bytes:
        raise RequestRejected(
            413, f"{param}: image over the limit of {limits.max_bytes} bytes", param=param
        )
    if not data:
        raise RequestRejected(400, f"{param}: empty image", param=param)
    return data


def decode_image(url: str, limits: ImageLimits, param: str = "image") -> np.ndarray:
    """A request's image as a 2-D float32 array in [0, 1] (see the module docstring).

    Decoded by ``radixpert.data.images.read_image_bytes`` (the same intensity rules as for
    files), which refuses an image whose header declares over ``limits.max_pixels`` pixels
    before decoding it.

    Raises:
        RequestRejected: 400 (not an image, a remote URL, a decompression bomb, corrupt data)
            or 413 (too many bytes).
    """
    from radixpert.data.images import read_image_bytes

    data = image_bytes(url, limits, param)
    try:
        return read_image_bytes(data, name=param, max_pixels=limits.max_pixels)
    except ImageError as e:
        raise RequestRejected(400, str(e), param=param) from None
