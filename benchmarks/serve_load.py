"""Load test of ``radixpert serve`` on loopback: N concurrent clients, bounded in count and time.

Starts the real app under uvicorn on 127.0.0.1 (a free port) in this process, then:

1. direct: the same request answered by ``ServedModel.generate`` in a loop (no HTTP);
2. sequential: one client, one request at a time -> the server's overhead per request;
3. load: N clients, each sending requests back to back until ``--requests`` are done or
   ``--seconds`` have passed -> errors, p50 / p99 latency, throughput, rows per batch;
   once with dynamic batching (``--max-batch``) and once with batches of 1;
4. full queue: a queue of ``--probe-queue`` and a burst of ``--probe-burst`` requests at
   once -> how many got 503 and what the 503 says.

The model is a bundle (``--model DIR``) or, without one, a tiny random-init llava built
here (every answer runs to ``--max-tokens``). Usage::

    python benchmarks/serve_load.py                          # tiny model, 8 clients
    python benchmarks/serve_load.py --model runs/demo/model/04-msa3/bundle --clients 16
    python benchmarks/serve_load.py --out serve_load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.serve: the tiny bundle

QUESTION = "Write the findings of the radiology report for this chest X-ray."


def _request(url: str, tokens: int, i: int) -> dict[str, Any]:
    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": f"{QUESTION} (client request {i})"},
                ],
            }
        ],
        "max_tokens": tokens,
    }


class Server:
    """The app under uvicorn on a free loopback port, in a thread."""

    def __init__(self, registry: Any, **settings: Any) -> None:
        import uvicorn

        from radixpert.serve.app import ServeSettings, create_app

        self.app = create_app(registry, ServeSettings(**settings))
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _load(base: str, url: str, args: argparse.Namespace, clients: int) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(args.requests))
    deadline = time.monotonic() + args.seconds
    tokens = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for i in counter:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            r = await http.post(
                f"{base}/v1/chat/completions", json=_request(url, args.max_tokens, i)
            )
            latencies.append(time.perf_counter() - t0)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                tokens += r.json()["usage"]["completion_tokens"]

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as h:
        await asyncio.gather(*(client(h) for _ in range(clients)))
    wall = time.perf_counter() - t0
    done = len(latencies)
    return {
        "clients": clients,
        "requests": done,
        "statuses": statuses,
        "errors": done - statuses.get(200, 0),
        "seconds": round(wall, 3),
        "p50_s": round(_percentile(latencies, 0.5), 4),
        "p99_s": round(_percentile(latencies, 0.99), 4),
        "requests_per_s": round(done / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
    }


def _batches(base: str) -> float:
    import httpx

    text = httpx.get(f"{base}/metrics").text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("radixpert_batch_rows_")
    }
    count = values.get("radixpert_batch_rows_count", 0)
    return round(values.get("radixpert_batch_rows_sum", 0) / count, 2) if count else 0.0


async def _burst(base: str, url: str, n: int, tokens: int) -> dict[str, Any]:
    import httpx

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=n)) as h:
        replies = await asyncio.gather(
            *(
                h.post(f"{base}/v1/chat/completions", json=_request(url, tokens, i))
                for i in range(n)
            )
        )
    statuses: dict[int, int] = {}
    for r in replies:
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    busy = next((r for r in replies if r.status_code == 503), None)
    return {
        "burst": n,
        "statuses": statuses,
        "503_body": busy.json() if busy is not None else None,
        "503_retry_after": busy.headers.get("retry-after") if busy is not None else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a bundle (default: a tiny random-init llava)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    ap.add_argument("--requests", type=int, default=96, help="requests per load run (96)")
    ap.add_argument("--seconds", type=float, default=60.0, help="time limit per load run (60)")
    ap.add_argument("--sequential", type=int, default=20, help="requests one at a time (20)")
    ap.add_argument("--max-tokens", type=int, default=16, help="tokens per answer (16)")
    ap.add_argument("--max-batch", type=int, default=8, help="rows per generate call (8)")
    ap.add_argument("--probe-queue", type=int, default=2, help="queue size of the probe (2)")
    ap.add_argument("--probe-burst", type=int, default=12, help="requests in the burst (12)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()

    import numpy as np
    from tests.serve import png_data_url, tiny_bundle

    from radixpert.serve.models import ModelRegistry, Request, Sampling, conversation_from_messages
    from radixpert.serve.security import ImageLimits, decode_image

    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or str(tiny_bundle(Path(tmp) / "tiny-llava"))
        registry = ModelRegistry.load([path])
        served = registry.get(None)
        rng = np.random.default_rng(0)
        url = png_data_url((rng.random((256, 256)) * 255).astype(np.uint8))

        # direct generation of the same request, no HTTP (step 1)
        from radixpert.serve.app import ChatRequest

        body = ChatRequest(**_request(url, args.max_tokens, 0))
        conv, urls = conversation_from_messages("bench", body.messages)
        images = [decode_image(u.url, ImageLimits()) for _, u in urls]
        sampling = Sampling(max_new_tokens=args.max_tokens)
        served.generate([Request(conv, images)], sampling)  # warm-up

        results: dict[str, Any] = {
            "model": served.name,
            "family": served.family,
            "max_tokens": args.max_tokens,
        }
        with Server(registry, max_batch=args.max_batch, max_waiting=max(64, args.clients)) as base:
            import httpx

            httpx.post(
                f"{base}/v1/chat/completions", json=_request(url, args.max_tokens, 0), timeout=600
            )  # warm-up
            # Direct and HTTP alternate, so that both see the same machine load.
            direct, seq = [], []
            for _ in range(args.sequential):
                t0 = time.perf_counter()
                served.generate([Request(conv, images)], sampling)
                direct.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                r = httpx.post(
                    f"{base}/v1/chat/completions",
                    json=_request(url, args.max_tokens, 0),  # the direct call's request
                    timeout=600,
                )
                seq.append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
            results["direct_ms"] = round(1000 * statistics.median(direct), 2)
            results["sequential_ms"] = round(1000 * statistics.median(seq), 2)
            results["overhead_ms"] = round(results["sequential_ms"] - results["direct_ms"], 2)
            results["load_batched"] = asyncio.run(_load(base, url, args, args.clients))
            results["load_batched"]["mean_rows_per_batch"] = _batches(base)
        with Server(registry, max_batch=1, max_waiting=max(64, args.clients)) as base:
            results["load_unbatched"] = asyncio.run(_load(base, url, args, args.clients))
        with Server(
            registry, max_batch=args.max_batch, max_waiting=args.probe_queue, batch_wait_ms=0
        ) as base:
            results["full_queue"] = asyncio.run(
                _burst(base, url, args.probe_burst, args.max_tokens)
            )
    results["machine"] = f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"
    print(json.dumps(results, indent=2))
    if args.out:
        from radixpert.io import atomic_write

        with atomic_write(args.out) as f:
            f.write(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
