"""The training loop of one stage, with checkpoints that resume exactly.

``train_stage`` trains a model on conversations for one ``Stage`` of a recipe::

    from radixpert.train.loop import train_stage

    result = train_stage(model, processor, conversations, recipe.stage("stage1"), "runs/s1",
                         image_root=Path("/data/phantoms"), seed=recipe.seed)
    logging.getLogger(__name__).info("final loss %.4f after %d steps", result["final_loss"],
                                     result["steps"])

What it does:

* ``apply_trainability`` with the stage's component settings (unless the model already carries
  peft adapters, e.g. after ``next_stage``);
* an ``accelerate.Accelerator`` with the stage's mixed precision and gradient accumulation;
* AdamW with one parameter group per component (the stage's per-component learning rates; no
  weight decay on biases and norms), a cosine, linear or constant schedule after a linear
  warmup of ``warmup_ratio`` of the steps, and gradient-norm clipping;
* the loss is the model's own next-token loss on the processor's labels, which are -100
  everywhere but the answers;
* length-grouped batches: each epoch the examples are shuffled by a generator seeded with
  ``(seed, epoch)``, cut into groups of ``GROUP_BATCHES`` batches, sorted by length inside a
  group and batched, then the batch order is shuffled by the same generator. The batches form
  one stream across epochs, and every optimiser step takes the next ``grad_accum`` batches;
* every ``save_every`` steps (and at the end) a checkpoint ``checkpoints/step-000006`` holds
  ``Accelerator.save_state`` (model, optimiser, scheduler, RNG states) and ``position.json``
  (step, epoch, batch index of the next batch, last loss); ``checkpoint.json`` in ``out_dir``
  then names the newest complete checkpoint and is replaced atomically, so a crash at any
  moment leaves the previous checkpoint usable.

Exact resume: with ``resume=True`` a checkpoint named by ``checkpoint.json`` is loaded, and
training continues at the saved data position with the saved RNG states, so the losses after
it equal those of a run that was never interrupted.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from radixpert.models.trainability import (
    LLAVA_COMPONENTS,
    Prefix,
    _component_of,
    _unwrap,
    apply_trainability,
)
from radixpert.train.recipe import Stage

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_POINTER",
    "GROUP_BATCHES",
    "POSITION_FILE",
    "build_optimizer",
    "build_scheduler",
    "example_length",
    "latest_checkpoint",
    "length_grouped_batches",
    "total_steps",
    "train_stage",
]

CHECKPOINT_POINTER = "checkpoint.json"
POSITION_FILE = "position.json"
CHECKPOINT_DIR = "checkpoints"
# Batches per length group: sorting inside a group keeps padding low, groups keep randomness.
GROUP_BATCHES = 8
_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def _write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """Writes ``payload`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(dict(payload), f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _record(item: Any) -> tuple[list[str], Any]:
    """(image paths, turns) of a ``Conversation`` or a ShareGPT mapping."""
    if isinstance(item, Mapping):
        images, turns = item.get("image") or [], item["conversations"]
    else:
        images, turns = item.image, item.conversations
    if isinstance(images, str | Path):
        images = [images]
    return [str(p) for p in images], turns


def example_length(processor: Any, item: Any) -> int:
    """Token length of one example as the processor encodes it (images expanded).

    Args:
        processor: A ``RadProcessor``.
        item: A ``Conversation`` or a mapping with ``conversations`` (and ``image``).
    """
    images, turns = _record(item)
    ids, _ = processor.encode_conversation(turns)
    text = " ".join(t["value"] for t in turns)
    missing = max(0, len(images) - text.count(processor.config.image_token))
    return len(ids) + missing * processor.config.image_seq_length


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """The batches (lists of example indices) of one epoch, grouped by length.

    Deterministic in ``(seed, epoch)``: a resumed run recomputes the same batches.

    Args:
        lengths: Token length of each example.
        batch_size: Examples per batch (the last batch of a group may be smaller).
        seed: Run seed.
        epoch: Epoch number, from 0.

    Returns:
        Every example exactly once, in batches.
    """
    rng = random.Random(f"radixpert.loop:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    group = batch_size * GROUP_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: -lengths[i])
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def total_steps(stage: Stage, n_batches: int, max_steps: int | None = None) -> int:
    """Optimiser steps of the stage: ``max_steps`` if given, else the stage's own length.

    Args:
        stage: The stage (``max_steps`` or ``epochs``).
        n_batches: Batches per epoch.
        max_steps: An override of the stage's length (the schedule follows it).
    """
    if max_steps is not None:
        return int(max_steps)
    if stage.max_steps is not None:
        return int(stage.max_steps)
    return max(1, (int(stage.epochs or 1) * n_batches) // stage.grad_accum)


def build_optimizer(
    model: Any, stage: Stage, component_prefixes: Mapping[str, Prefix] = LLAVA_COMPONENTS
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, one group per component and decay kind.

    Each component gets the stage's learning rate for it; biases and other 1-D parameters
    (norms) get no weight decay.

    Raises:
        ValueError: If no parameter is trainable.
    """
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, param in _unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        component = _component_of(name, component_prefixes)
        groups.setdefault((component, param.ndim >= 2), []).append(param)
    if not groups:
        raise ValueError("no trainable parameter; apply the stage's trainability first")
    opt = stage.optimizer
    param_groups = [
        {
            "params": params,
            "lr": stage.lr(component),
            "weight_decay": opt.weight_decay if decay else 0.0,
            "name": f"{component}{'' if decay else '.no_decay'}",
        }
        for (component, decay), params in sorted(groups.items())
    ]
    return torch.optim.AdamW(param_groups, betas=opt.betas, eps=opt.eps)


def build_scheduler(optimizer: torch.optim.Optimizer, stage: Stage, steps: int) -> Any:
    """The stage's schedule over ``steps`` optimiser steps, with linear warmup."""
    from transformers import get_scheduler

    warmup = math.ceil(stage.schedule.warmup_ratio * steps)
    return get_scheduler(
        _SCHEDULES[stage.schedule.name],
        optimizer,
        num_warmup_steps=warmup,
        num_training_steps=steps,
    )


def latest_checkpoint(out_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint of ``out_dir`` and its position, or None."""
    pointer = Path(out_dir) / CHECKPOINT_POINTER
    if not pointer.is_file():
        return None
    name = json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
    path = Path(out_dir) / name
    position = json.loads((path / POSITION_FILE).read_text(encoding="utf-8"))
    return path, position


def _save(accelerator: Any, out_dir: Path, position: dict[str, Any], keep: int) -> None:
    """Saves a checkpoint, points ``checkpoint.json`` at it, drops all but ``keep`` newest."""
    name = f"{CHECKPOINT_DIR}/step-{position['step']:06d}"
    path = out_dir / name
    if path.exists():
        shutil.rmtree(path)
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        _write_json_atomic(path / POSITION_FILE, position)
        _write_json_atomic(out_dir / CHECKPOINT_POINTER, {"checkpoint": name, **position})
        old = sorted((out_dir / CHECKPOINT_DIR).glob("step-*"))
        for stale in old[: max(0, len(old) - keep)]:
            if stale != path:
                shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    logger.info("checkpoint %s (epoch %d, batch %d)", path, position["epoch"], position["batch"])


def train_stage(
    model: Any,
    processor: Any,
    conversations: Sequence[Any],
    stage: Stage,
    out_dir: str | Path,
    *,
    resume: bool = True,
    image_root: str | Path = Path("."),
    seed: int = 0,
    log_every: int = 10,
    max_steps: int | None = None,
    component_prefixes: Mapping[str, Prefix] = LLAVA_COMPONENTS,
    keep_checkpoints: int = 2,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Trains ``model`` for one stage; resumes exactly from a checkpoint in ``out_dir``.

    Args:
        model: A transformers model; its trainability is set from the stage unless it already
            carries peft adapters (then the caller set it, e.g. with ``next_stage``).
        processor: The ``RadProcessor`` that turns images and conversations into inputs.
        conversations: ``Conversation`` records or mappings with ``conversations`` and
            ``image`` (paths relative to ``image_root``).
        stage: The stage: trainability, optimiser, schedule, length, batch, accumulation,
            clipping, mixed precision, ``save_every``.
        out_dir: Where checkpoints go.
        resume: Continue from the checkpoint in ``out_dir`` if there is one.
        image_root: Folder the image paths are relative to.
        seed: Seed of the batch order and of the RNGs at a fresh start.
        log_every: Steps between loss log lines.
        max_steps: Overrides the stage's length (the schedule follows it).
        component_prefixes: Module prefixes of the components (``LLAVA_COMPONENTS``).
        keep_checkpoints: How many newest checkpoints to keep.
        on_step: Called after every optimiser step with (step, loss), e.g. for metrics.

    Returns:
        ``final_loss`` (mean loss of the last step, None if no step ran), ``steps`` (the
        optimiser steps done in total), ``losses`` (this call's per-step losses) and
        ``resumed_from`` (the step resumed at, 0 for a fresh start).

    Raises:
        ValueError: On an empty data set or a stage objective other than "lm".
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if stage.objective != "lm":
        raise ValueError(f"objective {stage.objective!r} is not supported by this loop yet")
    if not conversations:
        raise ValueError("no conversations to train on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(image_root)
    set_seed(seed)
    if not hasattr(model, "peft_config"):
        model = apply_trainability(model, stage.component_specs(), component_prefixes)

    lengths = [example_length(processor, c) for c in conversations]
    n_batches = math.ceil(len(conversations) / stage.batch_size)
    steps_total = total_steps(stage, n_batches, max_steps)
    accelerator = Accelerator(
        mixed_precision=stage.mixed_precision, gradient_accumulation_steps=stage.grad_accum
    )
    optimizer = build_optimizer(model, stage, component_prefixes)
    scheduler = build_scheduler(optimizer, stage, steps_total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    step, epoch, batch_index, last_loss = 0, 0, 0, None
    found = latest_checkpoint(out) if resume else None
    if found is not None:
        path, position = found
        accelerator.load_state(str(path))
        step, epoch, batch_index = position["step"], position["epoch"], position["batch"]
        last_loss = position.get("loss")
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)", path, step, epoch, batch_index
        )
    resumed_from = step

    def make_batch(indices: list[int]) -> dict[str, torch.Tensor]:
        images, turns = [], []
        for i in indices:
            paths, conv = _record(conversations[i])
            images.append([root / p for p in paths])
            turns.append(conv)
        use_images = any(images)
        batch = processor(images if use_images else None, turns)
        return {k: v.to(accelerator.device) for k, v in batch.items()}

    plan = length_grouped_batches(lengths, stage.batch_size, seed, epoch)
    losses: list[float] = []
    model.train()
    while step < steps_total:
        micro: list[float] = []
        for _ in range(stage.grad_accum):
            if batch_index >= len(plan):
                epoch, batch_index = epoch + 1, 0
                plan = length_grouped_batches(lengths, stage.batch_size, seed, epoch)
            batch = make_batch(plan[batch_index])
            batch_index += 1
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and stage.grad_clip is not None:
                    accelerator.clip_grad_norm_(model.parameters(), stage.grad_clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro.append(float(loss.detach()))
        step += 1
        last_loss = sum(micro) / len(micro)
        losses.append(last_loss)
        if step % max(1, log_every) == 0 or step == steps_total:
            logger.info(
                "stage %s step %d/%d loss %.4f lr %.3g",
                stage.name,
                step,
                steps_total,
                last_loss,
                scheduler.get_last_lr()[0],
            )
        save_now = stage.save_every is not None and step % stage.save_every == 0
        if save_now or step == steps_total:
            position = {"step": step, "epoch": epoch, "batch": batch_index, "loss": last_loss}
            _save(accelerator, out, position, keep_checkpoints)
        if on_step is not None:
            on_step(step, last_loss)
    accelerator.wait_for_everyone()
    return {"final_loss": last_loss, "steps": step, "losses": losses, "resumed_from": resumed_from}
