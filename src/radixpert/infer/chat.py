"""A conversation with a model about one radiograph: the terminal REPL and the session under it.

    radixpert chat --model runs/demo/model/04-msa3/bundle --image phantom.png --overlay out.png

    session = ChatSession.from_bundle("runs/x/bundle")
    session.load_image("study.dcm")                     # PNG/JPG/DICOM; starts a conversation
    reply = session.ask("Locate this finding: nodule")  # reply.text, reply.boxes, reply.invalid
    for piece in session.stream("Is there a pneumothorax?"):
        print(piece, end="")                            # session.last: the whole reply
    session.conversation                                # the ShareGPT ``Conversation`` record

The history is the project's ``Conversation`` record (``instruct.conversation``), the one that
training, ``radixpert generate`` and the server use: the first question carries the image
(``"<image>\\n..."``, as in the instruction sets) and every later question is asked with all
earlier turns before it. Answers come from ``infer.generate.generate_answers`` (greedy unless
sampling settings are given); ``stream`` runs it in a thread and yields the text as
``infer.generate.answer_streamer`` releases it (the server streams with the same one).
Loading another image starts a new conversation: the models are trained on one image per
conversation, and earlier answers describe the old image. Boxes in an answer
(``[x1, y1, x2, y2]`` in 0-1) are parsed and validated by ``infer.grounding``. Nothing leaves
the machine.
"""

from __future__ import annotations

import argparse
import logging
import queue
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from radixpert.errors import UsageError
from radixpert.infer.grounding import GroundedBox, Grounding, InvalidBox, parse_grounding
from radixpert.instruct.conversation import IMAGE_TOKEN, Conversation

logger = logging.getLogger(__name__)

__all__ = ["ChatReply", "ChatSession", "add_parser", "run_repl"]

TASK = "chat"


@dataclass(frozen=True)
class ChatReply:
    """One answer and the boxes in it."""

    text: str
    grounding: Grounding

    @property
    def boxes(self) -> list[GroundedBox]:
        return self.grounding.boxes

    @property
    def invalid(self) -> list[InvalidBox]:
        return self.grounding.invalid


