"""Checkpoints of a training stage that resume exactly, and the best trainable weights.

Every ``save_every`` steps (and at the end) ``save_checkpoint`` writes
``OUT/checkpoints/step-000006`` with ``Accelerator.save_state`` (model, optimiser, scheduler,
RNG states) and ``position.json`` (step, epoch, batch index of the next batch, last loss,
early-stopping state), then points ``OUT/checkpoint.json`` at it, replaced atomically: a crash
at any moment leaves the previous checkpoint usable::

    save_checkpoint(accelerator, out, {"step": 6, "epoch": 0, "batch": 12, "loss": 3.2}, keep=2)
    position = resume_checkpoint(accelerator, out)   # loads the state; None if there is none

``save_tensors`` / ``load_trainable`` keep and restore the trainable parameters alone (the best
weights of early stopping).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from radixpert.io import write_bytes, write_json
from radixpert.models.trainability import _unwrap

logger = logging.getLogger(__name__)

__all__ = [
    "BEST_FILE",
    "CHECKPOINT_DIR",
    "CHECKPOINT_POINTER",
    "POSITION_FILE",
    "latest_checkpoint",
    "load_trainable",
    "resume_checkpoint",
    "save_checkpoint",
    "save_tensors",
    "trainable_state",
]

CHECKPOINT_POINTER = "checkpoint.json"
POSITION_FILE = "position.json"
CHECKPOINT_DIR = "checkpoints"
BEST_FILE = "best_trainable.safetensors"


def latest_checkpoint(out_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint of ``out_dir`` and its position, or None."""
    pointer = Path(out_dir) / CHECKPOINT_POINTER
    if not pointer.is_file():
        return None
    name = json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
    path = Path(out_dir) / name
    position = json.loads((path / POSITION_FILE).read_text(encoding="utf-8"))
    return path, position


def resume_checkpoint(accelerator: Any, out_dir: str | Path) -> dict[str, Any] | None:
    """Loads the newest checkpoint of ``out_dir`` into ``accelerator``; returns its position.

    Returns:
        The saved ``position.json`` (``step``, ``epoch``, ``batch``, ``loss`` and, with early
        stopping, ``early_stopping`` and ``stopped_early``), or None without a checkpoint.
    """
    found = latest_checkpoint(out_dir)
    if found is None:
        return None
    path, position = found
    accelerator.load_state(str(path))
    logger.info(
        "resumed from %s at step %d (epoch %d, batch %d)",
        path,
        position["step"],
        position["epoch"],
        position["batch"],
    )
    return position


def save_checkpoint(
    accelerator: Any, out_dir: str | Path, position: Mapping[str, Any], keep: int
) -> Path:
    """Saves a checkpoint, points ``checkpoint.json`` at it, drops all but ``keep`` newest.

    Args:
        accelerator: The stage's ``Accelerator`` (every process calls this).
        out_dir: The stage's folder.
        position: Where training stands: ``step``, ``epoch``, ``batch`` (of the next batch),
            ``loss`` and any state a resume needs; saved as ``position.json``.
        keep: How many newest checkpoints to keep.

    Returns:
        The checkpoint's folder.
    """
    out = Path(out_dir)
    name = f"{CHECKPOINT_DIR}/step-{position['step']:06d}"
    path = out / name
    # One process clears a stale folder of that step, and nobody writes into it before that:
    # every process makes the folder in save_state, so a late rmtree by another process
    # deleted what the first had begun to write (seen as a missing random_states_N.pkl).
    if accelerator.is_main_process and path.exists():
        shutil.rmtree(path)
    accelerator.wait_for_everyone()
    # Tied input/output embeddings make accelerate warn "Removed shared tensor ... while
    # saving" at every checkpoint; the weights are restored tied on load (the resume test
    # checks it), so that line is kept out of the progress output.
    quiet = logging.getLogger("accelerate.utils.other")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        accelerator.save_state(str(path))
    finally:
        quiet.setLevel(level)
    if accelerator.is_main_process:
        write_json(path / POSITION_FILE, dict(position))
        write_json(out / CHECKPOINT_POINTER, {"checkpoint": name, **position})
        old = sorted((out / CHECKPOINT_DIR).glob("step-*"))
        for stale in old[: max(0, len(old) - keep)]:
            if stale != path:
                shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    logger.info("checkpoint %s (epoch %d, batch %d)", path, position["epoch"], position["batch"])
    return path


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable parameters (the part a stage changes), detached copies on the CPU."""
    return {
        n: p.detach().to("cpu", copy=True)
        for n, p in _unwrap(model).named_parameters()
        if p.requires_grad
    }


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Writes ``tensors`` as one safetensors file, atomically."""
    from safetensors.torch import save

    write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


def load_trainable(model: Any, path: Path) -> None:
    """Copies the tensors saved by ``save_tensors`` back into ``model``'s parameters."""
    from safetensors.torch import load_file

    saved = load_file(str(path))
    params = dict(_unwrap(model).named_parameters())
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
