"""A real OpenAI-compatible chat server on loopback, for the LLM-judge tests.

    def respond(body):                       # the request's JSON body -> the answer
        return "Clinically significant errors: ..."   # or (status, raw_body) for an error
    with JudgeServer(respond) as server:
        backend = EndpointJudge(server.url, model="judge-test")
        ...
    server.requests                          # every body received, in order

It answers ``POST /v1/chat/completions`` over HTTP (``http.server`` in a thread), in the
OpenAI response layout vLLM and SGLang return, so the judges are tested through the same
client, sockets and JSON that a real local server meets.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Respond = Callable[[dict[str, Any]], "str | tuple[int, str]"]


def last_user(body: dict[str, Any]) -> str:
    """The text of the request's last user message."""
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


class JudgeServer:
    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append(body)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, json.dumps({"error": "not found"}))
                answer = server.respond(body)
                if isinstance(answer, tuple):
                    return self._send(*answer)
                return self._send(
                    200,
                    json.dumps(
                        {
                            "id": f"chatcmpl-{len(server.requests)}",
                            "object": "chat.completion",
                            "model": body.get("model"),
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": answer},
                                    "finish_reason": "stop",
                                }
                            ],
                        }
                    ),
                )

            def _send(self, status: int, text: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> JudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
