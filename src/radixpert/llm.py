"""An opt-in client for a local OpenAI-compatible chat endpoint (vLLM, llama.cpp, Ollama, ...).

Nothing in radixpert calls it unless asked (`--llm-url`). Patients' text must not leave the
user's machines, so the client refuses any host that is not this machine (loopback) unless the
caller passes `allow_remote=True` (`--llm-allow-remote`), which is the explicit opt-in for
sending report text to another host.

    client = ChatClient("http://127.0.0.1:8000/v1", model="qwen2.5-7b-instruct")
    text = client.complete([{"role": "user", "content": "..."}])
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlparse

from radixpert.errors import LLMError

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True when `host` resolves only to loopback addresses (127.0.0.0/8, ::1)."""
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


class ChatClient:
    """`POST {base_url}/chat/completions` with the OpenAI request and response layout.

    Args:
        base_url: e.g. "http://127.0.0.1:8000/v1".
        model: the model name the server expects.
        api_key_env: name of an environment variable holding a bearer token, if any.
        allow_remote: permit a non-loopback host (sends text off this machine).
        timeout: seconds per request.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = None,
        allow_remote: bool = False,
        timeout: float = 120.0,
    ) -> None:
        parsed = urlparse(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise LLMError(f"--llm-url {base_url!r}: expected http(s)://host[:port]/v1")
        if not allow_remote and not is_loopback(parsed.hostname):
            raise LLMError(
                f"--llm-url {base_url!r} is not on this machine; report text would leave it. "
                "Pass --llm-allow-remote to allow that explicitly."
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        self.timeout = timeout

    def complete(
        self, messages: list[dict[str, str]], temperature: float = 0.0, max_tokens: int = 1024
    ) -> str:
        """The assistant message of one chat completion."""
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "temperature": temperature,
                "max_tokens": max_tokens,
            }
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                data: Any = json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            # The server's own reason (OpenAI layout: {"error": {"message": ...}}) says more
            # than the status line.
            detail = ""
            try:
                detail = e.read().decode("utf-8", "replace")
                detail = str(json.loads(detail)["error"]["message"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
            reason = f": {detail[:300]}" if detail else ""
            raise LLMError(f"{self.url}: HTTP {e.code} {e.reason}{reason}", e.code) from None
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
            raise LLMError(f"{self.url}: {e}") from None
        try:
            return str(data["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"{self.url}: unexpected response shape: {str(data)[:200]}") from None
