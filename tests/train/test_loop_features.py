"""The loop's optional parts: early stopping with best-weight restore, TensorBoard logs,
gradient checkpointing, and a report metric at validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from radixpert.train.loop import train_stage
from radixpert.train.recipe import ComponentTraining, EarlyStopping, Trainability
from tests.train.test_loop import _deterministic, _make_data, _setup, _stage


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loop_features")
    _make_data(root)
    return root


def _full(**changes: object) -> object:
    settings = {
        "trainability": Trainability(
            connector=ComponentTraining("full"), language_model=ComponentTraining("full")
        ),
        "save_every": None,
        "grad_accum": 1,
    }
    settings.update(changes)
    return _stage(**settings)


@pytest.mark.slow
def test_early_stopping_stops_after_patience_and_restores_the_best(
    data_root: Path, tmp_path: Path
) -> None:
    _deterministic()
    model, processor, convs = _setup(data_root)
    scripted = iter([3.0, 2.0, 2.5, 2.6, 2.7, 1.0, 1.0])
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    holder: dict[str, object] = {}

    def metric(m: object) -> dict[str, float]:
        holder["model"] = m
        return {"m": next(scripted)}

    def on_step(step: int, loss: float) -> None:
        if step == 2:
            snapshots[2] = {
                n: p.detach().clone()
                for n, p in holder["model"].named_parameters()
                if p.requires_grad
            }

    stage = _full(max_steps=12, eval_every=1, early_stopping=EarlyStopping(3, metric="m"))
    result = train_stage(
        model,
        processor,
        convs,
        stage,
        tmp_path / "es",
        image_root=data_root / "phantoms",
        evaluate_fn=metric,
        on_step=on_step,
        progress=False,
    )
    assert result["stopped_early"] and result["steps"] == 5
    assert result["best"] == {"value": 2.0, "step": 2, "metric": "m"}
    final = {n: p for n, p in result["model"].named_parameters() if p.requires_grad}
    assert all(torch.equal(final[n], snapshots[2][n]) for n in snapshots[2])
    # A rerun resumes into the stopped state: nothing more to train.
    _deterministic()
    model, processor, convs = _setup(data_root)
    again = train_stage(
        model,
        processor,
        convs,
        stage,
        tmp_path / "es",
        image_root=data_root / "phantoms",
        evaluate_fn=metric,
        progress=False,
    )
    assert again["losses"] == [] and again["stopped_early"]


def test_unknown_early_stopping_metric_is_named(data_root: Path, tmp_path: Path) -> None:
    model, processor, convs = _setup(data_root)
    stage = _full(max_steps=2, eval_every=1, early_stopping=EarlyStopping(2, metric="bleu"))
    with pytest.raises(KeyError, match=r"early_stopping\.metric 'bleu'"):
        train_stage(
            model,
            processor,
            convs,
            stage,
            tmp_path / "x",
            image_root=data_root / "phantoms",
            val_conversations=convs[:2],
            progress=False,
        )


@pytest.mark.slow
def test_tensorboard_gets_loss_lr_gate_and_validation(data_root: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, processor, convs = _setup(data_root)
    stage = _full(max_steps=4, eval_every=2)
    train_stage(
        model,
        processor,
        convs,
        stage,
        tmp_path / "tb",
        image_root=data_root / "phantoms",
        val_conversations=convs[:4],
        log_with=["tensorboard"],
        log_every=1,
        progress=False,
    )
    run_dir = tmp_path / "tb" / "logs" / "s1"  # one run per stage, named after it
    assert list(run_dir.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/samples_per_s", "train/peak_memory_gb"} <= tags
    assert {"train/gate/level0", "train/gate/level1", "train/gate/level2"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in acc.Scalars("validation/val_loss")] == [2, 4]
    gates = [acc.Scalars(f"train/gate/level{i}")[-1].value for i in range(3)]
    assert sum(gates) == pytest.approx(1.0, abs=1e-5)  # softmax over the levels


@pytest.mark.slow
def test_gradient_checkpointing_gives_the_same_losses(data_root: Path, tmp_path: Path) -> None:
    runs, enabled = [], []
    for flag in (False, True):
        _deterministic()
        model, processor, convs = _setup(data_root)
        stage = _full(max_steps=3, gradient_checkpointing=flag)
        runs.append(
            train_stage(
                model,
                processor,
                convs,
                stage,
                tmp_path / f"gc{flag}",
                image_root=data_root / "phantoms",
                progress=False,
            )["losses"]
        )
        enabled.append(_checkpointing(model))
    assert enabled == [False, True]
    assert runs[1] == pytest.approx(runs[0], abs=1e-5)


def _checkpointing(model: object) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_activation_checkpointing", False))
