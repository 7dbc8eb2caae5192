"""The stage loop: exact resume after a SIGKILL, and the loss going down on a fixed batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from radixpert.train.loop import (
    latest_checkpoint,
    length_grouped_batches,
    log_interval,
    train_stage,
)
from radixpert.train.recipe import (
    ComponentTraining,
    DataMixture,
    DataSource,
    Optimizer,
    Schedule,
    Stage,
    Trainability,
)

REPO = Path(__file__).resolve().parents[2]
CORPUS = [
    "no acute cardiopulmonary process. the lungs are clear. heart size is normal.",
    "USER: describe the findings ASSISTANT: there is a small left pleural effusion.",
    "a chat between a curious human and an artificial intelligence assistant.",
    "findings: cardiomegaly, pneumothorax, consolidation, nodule. impression: stable.",
]
STEPS, SAVE_EVERY, KILL_AFTER = 12, 3, 7


def _deterministic() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def _stage(**changes: Any) -> Stage:
    settings: dict[str, Any] = {
        "name": "s1",
        "data": DataMixture(sources=(DataSource("phantoms/studies.jsonl"),)),
        "trainability": Trainability(
            connector=ComponentTraining("full", lr=2e-3),
            language_model=ComponentTraining("lora", rank=4, dropout=0.1, lr=1e-2),
        ),
        "optimizer": Optimizer(lr=1e-3),
        "schedule": Schedule("cosine", warmup_ratio=0.1),
        "max_steps": STEPS,
        "batch_size": 2,
        "grad_accum": 2,
        "grad_clip": 1.0,
        "save_every": SAVE_EVERY,
    }
    settings.update(changes)
    return Stage(**settings)


def _make_data(root: Path) -> None:
    """Tokenizer, 16 phantoms (64 px, the smallest; letterboxed to 32) and report conversations."""
    from radixpert.data.phantoms import generate_phantoms
    from radixpert.instruct.conversation import write_conversations
    from radixpert.instruct.mixture import build_mixture
    from radixpert.models.tokenizers import train_bpe

    fast = train_bpe(CORPUS * 10, 63, ["<pad>", "<s>", "</s>", "<unk>"], ["<image>"])
    fast.save_pretrained(root / "tokenizer")
    studies = generate_phantoms(16, root / "phantoms", size=64)
    convs = list(build_mixture(studies, {"report": 1.0}))
    assert len(convs) == 16
    write_conversations(convs, root / "train.jsonl")


def _setup(root: Path) -> tuple[Any, Any, list[Any]]:
    """The tiny HCF llava (seeded), its processor and the conversations of ``root``."""
    from transformers import PreTrainedTokenizerFast

    from radixpert.instruct.conversation import read_conversations
    from radixpert.models.llava import tiny_llava
    from radixpert.models.processor import RadProcessor

    tokenizer = PreTrainedTokenizerFast.from_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    model = tiny_llava("hcf")
    processor = RadProcessor.from_model(model, tokenizer)
    return model, processor, list(read_conversations(root / "train.jsonl"))


def run_training(root: Path, out: Path, kill_after: int | None = None) -> dict[str, Any]:
    """Trains the test stage into ``out``; the child process calls this with ``kill_after``.

    Each step's loss is appended to ``out/losses.jsonl``; with ``kill_after`` the process
    SIGKILLs itself right after that step, as a crash would.
    """
    _deterministic()
    model, processor, convs = _setup(root)

    def on_step(step: int, loss: float) -> None:
        with (out / "losses.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "loss": loss}) + "\n")
        if kill_after is not None and step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    out.mkdir(parents=True, exist_ok=True)
    return train_stage(
        model,
        processor,
        convs,
        _stage(),
        out,
        image_root=root / "phantoms",
        seed=0,
        log_every=1,
        on_step=on_step,
    )


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loop_data")
    _make_data(root)
    return root


def test_length_grouped_batches_cover_every_example_and_repeat() -> None:
    lengths = [5, 50, 7, 30, 9, 41, 3, 12, 60, 1]
    batches = length_grouped_batches(lengths, 3, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert batches == length_grouped_batches(lengths, 3, seed=1, epoch=0)
    assert batches != length_grouped_batches(lengths, 3, seed=1, epoch=1)
    for b in batches:  # sorted by length inside a group
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_losses(data_root: Path, tmp_path: Path) -> None:
    full = run_training(data_root, tmp_path / "full")
    assert full["steps"] == STEPS and full["resumed_from"] == 0
    assert len(full["losses"]) == STEPS

    out = tmp_path / "killed"
    out.mkdir()
    script = textwrap.dedent(
        f"""
        import logging
        from pathlib import Path
        from tests.train.test_loop import run_training
        logging.basicConfig(level=logging.INFO)
        run_training(Path({str(data_root)!r}), Path({str(out)!r}), kill_after={KILL_AFTER})
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    child = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    killed = [json.loads(line) for line in (out / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in killed] == list(range(1, KILL_AFTER + 1))
    found = latest_checkpoint(out)
    assert found is not None and found[1]["step"] == 6  # step 7 was lost with the process

    # Before the kill, the child computed the same losses.
    assert [r["loss"] for r in killed] == pytest.approx(full["losses"][:KILL_AFTER], abs=1e-6)

    resumed = run_training(data_root, out)
    assert resumed["resumed_from"] == 6 and resumed["steps"] == STEPS
    assert resumed["losses"] == pytest.approx(full["losses"][6:], abs=1e-6)
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], abs=1e-6)
    assert latest_checkpoint(out)[1]["step"] == STEPS

    # A finished stage resumes to nothing left to do.
    again = run_training(data_root, out)
    assert again["losses"] == [] and again["final_loss"] == pytest.approx(full["final_loss"])


@pytest.mark.slow
def test_loss_decreases_on_a_fixed_batch(data_root: Path, tmp_path: Path) -> None:
    _deterministic()
    model, processor, convs = _setup(data_root)
    stage = _stage(
        trainability=Trainability(
            connector=ComponentTraining("full"), language_model=ComponentTraining("full")
        ),
        optimizer=Optimizer(lr=1e-2),
        schedule=Schedule("constant"),
        max_steps=40,
        batch_size=2,
        grad_accum=1,
        save_every=None,
    )
    result = train_stage(
        model, processor, convs[:2], stage, tmp_path / "fixed", image_root=data_root / "phantoms"
    )
    losses = result["losses"]
    assert result["steps"] == 40 and len(losses) == 40
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_log_interval_gives_a_short_stage_about_fifty_records():
    # explicit values are kept; the default is every 10 steps, more often below 500 steps
    assert log_interval(7, 24) == 7
    assert log_interval(0, 24) == 1
    assert [log_interval(None, n) for n in (24, 60, 250, 500, 3600)] == [1, 1, 5, 10, 10]
