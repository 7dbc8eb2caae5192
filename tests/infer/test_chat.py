"""`ChatSession` and `radixpert chat` on a small llava trained for seconds to answer boxes.

The model is the demo-size llava (random init, a tokenizer trained on phantom conversations)
fitted to two conversations the instruction builders wrote for one phantom (phrase grounding
and detection), so its greedy answers to those questions are the builders' boxes, produced by
the real ``generate``: the terminal test types those questions into ``python -m radixpert
chat`` under a pseudo-terminal and sees the boxes listed and drawn.
"""

from __future__ import annotations

import json
import os
import pty
import random
import re
import select
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from radixpert.data.images import load_image
from radixpert.errors import UsageError
from radixpert.infer.chat import ChatSession, run_repl
from radixpert.infer.grounding import parse_grounding
from radixpert.instruct.conversation import Conversation
from radixpert.instruct.tasks import DetectionTask, GroundingTask, parse_boxes
from tests.fitted import fit_llava


def _strip_image(question: str) -> str:
    return question.removeprefix("<image>\n")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A bundle that answers one phantom's grounding and detection questions with its boxes."""
    from radixpert.data.phantoms import generate_phantoms
    from radixpert.models.bundle import save_bundle

    root = tmp_path_factory.mktemp("chat")
    studies = generate_phantoms(16, root / "ph", size=64)
    rng = random.Random(0)
    convs = [
        c
        for s in studies
        for task in (GroundingTask("phrase"), DetectionTask())
        for c in task.build(s, rng)
    ]
    # One phantom with a phrase box and a labelled detection answer.
    study = next(
        s.id
        for s in studies
        if any(c.study_id == s.id and c.task == "grounding-phrase" for c in convs)
        and any(c.study_id == s.id and c.task == "detection" and ":" in c.conversations[1]["value"]
                for c in convs)
    )  # fmt: skip
    grounding = next(c for c in convs if c.study_id == study and c.task == "grounding-phrase")
    detection = next(c for c in convs if c.study_id == study and c.task == "detection")
    other = next(s for s in studies if s.id != study)
    image = root / "ph" / grounding.image[0]

    model, processor = fit_llava(
        image,
        [grounding.conversations, detection.conversations],
        vocabulary=[t["value"] for c in convs for t in c.conversations],
        max_steps=150,
        max_new_tokens=40,
    )
    wanted = [grounding.conversations[1]["value"], detection.conversations[1]["value"]]
    bundle = save_bundle(model, processor, root / "bundle")
    return {
        "bundle": bundle,
        "model": model,
        "processor": processor,
        "image": image,
        "other_image": root / "ph" / other.images[0].path,
        "question": _strip_image(grounding.conversations[0]["value"]),
        "answer": wanted[0],
        "detect_question": _strip_image(detection.conversations[0]["value"]),
        "detect_answer": wanted[1],
    }


@pytest.fixture
def session(trained: dict[str, Any]) -> ChatSession:
    s = ChatSession(trained["model"], trained["processor"], max_new_tokens=40)
    s.load_image(trained["image"])
    return s