class ChatSession:
    """A model, its processor, the current image and the conversation about it.

    Not for two questions at once: a second ``ask`` or ``stream`` while one runs raises
    ``RuntimeError``; a server keeps one session per conversation.

    Args:
        model: A llava, Mllama, OneVision or RadScribe model (peft-wrapped or not), as
            ``models.bundle.load_bundle`` returns it.
        processor: Its ``RadProcessor``.
        max_new_tokens: Default most tokens per answer.
        session_id: The conversation record's id (default: random).
        **generation: Default ``generate`` settings (``do_sample``, ``temperature``,
            ``top_p``, ``num_beams``, ...); greedy when none are given.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        max_new_tokens: int = 256,
        session_id: str | None = None,
        **generation: Any,
    ) -> None:
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.generation = dict(generation)
        self.id = session_id or uuid.uuid4().hex[:12]
        self.image_path: Path | None = None
        self.image_array: Any = None  # 2-D float32 in [0, 1], for overlays
        self.conversation = self._new_conversation()
        self.last: ChatReply | None = None
        self._busy = threading.Lock()
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def from_bundle(
        cls, path: str | Path, *, device: str | None = None, **kwargs: Any
    ) -> ChatSession:
        """A session on the bundle at ``path`` (a folder written by ``radixpert train``).

        Args:
            path: The bundle folder.
            device: Torch device; default CUDA when available, else the CPU.
            **kwargs: ``ChatSession`` settings.
        """
        import torch

        from radixpert.models.bundle import MANIFEST_FILE, load_bundle

        path = Path(path)
        if not (path / MANIFEST_FILE).is_file():
            raise UsageError(f"{path}: not a model bundle (no {MANIFEST_FILE})")
        model, processor = load_bundle(path)
        model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(model, processor, **kwargs)

    # ------------------------------------------------------------------ state

    def _new_conversation(self) -> Conversation:
        image = [str(self.image_path)] if self.image_path is not None else []
        study = self.image_path.stem if self.image_path is not None else ""
        return Conversation(self.id, image, [], TASK, study, TASK)

    @property
    def turns(self) -> list[dict[str, str]]:
        """The history: alternating human and gpt turns (the first human turn has the image)."""
        return self.conversation.conversations

    def load_image(self, source: Any, name: str = "image") -> Path:
        """Makes ``source`` the image of a new conversation (the history is cleared).

        Args:
            source: A PNG/JPEG/DICOM file, or a 2-D grayscale array (float in [0, 1] or uint8)
                or PIL image, e.g. an upload; an array is kept as a 16-bit PNG in a private
                temporary folder of this session (removed by ``close``).
            name: The file name an array is kept under.

        Returns:
            The image file the conversation records.

        Raises:
            ImageError: The file is missing or cannot be read (naming the file).
        """
        from radixpert.data.images import load_image

        if isinstance(source, str | Path):
            path = Path(source).expanduser().resolve()
            array = load_image(path)
        else:
            path, array = self._keep(source, name)
        with self._exclusive():
            self.image_path, self.image_array = path, array
            self._reset()
        return path

    def _keep(self, image: Any, name: str) -> tuple[Path, Any]:
        import numpy as np
        from PIL import Image

        from radixpert.data.images import load_image

        if isinstance(image, Image.Image):
            image = image.convert("L")
        arr = np.asarray(image)
        if arr.ndim != 2:
            raise UsageError(f"{name}: expected a 2-D grayscale image, got shape {arr.shape}")
        gray = arr / 255.0 if arr.dtype == np.uint8 else np.clip(arr.astype(np.float64), 0, 1)
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="radixpert-chat-")
        stem = Path(name).stem or "image"
        path = Path(self._scratch.name) / f"{stem}-{uuid.uuid4().hex[:6]}.png"
        Image.fromarray(np.round(gray * 65535).astype(np.uint16)).save(path)
        return path, load_image(path)

    def reset(self) -> None:
        """Clears the history; the image stays."""
        with self._exclusive():
            self._reset()

    def _reset(self) -> None:
        self.conversation = self._new_conversation()
        self.last = None

    def close(self) -> None:
        """Removes the images this session kept for arrays (see ``load_image``)."""
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def __enter__(self) -> ChatSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this chat session is answering another question")
        try:
            yield
        finally:
            self._busy.release()

    # ------------------------------------------------------------------ asking

    def question_turns(self, text: str) -> list[dict[str, str]]:
        """The turns sent to the model for the question ``text``: the history, then it."""
        text = text.strip()
        if not text:
            raise UsageError("the question is empty")
        if IMAGE_TOKEN in text:
            raise UsageError(f"a question may not contain {IMAGE_TOKEN}: the image is added")
        if not self.turns and self.image_path is not None:
            text = f"{IMAGE_TOKEN}\n{text}"
        return [*self.turns, {"from": "human", "value": text}]

    def prompt(self, text: str) -> Conversation:
        """The record ``generate_answers`` gets for the question ``text``."""
        c = self.conversation
        return Conversation(
            c.id, list(c.image), self.question_turns(text), c.task, c.study_id, c.dataset
        )

    def _settings(self, settings: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        merged = {**self.generation, **settings}
        return int(merged.pop("max_new_tokens", self.max_new_tokens)), merged

    def _generate(self, prompt: Conversation, settings: dict[str, Any]) -> str:
        from radixpert.infer.generate import generate_answers

        max_new_tokens, kwargs = self._settings(settings)
        return generate_answers(
            self.model,
            self.processor,
            [prompt],
            batch_size=1,
            max_new_tokens=max_new_tokens,
            progress=False,
            **kwargs,
        )[0]

    def _commit(self, prompt: Conversation, answer: str) -> ChatReply:
        prompt.conversations.append({"from": "gpt", "value": answer})
        self.conversation = prompt.validate()
        self.last = ChatReply(answer, parse_grounding(answer))
        return self.last

    def ask(self, text: str, **settings: Any) -> ChatReply:
        """The model's answer to ``text`` after the history; the turn pair joins the history.

        Args:
            text: The question (without ``<image>``; the first question gets the image).
            **settings: ``max_new_tokens`` and ``generate`` settings for this answer.
        """
        with self._exclusive():
            prompt = self.prompt(text)
            return self._commit(prompt, self._generate(prompt, settings))

    def stream(self, text: str, **settings: Any) -> Iterator[str]:
        """As ``ask``, yielding the answer's text as it is generated.

        The turn pair joins the history, and ``self.last`` holds the reply, once the
        iterator is exhausted; closing it early stops the generation and keeps the
        history as it was. RadScribe and beam search yield the whole answer at once.
        """
        with self._exclusive():
            prompt = self.prompt(text)
            _, kwargs = self._settings(settings)
            if self.processor.config.family == "radscribe" or kwargs.get("num_beams", 1) > 1:
                answer = self._generate(prompt, settings)
                self._commit(prompt, answer)
                yield answer
                return
            yield from self._stream(prompt, settings)

    def _stream(self, prompt: Conversation, settings: dict[str, Any]) -> Iterator[str]:
        from radixpert.infer.generate import answer_streamer, cancel_when

        stop = threading.Event()
        pieces: queue.Queue[Any] = queue.Queue()
        done = object()
        streamer = answer_streamer(self.processor.tokenizer, pieces.put)
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["answer"] = self._generate(
                    prompt,
                    {**settings, "streamer": streamer, "stopping_criteria": cancel_when([stop])},
                )
            except BaseException as e:  # re-raised in the caller's thread
                result["error"] = e
            finally:
                pieces.put(done)

        thread = threading.Thread(target=work, name=f"chat-{self.id}", daemon=True)
        thread.start()
        try:
            while (piece := pieces.get()) is not done:
                yield piece
        finally:
            if thread.is_alive():
                stop.set()  # the consumer left early
            thread.join()
        if "error" in result:
            raise result["error"]
        self._commit(prompt, result["answer"])

    # ------------------------------------------------------------------ output

    def to_dict(self) -> dict[str, Any]:
        """The conversation record, as JSON-ready data."""
        return asdict(self.conversation)

    def save(self, path: str | Path) -> Path:
        """Writes the conversation record as JSON, atomically."""
        from radixpert.io import write_json

        if not self.turns:
            raise UsageError("nothing to save: the conversation has no answers yet")
        return write_json(path, asdict(self.conversation.validate()))

    def save_overlay(self, path: str | Path, boxes: list[GroundedBox] | None = None) -> Path:
        """The image with ``boxes`` (default: the last answer's) drawn on it, as a PNG."""
        from radixpert.infer.grounding import save_overlay

        if self.image_array is None:
            raise UsageError("no image to draw on: load one first")
        if boxes is None:
            boxes = self.last.boxes if self.last else []
        return save_overlay(self.image_array, boxes, path)


# ---------------------------------------------------------------------- terminal

HELP = """commands:
  /image PATH   talk about another image (starts a new conversation)
  /reset        clear the conversation (the image stays)
  /boxes        list the boxes of the last answer
  /save PATH    write the conversation as JSON
  /help         this text
  /quit         leave (Ctrl-D too)
anything else is a question to the model."""


def _say_boxes(reply: ChatReply | None, out: Any) -> None:
    if reply is None:
        print("no answer yet", file=out)
        return
    if not reply.boxes and not reply.invalid:
        print("no boxes in the last answer", file=out)
    for k, box in enumerate(reply.boxes, 1):
        print(f"  box {k}: {box}", file=out)
    for bad in reply.invalid:
        label = f"{bad.label}: " if bad.label else ""
        print(f"  invalid: {label}{bad.text} ({bad.reason})", file=out)


def _after_answer(session: ChatSession, overlay: Path | None, out: Any) -> None:
    reply = session.last
    if reply is None:
        return
    if reply.boxes or reply.invalid:
        _say_boxes(reply, out)
    if overlay is not None and reply.boxes:
        session.save_overlay(overlay)
        print(f"  overlay: {overlay}", file=out)


def run_repl(
    session: ChatSession,
    *,
    overlay: str | Path | None = None,
    stdin: Any = None,
    out: Any = None,
) -> int:
    """The terminal conversation: reads lines, answers them (streamed), runs the commands.

    Args:
        session: The chat session, with its image loaded.
        overlay: After each answer with boxes, the image with them drawn is written here.
        stdin: Where lines come from (default ``sys.stdin``); end of input quits.
        out: Where text goes (default ``sys.stdout``).
    """
    from radixpert.errors import RadixpertError

    stdin = stdin or sys.stdin
    out = out or sys.stdout
    overlay = Path(overlay) if overlay is not None else None
    interactive = stdin.isatty() and stdin is sys.stdin
    if interactive:
        import readline  # noqa: F401  (line editing and history for input())
    where = session.image_path.name if session.image_path else "no image"
    print(f"radixpert chat: {where}. /help lists the commands.", file=out)
    while True:
        try:
            if interactive:
                line = input("you> ")
            else:
                print("you> ", end="", file=out, flush=True)
                line = stdin.readline()
                if not line:
                    raise EOFError
        except EOFError:
            print("", file=out)
            return 0
        except KeyboardInterrupt:
            print("", file=out)
            continue
        line = line.strip()
        if not line:
            continue
        command, _, arg = line.partition(" ")
        arg = arg.strip()
        try:
            if command in ("/quit", "/exit"):
                return 0
            if command == "/help":
                print(HELP, file=out)
            elif command == "/reset":
                session.reset()
                print("conversation cleared", file=out)
            elif command == "/boxes":
                _say_boxes(session.last, out)
            elif command == "/image":
                if not arg:
                    raise UsageError("/image needs a file: /image PATH")
                path = session.load_image(arg)
                print(f"new conversation on {path.name}", file=out)
            elif command == "/save":
                if not arg:
                    raise UsageError("/save needs a file: /save PATH")
                print(f"saved: {session.save(arg)}", file=out)
            elif command.startswith("/"):
                raise UsageError(f"unknown command {command}; /help lists them")
            else:
                print("model> ", end="", file=out, flush=True)
                try:
                    for piece in session.stream(line):
                        print(piece, end="", file=out, flush=True)
                except KeyboardInterrupt:
                    print("\n(answer stopped; not kept)", file=out)
                    continue
                print("", file=out)
                _after_answer(session, overlay, out)
        except (RadixpertError, OSError) as e:
            print(f"error: {e}", file=out)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Registers ``radixpert chat`` (no torch imported here)."""
    p = sub.add_parser(
        "chat",
        help="a terminal conversation with a model about an image, with grounded boxes",
        description="Ask a trained model (a bundle) about a radiograph (PNG/JPG/DICOM), with "
        "the conversation's history. Boxes in an answer ([x1, y1, x2, y2] in 0-1) are listed "
        "and, with --overlay, drawn on the image. Commands: /image PATH, /reset, /boxes, "
        "/save PATH, /help, /quit (or Ctrl-D). Everything runs locally.",
    )
    p.add_argument("--model", required=True, help="a model bundle written by `radixpert train`")
    p.add_argument("--image", required=True, help="the image to talk about (PNG/JPG/DICOM)")
    p.add_argument("--overlay", help="PNG to draw each answer's boxes on (rewritten each time)")
    p.add_argument("--device", help="torch device (default: CUDA if available, else CPU)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="most tokens per answer")
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sampling temperature (default 0: greedy, the same answer every time)",
    )
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with temperature)")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.set_defaults(func=_run_chat)


def _run_chat(args: argparse.Namespace) -> int:
    if args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0, got {args.temperature}")
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    generation: dict[str, Any] = {}
    if args.temperature > 0:
        generation = {"do_sample": True, "temperature": args.temperature}
        if args.top_p is not None:
            generation["top_p"] = args.top_p
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    image = Path(args.image)
    if not image.is_file():
        raise UsageError(f"--image {image}: no such file")
    session = ChatSession.from_bundle(
        args.model, device=args.device, max_new_tokens=args.max_new_tokens, **generation
    )
    with session:
        session.load_image(image)
        return run_repl(session, overlay=args.overlay)
