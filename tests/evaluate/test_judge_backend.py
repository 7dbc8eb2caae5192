"""The LLM-judge backend: strict parsing with retries, counted failures, the cache, transport
errors, the loopback rule, concurrency, and a local transformers judge (tiny random model)."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest

from radixpert.errors import LLMError, MetricUnavailable
from radixpert.evaluate.judges import backend as jb
from radixpert.evaluate.judges.backend import (
    CORRECTION,
    EndpointJudge,
    JudgeParseError,
    LocalJudge,
    ask,
    ask_all,
    backend_from_options,
    json_answer,
)
from tests.evaluate.judge_server import JudgeServer, last_user


@pytest.fixture(autouse=True)
def _fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RADIXPERT_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(jb, "TRANSPORT_BACKOFF_S", 0.0)


def parse_number(text: str) -> int:
    """A toy strict parser: the answer must be a bare integer."""
    if not text.strip().isdigit():
        raise JudgeParseError("answer with a number only")
    return int(text)


def question(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i}: how many?"}]


def number_of(body: dict[str, Any]) -> int:
    first = body["messages"][0]["content"]
    return int(first.split()[1].rstrip(":"))


def test_retry_appends_the_answer_and_the_reason():
    def respond(body):
        return "12" if len(body["messages"]) > 1 else "Twelve, I think."

    with JudgeServer(respond) as server:
        j = ask(EndpointJudge(server.url, "judge-a"), question(1), parse_number, retries=2)
    assert (j.value, j.attempts, j.ok, j.cached) == (12, 2, True, False)
    retry = server.requests[1]["messages"]
    assert retry[:1] == question(1)
    assert retry[1] == {"role": "assistant", "content": "Twelve, I think."}
    assert retry[2] == {
        "role": "user",
        "content": CORRECTION.format(error="answer with a number only"),
    }
    assert server.requests[1]["temperature"] == 0.0


def test_never_parsed_is_a_counted_failure_and_not_cached():
    with JudgeServer(lambda body: "no idea") as server:
        judge = EndpointJudge(server.url, "judge-a")
        first = ask_all(judge, [question(1), question(2)], parse_number, prompt_version="v1")
        assert len(server.requests) == 6  # 2 questions x (1 + 2 retries)
        assert all(not j.ok and j.value is None and j.attempts == 3 for j in first)
        assert first[0].raw == "no idea" and first[0].error == "answer with a number only"
        assert jb.judge_settings(first) == {"questions": 2, "failed": 2, "cached": 0, "retried": 2}
        again = ask_all(judge, [question(1), question(2)], parse_number, prompt_version="v1")
        assert len(server.requests) == 12  # asked again: failures are not cached
        assert not any(j.cached for j in again)


def test_cache_hit_then_miss_on_identity_or_prompt_version():
    with JudgeServer(lambda body: str(number_of(body) * 10)) as server:
        conversations = [question(i) for i in range(3)]
        judge = EndpointJudge(server.url, "judge-a")
        first = ask_all(judge, conversations, parse_number, prompt_version="v1")
        assert [j.value for j in first] == [0, 10, 20] and len(server.requests) == 3
        second = ask_all(judge, conversations, parse_number, prompt_version="v1")
        assert len(server.requests) == 3  # nothing asked
        assert [j.value for j in second] == [0, 10, 20]
        assert all(j.cached and j.attempts == 0 for j in second)
        ask_all(judge, conversations, parse_number, prompt_version="v2")
        assert len(server.requests) == 6
        other = EndpointJudge(server.url, "judge-b")
        assert other.identity != judge.identity
        ask_all(other, conversations, parse_number, prompt_version="v1")
        assert len(server.requests) == 9
        assert server.requests[-1]["model"] == "judge-b"
        ask_all(judge, conversations, parse_number, prompt_version="v1", cache=False)
        assert len(server.requests) == 12


def test_identical_questions_are_asked_once():
    with JudgeServer(lambda body: "7") as server:
        out = ask_all(
            EndpointJudge(server.url, "judge-a"),
            [question(1), question(1), question(1)],
            parse_number,
            prompt_version="v1",
        )
    assert [j.value for j in out] == [7, 7, 7] and len(server.requests) == 1


def test_transport_errors_are_retried_then_raised():
    calls = {"n": 0}

    def flaky(body):
        calls["n"] += 1
        return (503, '{"error": "loading"}') if calls["n"] <= 2 else "5"

    with JudgeServer(flaky) as server:
        judge = EndpointJudge(server.url, "judge-a")
        assert ask(judge, question(1), parse_number).value == 5
        assert len(server.requests) == 3
    with JudgeServer(lambda body: (500, "{}")) as server:
        judge = EndpointJudge(server.url, "judge-a")
        with pytest.raises(LLMError, match="500"):
            ask(judge, question(1), parse_number, transport_retries=2)
        assert len(server.requests) == 3


def test_a_transport_failure_keeps_what_was_answered():
    def respond(body):
        return (500, "{}") if number_of(body) == 3 else "1"

    with JudgeServer(respond) as server:
        judge = EndpointJudge(server.url, "judge-a")
        conversations = [question(i) for i in range(4)]
        with pytest.raises(LLMError):
            ask_all(judge, conversations, parse_number, prompt_version="v1", workers=1)
        asked = len(server.requests)
        with pytest.raises(LLMError):
            ask_all(judge, conversations, parse_number, prompt_version="v1", workers=1)
        # Questions 0-2 were answered before the failure and are not asked again.
        assert len(server.requests) - asked == 3  # only question 3, with its retries


def test_remote_host_needs_the_opt_in():
    with pytest.raises(LLMError, match="--judge-allow-remote"):
        EndpointJudge("http://10.20.30.40:8000/v1", "judge-a")
    judge = EndpointJudge("http://10.20.30.40:8000/v1", "judge-a", allow_remote=True)
    assert judge.identity == "endpoint:judge-a@http://10.20.30.40:8000/v1"
    with pytest.raises(LLMError, match="--judge-url"):
        EndpointJudge("ftp://127.0.0.1/v1", "judge-a")


def test_options_name_one_judge():
    assert backend_from_options() is None
    with pytest.raises(LLMError, match="not both"):
        backend_from_options(judge_url="http://127.0.0.1:1/v1", judge_local="x")
    with pytest.raises(LLMError, match="--judge-model"):
        backend_from_options(judge_url="http://127.0.0.1:1/v1")
    judge = backend_from_options(judge_url="http://127.0.0.1:1/v1", judge_model="m")
    assert isinstance(judge, EndpointJudge) and judge.concurrent


def test_concurrent_questions_keep_their_order():
    lock = threading.Lock()
    state = {"now": 0, "most": 0}

    def respond(body):
        i = number_of(body)
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.02 * (8 - i))  # the first questions answer last
        with lock:
            state["now"] -= 1
        return str(i)

    with JudgeServer(respond) as server:
        out = ask_all(
            EndpointJudge(server.url, "judge-a"),
            [question(i) for i in range(8)],
            parse_number,
            prompt_version="v1",
            workers=4,
        )
    assert [j.value for j in out] == list(range(8))
    assert state["most"] > 1


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("The counts are {}", "no text before"),
        ('{"a": 1} Done.', "text after"),
        ('{"a": 1, "a": 2}', "appears twice"),
        ('{"a": NaN}', "NaN is not allowed"),
        ('{"a": 1', "not valid JSON"),
        ("```\n[1, 2\n```", "not valid JSON"),
    ],
)
def test_json_answer_is_strict(text, reason):
    with pytest.raises(JudgeParseError, match=reason):
        json_answer(text)


def test_json_answer_takes_one_fence():
    assert json_answer('```json\n{"a": [1, 2]}\n```\n') == {"a": [1, 2]}
    assert json_answer("  [0]  ") == [0]


# --- a local judge: tiny random-weight chat model, saved with save_pretrained --------------


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tests.hub.vlm import QWEN2_BPE, QWEN2_CHAT_TEMPLATE, QWEN2_SPECIALS, qwen2_tokenizer

    folder = tmp_path_factory.mktemp("tiny-judge")
    tokenizer = qwen2_tokenizer(QWEN2_BPE, chat_template=QWEN2_CHAT_TEMPLATE)
    endoftext, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    config = Qwen2Config(
        vocab_size=QWEN2_BPE + len(QWEN2_SPECIALS),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=32,
        max_position_embeddings=4096,
        bos_token_id=endoftext,
        eos_token_id=im_end,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_local_judge_garbage_ends_as_counted_failures(tiny_chat_model):
    from radixpert.evaluate.judges.errors import CheXprompt

    judge = LocalJudge(str(tiny_chat_model), device="cpu")
    assert not judge.concurrent
    assert judge.identity.startswith(f"local:{tiny_chat_model}:") and "float32" in judge.identity
    assert LocalJudge(str(tiny_chat_model), device="cpu").identity == judge.identity
    metric = CheXprompt(backend=judge, judge_retries=1)
    metric.max_tokens = 8  # random weights: a few tokens of noise are enough
    result = metric.compute(["Small left pleural effusion."], ["No acute findings."])
    assert result.detailed["failed"] == 1 and result.detailed["failed_indices"] == [0]
    assert result.settings["questions"] == 1 and result.settings["retried"] == 1
    assert result.settings["judge_dtype"] == "float32"
    assert math.isnan(result.per_sample[0]) and math.isnan(result.aggregate)
    # The answers were decoded text handed to the strict parser, never a guess.
    assert result.detailed["failure_reasons"]


def test_local_judge_identity_follows_its_files(tiny_chat_model, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_chat_model, copy)
    before = LocalJudge(str(copy), device="cpu").identity
    config = copy / "generation_config.json"
    config.write_text(config.read_text().replace("}", ', "note": 1}', 1))
    assert LocalJudge(str(copy), device="cpu").identity != before
    assert LocalJudge(str(copy), device="cpu", dtype="bfloat16").identity.endswith(":bfloat16")


def test_local_judge_needs_a_chat_template(tiny_chat_model, tmp_path):
    import json
    import shutil

    copy = tmp_path / "plain"
    shutil.copytree(tiny_chat_model, copy)
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    cfg = copy / "tokenizer_config.json"
    data = json.loads(cfg.read_text())
    data.pop("chat_template", None)
    cfg.write_text(json.dumps(data))
    with pytest.raises(MetricUnavailable, match="no chat template"):
        LocalJudge(str(copy), device="cpu").complete(question(1), max_tokens=2)


def test_local_judge_of_a_hub_id_names_its_snapshot(hub_checkpoint):
    snapshot = hub_checkpoint("Qwen/Qwen2-7B-Instruct")
    judge = LocalJudge("Qwen/Qwen2-7B-Instruct", device="cpu")
    assert judge.folder == snapshot
    assert (
        judge.identity == f"local:Qwen/Qwen2-7B-Instruct:{jb.model_fingerprint(snapshot)}:float32"
    )
    assert "uncached" in LocalJudge("nobody/not-in-the-cache", device="cpu").identity
    with pytest.raises(MetricUnavailable, match="cannot be loaded"):
        LocalJudge("nobody/not-in-the-cache", device="cpu").complete(question(1), max_tokens=2)
    assert last_user({"messages": question(2)}) == "question 2: how many?"


def test_a_refused_request_is_not_asked_again_and_the_reason_is_shown():
    import json

    from radixpert.evaluate.judges.backend import EndpointJudge, ask

    refusal = json.dumps({"error": {"message": "messages[0]: system messages are not supported"}})
    with JudgeServer(lambda body: (400, refusal)) as server:
        with pytest.raises(LLMError, match=r"HTTP 400.*system messages are not supported") as e:
            ask(EndpointJudge(server.url, "m"), [{"role": "user", "content": "q"}], str)
        assert e.value.status == 400
        assert len(server.requests) == 1
