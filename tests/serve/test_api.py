"""The OpenAI-compatible API of ``radixpert serve`` on tiny random-init llava and Mllama bundles:
response shapes, streaming, several models, batching across clients, the full queue, metrics,
logs without request content, and a real uvicorn server on loopback."""

from __future__ import annotations

import base64
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from radixpert.infer.generate import generate_answers
from radixpert.instruct.conversation import Conversation
from radixpert.serve.app import REPORT_PROMPT, ServeSettings, boxes_in, create_app
from tests.serve import png_data_url, served_models, sse_events, user_message

QUESTION = "write the findings of the radiology report for this chest x-ray."


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return served_models(tmp_path_factory.getbasetemp() / "serve-models")


def _client(registry: Any, **settings: Any) -> TestClient:
    return TestClient(create_app(registry, ServeSettings(**settings)))


def _direct(served: Any, tmp_path: Path, url: str, prompt: str, tokens: int) -> str:
    """The project's batch generation (``generate_answers``) on the same image, from a file."""
    (tmp_path / "x.png").write_bytes(base64.b64decode(url.split(",", 1)[1]))
    conv = Conversation(
        id="x",
        image=["x.png"],
        conversations=[{"from": "human", "value": f"<image>\n{prompt}"}],
        task="chat",
        study_id="x",
        dataset="test",
    )
    answers = generate_answers(
        served.model,
        served.processor,
        [conv],
        image_root=tmp_path,
        max_new_tokens=tokens,
        progress=False,
    )
    return answers[0]


def test_chat_completion_matches_batch_generation(registry: Any, tmp_path: Path) -> None:
    url = png_data_url()
    with _client(registry) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"model": "llava", "messages": [user_message(QUESTION, url)], "max_tokens": 9},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "llava" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    served = registry.get("llava")
    assert choice["message"]["content"] == _direct(served, tmp_path, url, QUESTION, 9)
    usage = body["usage"]
    turns = [[{"from": "human", "value": "<image>\n" + QUESTION}]]
    prompt = served.processor([[np.zeros((8, 8))]], turns, add_generation_prompt=True)
    assert usage["prompt_tokens"] == int(prompt["attention_mask"].sum())
    assert 1 <= usage["completion_tokens"] <= 9
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_openai_client_talks_to_the_server(registry: Any) -> None:
    openai = pytest.importorskip(
        "openai",
        reason="the openai package is not installed (pip install openai); the wire "
        "format is checked field by field in test_chat_completion_matches_batch_generation",
    )
    with _client(registry, token="t" * 20) as client:
        api = openai.OpenAI(base_url="http://testserver/v1", api_key="t" * 20, http_client=client)
        out = api.chat.completions.create(
            model="llava", messages=[user_message(QUESTION, png_data_url())], max_tokens=5
        )
        assert out.choices[0].message.role == "assistant"
        assert [m.id for m in api.models.list().data] == ["llava", "mllama"]


