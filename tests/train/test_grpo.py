"""The grpo objective: its log-probabilities, that it raises a reward, and exact resume."""

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

from radixpert.train.recipe import ComponentTraining, GRPOSettings, Schedule, Trainability
from tests.train.test_loop import _deterministic, _make_data, _setup, _stage

REPO = Path(__file__).resolve().parents[2]


def vowels(examples: list[Any], answers: list[str]) -> list[float]:
    """A reward the tiny model can learn in a few steps: the share of vowels in the answer."""
    return [sum(c in "aeiou" for c in a) / max(1, len(a)) for a in answers]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpo_data")
    _make_data(root)
    return root


def _grpo_stage(**changes: Any) -> Any:
    settings: dict[str, Any] = {
        "objective": "grpo",
        "grpo": GRPOSettings(
            group_size=4,
            max_new_tokens=8,
            rewards={"findings-f1": 1.0, "bleu-2": 0.5, "format": 0.2},
        ),
        "batch_size": 2,
        "grad_accum": 2,
    }
    settings.update(changes)
    return _stage(**settings)


def test_grpo_raises_its_reward(data_root: Path, tmp_path: Path) -> None:
    from radixpert.train.loop import train_stage

    _deterministic()
    model, processor, convs = _setup(data_root)
    stage = _grpo_stage(
        grpo=GRPOSettings(
            group_size=8,
            max_new_tokens=8,
            kl_coef=0.0,
            truncation_penalty=0.0,
            rewards={"tests.train.test_grpo:vowels": 1.0},
        ),
        trainability=Trainability(language_model=ComponentTraining("full", lr=1e-2)),
        schedule=Schedule("constant"),
        max_steps=20,
        grad_accum=1,
        save_every=None,
    )
    result = train_stage(model, processor, convs, stage, tmp_path / "run", image_root=data_root
                         / "phantoms", log_every=1, progress=False,
                         val_conversations=convs[:4])  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    rewards = [r["reward"] for r in rows if r["kind"] == "train"]
    assert len(rewards) == 20 and result["steps"] == 20
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.25, rewards
    row = rows[0]
    for key in ("reward_std", "kl", "answer_tokens", "flat_groups", "guard/truncated",
                "guard/repetition", "guard/too_long", "guard/penalty",
                "reward/tests.train.test_grpo:vowels"):  # fmt: skip
        assert key in row
    # validation: greedy answers; the total is the one reward minus the guards' penalty
    val = [r for r in rows if r["kind"] == "validation"][-1]
    assert val["step"] == 20
    assert val["val_reward"] == pytest.approx(
        val["val_reward/tests.train.test_grpo:vowels"] - val["val_guard/penalty"], abs=1e-6
    )
    for key in ("val_guard/truncated", "val_guard/repetition", "val_guard/too_long"):
        assert 0.0 <= val[key] <= 1.0


def _tiny_family(family: str) -> tuple[Any, Any, list[Any]]:
    """A tiny model of ``family`` with LoRA on its language model, its processor and images."""
    import numpy as np

    from radixpert.models.processor import RadProcessor
    from radixpert.models.trainability import (
        LLAVA_COMPONENTS,
        MLLAMA_COMPONENTS,
        ONEVISION_COMPONENTS,
        ComponentSpec,
        apply_trainability,
    )
    from tests.models.test_bundle_families import _bpe

    torch.manual_seed(0)
    if family == "llava":
        from radixpert.models.llava import tiny_llava

        model, components = tiny_llava("hcf"), LLAVA_COMPONENTS
        tok = _bpe(63, ["<pad>", "<s>", "</s>", "<unk>"], ["<image>"])
    elif family == "mllama":
        from radixpert.models.mllama import tiny_mllama

        model, components = tiny_mllama(hcf=True), MLLAMA_COMPONENTS
        tok = _bpe(64, ["<pad>", "<s>", "</s>", "<unk>"], ["<|image|>"])
    else:
        from radixpert.models.onevision import tiny_onevision

        model, components = tiny_onevision(), ONEVISION_COMPONENTS
        tok = _bpe(62, ["<pad>", "<s>", "</s>", "<unk>"], ["<video>", "<image>"])
    processor = RadProcessor.from_model(model, tok)
    spec = {
        "vision_tower": ComponentSpec("frozen"),
        "connector": ComponentSpec("frozen"),
        "language_model": ComponentSpec("lora", rank=4, dropout=0.0),
    }
    model = apply_trainability(model, spec, components)
    with torch.no_grad():  # B starts at zero; make the adapter change the outputs
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    rng = np.random.default_rng(0)
    return model, processor, [rng.random((48, 40), dtype=np.float32) for _ in range(2)]


