"""Two CPU processes (DDP over gloo) train exactly as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from radixpert.paths import configs_dir
from tests.train.test_loop import _make_data, _setup, _stage

REPO = Path(__file__).resolve().parents[2]
CONFIG = configs_dir("accelerate") / "cpu_ddp_2proc.yaml"
STEPS = 5


def worker(data_root: Path, out: Path, batch_size: int, grpo: bool = False) -> None:
    """Trains the test stage (or its grpo version); the main process writes losses, trainable
    weights and the logged rows."""
    from safetensors.torch import save_file

    from radixpert.train.loop import train_stage
    from radixpert.train.recipe import ComponentTraining, Trainability

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    model, processor, convs = _setup(data_root)
    stage = _stage(
        trainability=Trainability(
            connector=ComponentTraining("full", lr=2e-3),
            language_model=ComponentTraining("lora", rank=4, dropout=0.0, lr=1e-2),
        ),
        max_steps=STEPS,
        batch_size=batch_size,
        grad_accum=2,
        save_every=None,
        **grpo_settings(grpo),
    )
    result = train_stage(
        model,
        processor,
        convs,
        stage,
        out / "run",
        image_root=data_root / "phantoms",
        progress=False,
        log_every=1,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        trained = {
            n: p.detach().contiguous()
            for n, p in result["model"].named_parameters()
            if p.requires_grad
        }
        save_file(trained, str(out / "trainable.safetensors"))
        (out / "losses.json").write_text(json.dumps(result["losses"]))


def grpo_settings(grpo: bool) -> dict:
    from radixpert.train.recipe import GRPOSettings

    if not grpo:
        return {}
    rewards = {"findings-f1": 1.0, "bleu-2": 0.5, "format": 0.2}
    return {"objective": "grpo", "grpo": GRPOSettings(group_size=4, max_new_tokens=8,
                                                       rewards=rewards)}  # fmt: skip


def _launch(
    args: list[str], data_root: Path, out: Path, batch_size: int, grpo: bool = False
) -> None:
    script = out / "worker.py"
    out.mkdir(parents=True, exist_ok=True)
    script.write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            from tests.train.test_distributed import worker
            worker(Path({str(data_root)!r}), Path({str(out)!r}), {batch_size}, {grpo})
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "src")])}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    child = subprocess.run(
        [*args, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert child.returncode == 0, child.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["lm", "grpo"])
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path: Path, objective: str) -> None:
    """Also for grpo: each process samples its examples' groups, and the rewards, KL and
    answer lengths logged over both processes equal those of one."""
    from safetensors.torch import load_file

    grpo = objective == "grpo"
    data_root = tmp_path / "data"
    data_root.mkdir()
    _make_data(data_root)
    one, two = tmp_path / "one", tmp_path / "two"
    _launch([sys.executable], data_root, one, batch_size=4, grpo=grpo)
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG)]
    accelerate += ["--main_process_port", "0"]  # a free port: parallel runs do not collide
    _launch(accelerate, data_root, two, batch_size=2, grpo=grpo)
    if grpo:
        rows = [[json.loads(x) for x in (d / "run" / "metrics.jsonl").open()] for d in (one, two)]
        train = [[r for r in rs if r["kind"] == "train"] for rs in rows]
        assert len(train[0]) == len(train[1]) == STEPS
        for a, b in zip(*train):
            for key in ("reward", "kl", "answer_tokens", "reward/findings-f1", "reward/bleu-2"):
                assert b[key] == pytest.approx(a[key], abs=1e-5), key

    losses_one = json.loads((one / "losses.json").read_text())
    losses_two = json.loads((two / "losses.json").read_text())
    assert len(losses_one) == len(losses_two) == STEPS
    assert losses_two == pytest.approx(losses_one, abs=1e-5)
    assert grpo or losses_one[-1] < losses_one[0]
    w_one, w_two = (
        load_file(one / "trainable.safetensors"),
        load_file(two / "trainable.safetensors"),
    )
    assert set(w_one) == set(w_two) and w_one
    worst = max(float((w_one[k] - w_two[k]).abs().max()) for k in w_one)
    assert worst < 1e-5, worst
    # Two processes really ran: each wrote its own random state in the checkpoint.
    states = sorted(p.name for p in (two / "run" / "checkpoints").glob("*/random_states_*.pkl"))
    assert states == ["random_states_0.pkl", "random_states_1.pkl"]


@pytest.mark.slow
def test_a_shipped_recipe_runs_under_a_two_process_launch(tmp_path: Path) -> None:
    """`accelerate launch ... -m radixpert train demo`: every stage of the demo recipe (HCF,
    full training, LoRA 64/32/16, grpo) trains in two real processes and writes its bundle."""
    from radixpert.data.phantoms import generate_phantoms
    from tests.train.test_runner import _tiny_overrides

    data_root = tmp_path / "data"
    generate_phantoms(24, data_root / "phantoms", size=64)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
           "--main_process_port", "0", "-m", "radixpert", "train", "demo", "--data-root",
           str(data_root), "-o", str(out), "--log-with", "none",
           *_tiny_overrides("demo", data_root, 2)]  # fmt: skip
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
    }
    child = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr[-4000:]
    run = json.loads((out / "run.json").read_text())
    assert len(run["stages"]) == 7 and all(r["steps"] == 2 for r in run["stages"].values())
    assert Path(run["final_bundle"], "radixpert_bundle.json").is_file()
    states = sorted(p.name for p in out.glob("*/train/checkpoints/*/random_states_*.pkl"))
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(states)