def test_stream_reassembles_to_the_greedy_answer(registry: Any) -> None:
    request = {"messages": [user_message(QUESTION, png_data_url())], "max_tokens": 12}
    with _client(registry) as client:
        plain = client.post("/v1/chat/completions", json=request).json()
        r = client.post(
            "/v1/chat/completions",
            json={**request, "stream": True, "stream_options": {"include_usage": True}},
        )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(
        c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks
    )
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) > 1
    assert text == plain["choices"][0]["message"]["content"]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finals[-1]["choices"][0]["finish_reason"] == plain["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_several_models_by_name(registry: Any, tmp_path: Path) -> None:
    url = png_data_url()
    with _client(registry) as client:
        listed = client.get("/v1/models").json()
        r = client.post(
            "/v1/chat/completions",
            json={"model": "mllama", "messages": [user_message(QUESTION, url)], "max_tokens": 6},
        )
        default = client.post(
            "/v1/chat/completions",
            json={"messages": [user_message(QUESTION, url)], "max_tokens": 6},
        )
        missing = client.post(
            "/v1/chat/completions", json={"model": "gpt-4", "messages": [user_message(QUESTION)]}
        )
    assert [(m["id"], m["family"]) for m in listed["data"]] == [
        ("llava", "llava"),
        ("mllama", "mllama"),
    ]
    assert r.json()["model"] == "mllama" and default.json()["model"] == "llava"
    answer = r.json()["choices"][0]["message"]["content"]
    assert answer == _direct(registry.get("mllama"), tmp_path, url, QUESTION, 6)
    assert missing.status_code == 404 and "gpt-4" in missing.json()["error"]["message"]


def test_n_temperature_and_seed(registry: Any) -> None:
    sampled = {
        "messages": [user_message(QUESTION, png_data_url())],
        "max_tokens": 10,
        "n": 3,
        "temperature": 1.5,
        "top_p": 0.95,
        "seed": 7,
    }
    with _client(registry) as client:
        a = client.post("/v1/chat/completions", json=sampled).json()
        b = client.post("/v1/chat/completions", json=sampled).json()
        greedy = client.post("/v1/chat/completions", json={**sampled, "temperature": 0}).json()
        bad = client.post("/v1/chat/completions", json={**sampled, "temperature": 3})
    texts = [c["message"]["content"] for c in a["choices"]]
    assert [c["index"] for c in a["choices"]] == [0, 1, 2]
    assert texts == [c["message"]["content"] for c in b["choices"]]  # the seed reproduces
    assert len(set(texts)) > 1  # three different samples
    assert len({c["message"]["content"] for c in greedy["choices"]}) == 1
    assert bad.status_code == 400 and "temperature" in bad.json()["error"]["message"]


def test_requests_of_several_clients_share_one_generate_call(registry: Any) -> None:
    served = registry.get("llava")
    calls: list[int] = []
    original = served.generate

    def counting(requests: Any, sampling: Any) -> Any:
        calls.append(len(requests))
        return original(requests, sampling)

    served.generate = counting
    try:
        questions = [f"{QUESTION} case {i}" for i in range(4)]
        with _client(registry, batch_wait_ms=400) as client:
            alone = [
                client.post(
                    "/v1/chat/completions", json={"messages": [user_message(q)], "max_tokens": 6}
                ).json()
                for q in questions
            ]
            calls.clear()
            results: list[Any] = [None] * 4

            def ask(i: int) -> None:
                results[i] = client.post(
                    "/v1/chat/completions",
                    json={"messages": [user_message(questions[i])], "max_tokens": 6},
                ).json()

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            metrics = client.get("/metrics").text
    finally:
        del served.generate
    assert max(calls) > 1 and sum(calls) == 4  # batched across the four clients
    assert [r["choices"][0]["message"]["content"] for r in results] == [
        r["choices"][0]["message"]["content"] for r in alone
    ]
    assert "radixpert_batch_rows_count" in metrics


def test_full_queue_answers_503(registry: Any) -> None:
    served = registry.get("llava")
    release = threading.Event()
    original = served.generate

    def blocked(requests: Any, sampling: Any) -> Any:
        release.wait(30)
        return original(requests, sampling)

    served.generate = blocked
    statuses: dict[str, int] = {}
    try:
        with _client(registry, max_waiting=1, batch_wait_ms=0) as client:
            queue = client.app.state.queue
            request = {"messages": [user_message(QUESTION)], "max_tokens": 3}

            def ask(name: str) -> None:
                statuses[name] = client.post("/v1/chat/completions", json=request).status_code

            first = threading.Thread(target=ask, args=("running",))
            first.start()
            _wait(lambda: queue.running == 1)
            second = threading.Thread(target=ask, args=("waiting",))
            second.start()
            _wait(lambda: queue.depth == 1)
            full = client.post("/v1/chat/completions", json=request)
            release.set()
            first.join()
            second.join()
            metrics = client.get("/metrics").text
    finally:
        release.set()
        del served.generate
    assert full.status_code == 503, full.text
    assert full.headers["retry-after"] == "1"
    assert (
        full.json()["error"]["type"] == "server_busy" and "busy" in full.json()["error"]["message"]
    )
    assert statuses == {"running": 200, "waiting": 200}
    assert 'radixpert_queue_rejected_total{reason="full"} 1.0' in metrics


def test_queue_timeout_answers_503(registry: Any) -> None:
    served = registry.get("llava")
    original = served.generate

    def slow(requests: Any, sampling: Any) -> Any:
        time.sleep(0.6)
        return original(requests, sampling)

    served.generate = slow
    codes: list[int] = []
    try:
        with _client(registry, queue_timeout_s=0.3, batch_wait_ms=0) as client:
            q1 = {"messages": [user_message(QUESTION)], "max_tokens": 2}
            q2 = {**q1, "max_tokens": 3}  # other settings: never in the first one's batch
            t = threading.Thread(
                target=lambda: codes.append(
                    client.post("/v1/chat/completions", json=q1).status_code
                )
            )
            t.start()
            _wait(lambda: client.app.state.queue.running == 1)
            late = client.post("/v1/chat/completions", json=q2)
            t.join()
    finally:
        del served.generate
    assert codes == [200]
    assert late.status_code == 503 and "in the queue" in late.json()["error"]["message"]


def test_metrics_move(registry: Any) -> None:
    with _client(registry) as client:
        before = _samples(client.get("/metrics").text)
        client.post(
            "/v1/chat/completions", json={"messages": [user_message(QUESTION)], "max_tokens": 4}
        )
        after = _samples(client.get("/metrics").text)
    key = 'radixpert_requests_total{path="/v1/chat/completions",status="200"}'
    assert after[key] == before.get(key, 0) + 1
    gen = 'radixpert_generated_tokens_total{model="llava"}'
    assert 1 <= after[gen] - before.get(gen, 0) <= 4
    hist = 'radixpert_request_duration_seconds_count{path="/v1/chat/completions"}'
    assert after[hist] == before.get(hist, 0) + 1
    assert after["radixpert_queue_depth"] == 0


@pytest.mark.parametrize("log_content", [False, True])
def test_logs_hold_no_request_content(
    registry: Any, caplog: pytest.LogCaptureFixture, log_content: bool
) -> None:
    secret = "patient zebra-quokka has a pneumothorax"
    url = png_data_url()
    caplog.set_level(logging.DEBUG)
    with _client(registry, log_content=log_content) as client:
        ok = client.post(
            "/v1/chat/completions", json={"messages": [user_message(secret, url)], "max_tokens": 4}
        )
        bad = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": secret}], "max_tokens": "many"},
        )
        client.post(
            "/v1/chat/completions",
            json={"messages": [user_message(secret, url)], "max_tokens": 2, "stream": True},
        )
    assert ok.status_code == 200 and bad.status_code == 400
    assert secret not in bad.text  # a validation error names the field, not the value
    logged = caplog.text
    assert "chatcmpl-" in logged  # the requests are logged, by id
    assert (secret in logged) == log_content
    assert (url[30:90] in logged) is False  # never the image