@pytest.mark.parametrize("family", ["llava", "mllama", "llava_onevision"])
def test_loss_log_probabilities_are_those_of_sampling(family: str) -> None:
    """The answers' log-probabilities in the loss's one padded forward (prompt + answer, the
    HCF prompt mask, Mllama's cross-attention mask grown over the answer) equal those of the
    sampling steps, answer by answer, for every family; the reference is the policy with its
    adapters off."""
    from radixpert.train.grpo import GroupPrompts, GRPOObjective

    model, processor, images = _tiny_family(family)
    stage = _grpo_stage(grpo=GRPOSettings(group_size=3, max_new_tokens=6, rewards={"format": 1.0}))
    objective = GRPOObjective()
    objective.prepare(model, processor, stage)
    assert objective.reference_mode == "adapters"  # only LoRA trains: no copy of the model

    def turn(question: str, answer: str) -> list[dict[str, str]]:
        return [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": answer},
        ]

    turns = [turn("describe the findings", "x."), turn("the lungs", "y.")]
    batch = GroupPrompts(processor)([[im] for im in images], turns, keys=[(0, "t"), (1, "t")])
    model.eval()
    prompts, answers, lengths, expected = batch["examples"], [], [], []
    for k, prompt in enumerate(prompts):
        group = {n: torch.cat([v] * 3) for n, v in prompt.items()}
        torch.manual_seed(k)
        out = model.generate(
            **group,
            do_sample=True,
            max_new_tokens=6,
            output_logits=True,
            return_dict_in_generate=True,
            eos_token_id=objective.eos,
            pad_token_id=objective.pad,
            suppress_tokens=objective.suppress,
        )
        new = out.sequences[:, group["input_ids"].shape[1] :]
        logits = torch.stack(out.logits, dim=1)
        steps = torch.log_softmax(logits.float(), -1).gather(-1, new[..., None]).squeeze(-1)
        lens, _ = objective._lengths(new)
        answers.append(new)
        lengths.append(lens)
        expected.extend(steps[j, :n] for j, n in enumerate(lens))
    inputs, positions, tokens, mask = objective._sequences(
        prompts, answers, lengths, torch.device("cpu")
    )
    with torch.no_grad():
        got = objective._token_logps(model, inputs, positions, tokens)
        ref = objective._reference_logps(model, inputs, positions, tokens)
    for r, want in enumerate(expected):
        assert int(mask[r].sum()) == len(want)
        assert torch.allclose(got[r, : len(want)], want, atol=1e-4), (r, got[r], want)
    # The adapters move the policy away from the reference.
    assert not torch.allclose(got[mask], ref[mask], atol=1e-3)
    with model.disable_adapter(), torch.no_grad():
        base = objective._token_logps(model, inputs, positions, tokens)
    assert torch.allclose(base[mask], ref[mask], atol=1e-6)


def run_grpo(root: Path, out: Path, kill_after: int | None = None) -> dict[str, Any]:
    """A grpo stage with a KL to a frozen copy (the connector trains in full), 8 steps saved
    every 3; with ``kill_after`` the process SIGKILLs itself after that step."""
    from radixpert.train.loop import train_stage

    _deterministic()
    model, processor, convs = _setup(root)

    def on_step(step: int, loss: float) -> None:
        with (out / "losses.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "loss": loss}) + "\n")
        if kill_after is not None and step == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    out.mkdir(parents=True, exist_ok=True)
    return train_stage(model, processor, convs, _grpo_stage(max_steps=8, save_every=3), out,
                       image_root=root / "phantoms", seed=0, log_every=1, on_step=on_step,
                       progress=False)  # fmt: skip


def _train_rows(out: Path) -> dict[int, dict[str, Any]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    return {r["step"]: r for r in rows if r["kind"] == "train"}


@pytest.mark.slow
def test_killed_grpo_run_resumes_to_the_uninterrupted_one(data_root: Path, tmp_path: Path) -> None:
    full = run_grpo(data_root, tmp_path / "full")
    assert full["steps"] == 8
    out = tmp_path / "killed"
    out.mkdir()
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from tests.train.test_grpo import run_grpo
        run_grpo(Path({str(data_root)!r}), Path({str(out)!r}), kill_after=5)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    child = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    resumed = run_grpo(data_root, out)
    assert resumed["resumed_from"] == 3 and resumed["steps"] == 8
    assert resumed["losses"] == pytest.approx(full["losses"][3:], abs=1e-7)
    # The sampled answers and their rewards are the same after the resume.
    want, got = _train_rows(tmp_path / "full"), _train_rows(out)
    for step in range(4, 9):
        for key in ("reward", "kl", "answer_tokens", "reward/findings-f1", "reward/bleu-2"):
            assert got[step][key] == pytest.approx(want[step][key], abs=1e-6), (step, key)
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
