"""The loop's DataLoader: worker processes give the same losses as building batches in the
training process, a resume with workers continues exactly, and a bad image is named."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from radixpert.errors import ImageError
from radixpert.instruct.conversation import images_and_turns
from radixpert.train.loop import latest_checkpoint, train_stage
from radixpert.train.recipe import ComponentTraining, Trainability
from tests.train.test_loop import _deterministic, _make_data, _setup, _stage

STEPS, SAVE_EVERY, CRASH_AT = 6, 3, 4


class _Jitter:
    """The processor plus pixel noise from torch's global RNG: an augmentation whose draws
    must come out the same in a worker process as in the training process."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __call__(self, images: Any, conversations: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        batch = self.inner(images, conversations, **kwargs)
        pixels = batch["pixel_values"]
        batch["pixel_values"] = pixels + 0.1 * torch.randn_like(pixels)
        return batch


class _Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loop_dataloader")
    _make_data(root)
    return root


def _train(root: Path, out: Path, workers: int, crash_at: int | None = None) -> dict[str, Any]:
    """The test stage (LoRA dropout 0.1: the training process's RNG matters too): 16
    examples, global batch 2, accumulation 2, so 4 steps an epoch and 6 steps cross one."""
    _deterministic()
    model, processor, convs = _setup(root)

    def on_step(step: int, loss: float) -> None:
        if step == crash_at:
            raise _Crash(f"crash after step {step}")

    return train_stage(
        model,
        _Jitter(processor),
        convs,
        _stage(max_steps=STEPS, save_every=SAVE_EVERY),
        out,
        image_root=root / "phantoms",
        seed=0,
        progress=False,
        on_step=on_step,
        num_workers=workers,
    )


@pytest.fixture(scope="module")
def in_process(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """Per-step losses with every batch built in the training process (num_workers=0)."""
    result = _train(data_root, tmp_path_factory.mktemp("in_process"), workers=0)
    assert result["steps"] == STEPS and len(result["losses"]) == STEPS
    return result["losses"]


def test_workers_give_the_in_process_losses(
    data_root: Path, tmp_path: Path, in_process: list[float]
) -> None:
    result = _train(data_root, tmp_path / "workers", workers=2)
    assert result["losses"] == in_process


def test_resume_mid_epoch_with_workers_equals_the_uninterrupted_run(
    data_root: Path, tmp_path: Path, in_process: list[float]
) -> None:
    out = tmp_path / "crashed"
    with pytest.raises(_Crash):
        _train(data_root, out, workers=2, crash_at=CRASH_AT)
    found = latest_checkpoint(out)
    assert found is not None
    position = found[1]
    # Step 3 ended at batch 6 of the 8 of epoch 0: the resume starts inside the epoch.
    assert (position["step"], position["epoch"], position["batch"]) == (3, 0, 6)

    resumed = _train(data_root, out, workers=2)
    assert resumed["resumed_from"] == 3 and resumed["steps"] == STEPS
    assert resumed["losses"] == pytest.approx(in_process[3:], abs=1e-6)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_is_named(data_root: Path, tmp_path: Path, workers: int) -> None:
    _deterministic()
    model, processor, convs = _setup(data_root)
    convs = convs[:2]
    root = tmp_path / "images"
    paths = [images_and_turns(c)[0][0] for c in convs]
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data_root / "phantoms" / rel, root / rel)
    bad = root / paths[1]
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 8)
    stage = _stage(max_steps=1, grad_accum=1, save_every=None)
    with pytest.raises(ImageError, match=bad.name) as caught:
        train_stage(
            model,
            processor,
            convs,
            stage,
            tmp_path / "out",
            image_root=root,
            progress=False,
            num_workers=workers,
        )
    assert str(bad) in str(caught.value)


def test_contrastive_batches_through_workers(data_root: Path, tmp_path: Path) -> None:
    def run(workers: int) -> list[float]:
        _deterministic()
        model, processor, convs = _setup(data_root)
        stage = _stage(
            objective="contrastive",
            trainability=Trainability(vision_tower=ComponentTraining("full", lr=1e-3)),
            max_steps=2,
            grad_accum=1,
            batch_size=4,
            save_every=None,
        )
        result = train_stage(
            model,
            processor,
            convs,
            stage,
            tmp_path / f"clip{workers}",
            image_root=data_root / "phantoms",
            progress=False,
            num_workers=workers,
            val_conversations=convs[:4],
        )
        assert len(result["losses"]) == 2 and "val_loss" in result["validation"]
        return [*result["losses"], result["validation"]["val_loss"]]

    assert run(1) == run(0)


def test_negative_workers_are_refused(data_root: Path, tmp_path: Path) -> None:
    model, processor, convs = _setup(data_root)
    with pytest.raises(ValueError, match="num_workers"):
        train_stage(model, processor, convs, _stage(), tmp_path, num_workers=-1)