def test_report_endpoint(registry: Any, tmp_path: Path) -> None:
    url = png_data_url()
    with _client(registry) as client:
        r = client.post("/v1/report", json={"image": url, "max_tokens": 7})
        bare = client.post("/v1/report", json={"image": url.split(",", 1)[1], "max_tokens": 7})
        attention = client.post("/v1/report", json={"image": url, "attention": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["report"] == _direct(registry.get("llava"), tmp_path, url, REPORT_PROMPT, 7)
    assert bare.json()["report"] == body["report"]
    assert body["boxes"] == boxes_in(body["report"])[0]
    assert attention.status_code == 200, attention.text
    assert attention.json()["attention"]["maps"][0]["kind"] == "report"


def test_boxes_in_validates() -> None:
    text = "effusion [0.10, 0.52, 0.41, 0.88]; nodule [0.6, 0.2, 0.5, 0.3] and [0.2, 0.1, 0.3, 1.4]"
    valid, invalid = boxes_in(text)
    assert valid == [[0.10, 0.52, 0.41, 0.88]]
    assert invalid == [[0.6, 0.2, 0.5, 0.3], [0.2, 0.1, 0.3, 1.4]]


def test_real_uvicorn_server_on_loopback(registry: Any) -> None:
    import httpx
    import uvicorn

    app = create_app(registry, ServeSettings(token="s" * 24))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: server.started, 30)
        port = server.servers[0].sockets[0].getsockname()[1]
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": "Bearer " + "s" * 24}
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        assert httpx.get(f"{base}/v1/models").status_code == 401
        request = {"messages": [user_message(QUESTION, png_data_url())], "max_tokens": 8}
        plain = httpx.post(
            f"{base}/v1/chat/completions", json=request, headers=headers, timeout=60
        ).json()
        with httpx.stream(
            "POST",
            f"{base}/v1/chat/completions",
            headers=headers,
            timeout=60,
            json={**request, "stream": True},
        ) as r:
            text = "".join(r.iter_text())
        events = sse_events(text)
        streamed = "".join(
            e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"]
        )
        assert streamed == plain["choices"][0]["message"]["content"]
    finally:
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_cli_refuses_a_public_host_without_token(capsys: pytest.CaptureFixture) -> None:
    from radixpert.cli import main

    assert main(["serve", "--model", "nowhere", "--host", "0.0.0.0"]) == 2
    assert "--token-file" in capsys.readouterr().err


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _wait(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)