class Recorder:
    """What the model receives: the prefill's token ids and the vision tower's pixels."""

    def __init__(self, model: Any) -> None:
        self.ids: list[list[int]] = []
        self.pixels: list[torch.Tensor] = []
        embed = model.get_input_embeddings()
        tower = model.model.vision_tower
        self.hooks = [
            embed.register_forward_pre_hook(self._ids),
            tower.register_forward_pre_hook(self._pixels, with_kwargs=True),
        ]

    def _ids(self, module: Any, args: tuple) -> None:
        if args[0].shape[1] > 1:  # the prompt, not one generated token
            self.ids.append(args[0][0].tolist())

    def _pixels(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.pixels.append((args[0] if args else kwargs["pixel_values"]).detach().clone())

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def test_history_grows_and_the_prompt_holds_it(trained: dict, session: ChatSession) -> None:
    processor = trained["processor"]
    recorder = Recorder(trained["model"])
    try:
        first = session.ask(trained["question"])
        assert first.text == trained["answer"]
        assert [t["from"] for t in session.turns] == ["human", "gpt"]
        assert session.turns[0]["value"] == f"<image>\n{trained['question']}"
        second = session.ask("Is there a pneumothorax?")
        assert [t["from"] for t in session.turns] == ["human", "gpt"] * 2
        assert session.turns[3]["value"] == second.text
    finally:
        recorder.remove()
    history = [*session.turns[:3]]
    expected = processor([[trained["image"]]], [history], add_generation_prompt=True)
    assert recorder.ids[1] == expected["input_ids"][0].tolist()
    text = processor.tokenizer.decode(recorder.ids[1], skip_special_tokens=True)
    assert trained["question"] in text and trained["answer"] in text
    assert "pneumothorax?" in text
    # The record is the project's Conversation, valid as training data.
    record = Conversation(**session.to_dict()).validate()
    assert record.image == [str(trained["image"].resolve())] and record.task == "chat"


def test_reset_clears_and_a_new_image_switches(trained: dict, session: ChatSession) -> None:
    session.ask(trained["question"])
    session.reset()
    assert session.turns == [] and session.last is None
    assert session.image_path == trained["image"].resolve()
    other = trained["other_image"]
    session.ask("What is shown?")
    assert len(session.turns) == 2
    path = session.load_image(other)
    assert session.turns == [] and session.conversation.image == [str(other.resolve())]
    assert path == other.resolve()
    np.testing.assert_array_equal(session.image_array, load_image(other))
    recorder = Recorder(trained["model"])
    try:
        session.ask(trained["question"])
    finally:
        recorder.remove()
    want = trained["processor"].preprocess_image(other)
    torch.testing.assert_close(recorder.pixels[0][0], want)
    assert session.turns[0]["value"].startswith("<image>\n")


def test_stream_gives_the_answer_and_its_boxes(trained: dict, session: ChatSession) -> None:
    pieces = list(session.stream(trained["detect_question"]))
    assert len(pieces) > 1  # streamed, not one block
    assert "".join(pieces) == session.last.text == trained["detect_answer"]
    label, box = trained["detect_answer"].split(": ")[0], parse_boxes(trained["detect_answer"])
    assert [(b.label, b.coords) for b in session.last.boxes] == [(label, box[0])]
    assert session.last.grounding == parse_grounding(session.last.text)
    # An answer to a question the model never saw: whatever boxes it has are the parsed ones.
    reply = session.ask("Describe the heart.", max_new_tokens=24)
    assert reply.grounding == parse_grounding(reply.text)
    assert len(reply.boxes) + len(reply.invalid) >= len(parse_boxes(reply.text))


def test_a_stream_left_early_keeps_the_history(trained: dict, session: ChatSession) -> None:
    session.ask(trained["question"])
    before = [dict(t) for t in session.turns]
    stream = session.stream(trained["detect_question"])
    next(stream)
    stream.close()
    assert session.turns == before
    assert session.ask(trained["detect_question"]).text == trained["detect_answer"]


def test_bad_questions_and_array_images(
    trained: dict, session: ChatSession, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="empty"):
        session.ask("   ")
    with pytest.raises(UsageError, match="<image>"):
        session.ask("<image> what?")
    with pytest.raises(UsageError, match="nothing to save"):
        session.save(tmp_path / "c.json")
    array = load_image(trained["image"])
    with ChatSession(trained["model"], trained["processor"], max_new_tokens=40) as s:
        kept = s.load_image(array, name="upload.png")
        assert kept.is_file() and kept.name.startswith("upload-")
        np.testing.assert_allclose(s.image_array, array, atol=1 / 65535)
        assert s.ask(trained["question"]).text == trained["answer"]
    assert not kept.exists()


def test_repl_commands_in_process(trained: dict, session: ChatSession, tmp_path: Path) -> None:
    import io

    saved, overlay = tmp_path / "chat.json", tmp_path / "boxes.png"
    lines = [trained["question"], "/boxes", f"/save {saved}", "/nope", "/image", "/help"]
    out = io.StringIO()
    assert (
        run_repl(session, overlay=overlay, stdin=io.StringIO("\n".join(lines) + "\n"), out=out) == 0
    )
    text = out.getvalue()
    assert f"model> {trained['answer']}" in text
    assert text.count(f"box 1: {trained['answer']}") == 2  # after the answer, and /boxes
    assert "error: unknown command /nope" in text and "error: /image needs a file" in text
    assert "/reset        clear the conversation" in text
    record = json.loads(saved.read_text())
    assert record["conversations"][1]["value"] == trained["answer"]
    assert overlay.is_file()


def _read_until(fd: int, pattern: str, seen: list[str], timeout: float = 60.0) -> str:
    """Reads the pseudo-terminal until ``pattern`` (a regex) shows up; returns all output."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, "".join(seen)):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {pattern!r} in the terminal:\n{''.join(seen)}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"the chat ended before {pattern!r}:\n{''.join(seen)}")
            seen.append(chunk.decode("utf-8", "replace").replace("\r\n", "\n"))
    return "".join(seen)


@pytest.mark.slow  # a subprocess (the project's marker for them); it runs by default
def test_chat_in_a_terminal_as_a_person_types(trained: dict, tmp_path: Path) -> None:
    """``python -m radixpert chat`` under a pseudo-terminal: a grounding question, /boxes,
    /image, /reset, /quit; the answer's box is listed and drawn with --overlay."""
    overlay = tmp_path / "overlay.png"
    argv = [sys.executable, "-m", "radixpert", "chat", "--model", str(trained["bundle"]),
            "--image", str(trained["image"]), "--overlay", str(overlay),
            "--device", "cpu", "--max-new-tokens", "40"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TERM": "dumb"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the chat, on the terminal's other end
        os.execve(argv[0], argv, env)
    seen: list[str] = []

    def type_line(line: str, then: str) -> str:
        os.write(fd, (line + "\n").encode())
        return _read_until(fd, then, seen)

    try:
        _read_until(fd, r"you> ", seen, timeout=120)
        box = re.escape(trained["answer"])
        type_line(trained["question"], r"overlay: .*overlay\.png[\s\S]*you> ")
        type_line("/boxes", rf"box 1: {box}\s*\n[\s\S]*you> $")
        type_line(f"/image {trained['other_image']}", r"new conversation on .*\n[\s\S]*you> $")
        type_line("/reset", r"conversation cleared\s*\n[\s\S]*you> $")
        type_line("/boxes", r"no answer yet\s*\n[\s\S]*you> $")
        os.write(fd, b"/quit\n")
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "".join(seen)
    text = "".join(seen)
    assert f"model> {trained['answer']}" in text
    assert f"box 1: {trained['answer']}" in text
    # The overlay: the box drawn in colour inside its region, the rest of the image grey.
    from PIL import Image

    rgb = np.asarray(Image.open(overlay).convert("RGB")).astype(int)
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > 30
    h, w = coloured.shape
    x1, y1, x2, y2 = parse_boxes(trained["answer"])[0]
    inside = np.zeros_like(coloured)
    inside[int(y1 * h) : int(np.ceil(y2 * h)), int(x1 * w) : int(np.ceil(x2 * w))] = True
    assert coloured[inside].sum() > 0 and coloured[~inside].sum() == 0
