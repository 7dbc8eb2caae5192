"""The opt-in LLM passes, against a fake OpenAI-compatible server on loopback.

The server answers /v1/chat/completions with whatever the test queues; nothing leaves the
machine, and the client refuses other hosts unless told otherwise.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from radixpert.cli import main
from radixpert.data.llm_passes import llm_prior_sentences
from radixpert.data.prepare import PriorRemover
from radixpert.data.study import Box, Image, Study, read_studies, write_studies
from radixpert.errors import LLMError
from radixpert.instruct.conversation import read_conversations
from radixpert.llm import ChatClient, is_loopback
from radixpert.vocab import OBSERVATIONS


@pytest.fixture
def server():
    answers: list[str] = []
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            content = answers.pop(0) if answers else "no answer queued"
            data = json.dumps(
                {"choices": [{"message": {"role": "assistant", "content": content}}]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/v1", answers, seen
    httpd.shutdown()


def test_remote_hosts_need_explicit_opt_in():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("10.0.0.5")
    with pytest.raises(LLMError, match="--llm-allow-remote"):
        ChatClient("http://10.0.0.5:8000/v1", "m")
    ChatClient("http://10.0.0.5:8000/v1", "m", allow_remote=True)  # explicit: allowed


def test_prior_sentences_only_drop_never_add(server):
    url, answers, seen = server
    client = ChatClient(url, "tiny")
    text = "Heart size is normal. Effusion is unchanged from prior. No pneumothorax."
    answers.append('Sure: {"prior": [2]}')
    kept, removed = llm_prior_sentences(text, client)
    assert kept == "Heart size is normal. No pneumothorax."
    assert removed == ["Effusion is unchanged from prior."]
    assert (
        seen[0]["model"] == "tiny"
        and "2. Effusion is unchanged" in seen[0]["messages"][0]["content"]
    )
    answers.append('{"prior": [7]}')
    with pytest.raises(LLMError, match="do not exist"):
        llm_prior_sentences(text, client)
    answers.append("I think sentence two.")
    with pytest.raises(LLMError, match="not"):
        llm_prior_sentences(text, client)


def test_prior_remover_falls_back_explicitly(server):
    url, answers, _ = server
    remover = PriorRemover("llm", ChatClient(url, "tiny"))
    s = Study("s1", "d", findings="Lungs are clear. Stable cardiomegaly.", impression="")
    answers.append("garbage")
    out = remover(s)
    assert out.extra["prior_removal"] == "rules (llm answer unusable)"
    assert out.findings == "Lungs are clear."
    assert remover.counts["llm failed, rules used"] == 1


def study(i):
    labels = {o: None for o in OBSERVATIONS}
    labels["Cardiomegaly"] = 1
    return Study(
        f"s{i}",
        "d",
        images=[Image(f"{i}.png", "PA")],
        findings="Enlarged heart.",
        labels=labels,
        boxes=[Box("Cardiomegaly", 0.3, 0.4, 0.7, 0.8)],
    )


def test_llm_conversations_through_the_cli(server, tmp_path, capsys):
    url, answers, _ = server
    src, out = tmp_path / "s.jsonl", tmp_path / "c.jsonl"
    write_studies([study(0), study(1)], src)
    answers.append(
        '[{"q": "Is the heart enlarged?", "a": "Yes, there is cardiomegaly."},'
        ' {"q": "Where?", "a": "[0.30, 0.40, 0.70, 0.80]"}]'
    )
    answers.append("not json")  # the second study fails: counted, not guessed
    args = [
        "data",
        "instruct",
        str(src),
        "--out",
        str(out),
        "--tasks",
        "conversation-llm=1",
    ]
    assert main(args) == 2  # no endpoint given
    assert "needs --llm-url" in capsys.readouterr().err
    assert main([*args, "--llm-url", url, "--llm-model", "tiny"]) == 0
    printed = capsys.readouterr().out
    assert "failed:conversation-llm: 1" in printed
    (conv,) = list(read_conversations(out))
    assert conv.conversations[0]["value"] == "<image>\nIs the heart enlarged?"
    assert len(conv.conversations) == 4


def test_prepare_with_rule_based_prior_removal(tmp_path, capsys):
    folder = tmp_path / "iu"
    folder.mkdir()
    (folder / "ReXRank_x.json").write_text(json.dumps({"a": {
        "image_path": ["a.png"], "frontal_lateral": ["Frontal"],
        "section_findings": "Heart is normal. Effusion has increased since the prior study.",
        "section_impression": "Small effusion."}}))  # fmt: skip
    out = tmp_path / "o.jsonl"
    assert (
        main(
            [
                "data",
                "prepare",
                "rexrank",
                "--root",
                str(folder),
                "--out",
                str(out),
                "--remove-priors",
                "rules",
                "--no-check-images",
            ]
        )
        == 0
    )
    (s,) = read_studies(out)
    assert s.findings == "Heart is normal."
    assert s.extra["removed_prior_sentences"] == {
        "findings": ["Effusion has increased since the prior study."]
    }
