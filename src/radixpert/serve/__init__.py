"""``radixpert serve``: an OpenAI-compatible server for radixpert models, on this machine.

    radixpert serve --model runs/demo/model/04-msa3/bundle            # 127.0.0.1:8000
    radixpert serve --model a=DIR_A --model b=DIR_B --host 0.0.0.0 --token-file token.txt

    curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{
      "model": "bundle", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}},
        {"type": "text", "text": "Write the findings."}]}]}'

The app is ``serve.app.create_app``; the models by name ``serve.models``; the batching queue
``serve.queue``; authentication, size limits and image decoding ``serve.security``. This
module holds only the command line, so ``radixpert --help`` imports no FastAPI or torch.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

__all__ = ["add_parser"]

logger = logging.getLogger(__name__)


def add_parser(sub: Any) -> None:
    """Adds ``serve`` to the ``radixpert`` subcommands."""
    p = sub.add_parser(
        "serve",
        help="serve models over an OpenAI-compatible HTTP API (local by default)",
        description="Serve radixpert bundles: POST /v1/chat/completions (OpenAI's API, images "
        "as data: URLs, streaming), GET /v1/models, POST /v1/report, GET /health, GET /metrics. "
        "Binds 127.0.0.1 unless told otherwise; any other address needs --token-file.",
    )
    p.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="a model bundle, named by its folder or NAME; repeat for several",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--token-file", help="file holding the bearer token clients must send")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    p.add_argument("--max-batch", type=int, default=8, help="rows per generate call (8)")
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="how long to collect requests into one batch (5 ms)",
    )
    p.add_argument("--queue-size", type=int, default=64, help="requests that may wait (64)")
    p.add_argument(
        "--queue-timeout",
        type=float,
        default=60.0,
        help="seconds a request may wait before a 503 (60)",
    )
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (32)")
    p.add_argument("--max-image-mb", type=float, default=20.0, help="largest image (20)")
    p.add_argument(
        "--max-image-pixels",
        type=int,
        default=50_000_000,
        help="most pixels an image may declare (50 million)",
    )
    p.add_argument("--max-tokens", type=int, default=1024, help="most tokens a request may ask")
    p.add_argument(
        "--log-content",
        action="store_true",
        help="log request text and answers (off: ids, sizes and timings only)",
    )
    p.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser requests from ORIGIN (CORS is off by default)",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from radixpert._optional import require

    require("fastapi", "uvicorn", "prometheus_client", purpose="radixpert serve")
    from radixpert.serve.app import ServeSettings
    from radixpert.serve.security import ImageLimits, check_bind, read_token

    token = read_token(args.token_file) if args.token_file else None
    check_bind(args.host, token)  # before any model is loaded
    import torch
    import uvicorn

    from radixpert.serve.app import create_app
    from radixpert.serve.models import ModelRegistry

    device = args.device or ("cuda" if torch.cuda.is_available() else None)
    registry = ModelRegistry.load(args.model, device=device)
    mb = 1024 * 1024
    settings = ServeSettings(
        host=args.host,
        port=args.port,
        token=token,
        max_body_bytes=int(args.max_body_mb * mb),
        image=ImageLimits(int(args.max_image_mb * mb), args.max_image_pixels),
        max_tokens=args.max_tokens,
        max_waiting=args.queue_size,
        queue_timeout_s=args.queue_timeout,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        log_content=args.log_content,
        cors_origins=args.cors_origin,
    )
    app = create_app(registry, settings)
    for name, served in registry.models.items():
        print(f"model {name}: {served.family} from {served.path} on {served.device}")
    print(f"serving on http://{args.host}:{args.port} (token {'required' if token else 'off'})")
    logging.getLogger("radixpert.serve").setLevel(logging.INFO)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=True)
    return 0
