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
* the batches come from a torch ``DataLoader`` whose ``num_workers`` processes read the
  images and run the processor for the next batches while a step runs (pinned memory and
  non-blocking copies on CUDA). Its batch sampler yields the plan's batches from the saved
  position, and each batch's random draws are seeded by ``(seed, epoch, batch)``, so the
  losses are the same with any number of workers and after a resume. An image a worker
  cannot read raises ``ImageError`` naming the file in the training process;
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

import contextlib
import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from radixpert.errors import InputError, RadixpertError, UnknownName, UsageError
from radixpert.instruct.conversation import images_and_turns
from radixpert.io import write_bytes, write_json
from radixpert.models.connectors import IGNORE_INDEX
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
METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best_trainable.safetensors"
# Batches per length group: sorting inside a group keeps padding low, groups keep randomness.
GROUP_BATCHES = 8
_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def example_length(processor: Any, item: Any) -> int:
    """Token length of one example as the processor encodes it (images expanded).

    Args:
        processor: A ``RadProcessor``.
        item: A ``Conversation`` or a mapping with ``conversations`` (and ``image``).
    """
    return _measure(processor, item)[0]


def _measure(processor: Any, item: Any) -> tuple[int, int]:
    """(token length with the images expanded, answer tokens) of one example, one encoding."""
    images, turns = images_and_turns(item)
    ids, labels = processor.encode_conversation(turns)
    text = " ".join(t["value"] for t in turns)
    missing = max(0, len(images) - text.count(processor.config.image_token))
    answer = sum(1 for t in labels if t != IGNORE_INDEX)
    return len(ids) + missing * processor.config.image_seq_length, answer


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
        write_json(path / POSITION_FILE, position)
        write_json(out_dir / CHECKPOINT_POINTER, {"checkpoint": name, **position})
        old = sorted((out_dir / CHECKPOINT_DIR).glob("step-*"))
        for stale in old[: max(0, len(old) - keep)]:
            if stale != path:
                shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    logger.info("checkpoint %s (epoch %d, batch %d)", path, position["epoch"], position["batch"])


class _EarlyStop:
    """Patience counter on one validation metric; its state rides in ``position.json``."""

    def __init__(self, rule: Any, state: Mapping[str, Any] | None) -> None:
        self.rule = rule
        state = state or {}
        self.best: float | None = state.get("best")
        self.bad: int = int(state.get("bad", 0))
        self.best_step: int | None = state.get("best_step")

    def update(self, metrics: Mapping[str, float], step: int) -> bool:
        """Records an evaluation; True if it is the best so far."""
        if self.rule.metric not in metrics:
            raise UnknownName(
                f"early_stopping.metric {self.rule.metric!r} is not among the validation "
                f"metrics {sorted(metrics)}"
            )
        value = float(metrics[self.rule.metric])
        better = self.best is None or (
            value < self.best if self.rule.mode == "min" else value > self.best
        )
        if better:
            self.best, self.bad, self.best_step = value, 0, step
        else:
            self.bad += 1
        return better

    @property
    def stop(self) -> bool:
        return self.bad >= self.rule.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad, "best_step": self.best_step}


def _trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The trainable parameters (the part a stage changes), detached copies on the CPU."""
    return {
        n: p.detach().to("cpu", copy=True)
        for n, p in _unwrap(model).named_parameters()
        if p.requires_grad
    }


def _peak_memory_gb(device: torch.device) -> float:
    """Peak accelerator memory (GiB) on CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _gate_weights(model: Any) -> list[float] | None:
    """Mean HCF gate weight per level of the last forward with images, if the model has HCF."""
    gate = getattr(_unwrap(model), "last_gate_weights", None)
    if gate is None:
        return None
    return [float(v) for v in gate.float().mean(dim=0)]


def _loss_tokens(batch: Mapping[str, torch.Tensor], causal: bool) -> int:
    """Label tokens the model's mean loss of ``batch`` averages over."""
    labels = batch["labels"]
    if causal:
        labels = labels[..., 1:]
    return int((labels != IGNORE_INDEX).sum())


# ------------------------------------------------------------------ data feeding
#
# A stage's micro-batches come from a torch DataLoader: worker processes read, letterbox and
# tokenise the next batches while the training process runs the current step. The batch sampler
# yields exactly the index lists of the length-grouped plan (this process's slice of each global
# batch), from the saved position on resume, and the collate function is the processor call.

PREFETCH_BATCHES = 2  # per worker: enough to hide a slow image read behind the step before it


def default_num_workers() -> int:
    """Worker processes per training process by default: all cores but one, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def _shard(indices: Sequence[int], world: int, rank: int) -> list[int]:
    """This process's contiguous slice of a global batch (empty when the batch is too small)."""
    size = math.ceil(len(indices) / world)
    return list(indices[rank * size : (rank + 1) * size])


class _BatchStream:
    """The length-grouped plans of successive epochs as one stream of global batches.

    ``epoch`` and ``batch`` are the position of the next batch (``batch`` may equal the plan's
    length: the epoch is then rolled over on the next ``take``), as ``position.json`` saves it.
    """

    def __init__(
        self, lengths: Sequence[int], batch_size: int, seed: int, epoch: int, batch: int
    ) -> None:
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.epoch, self.batch = epoch, batch
        self.plan = length_grouped_batches(self.lengths, batch_size, seed, epoch)

    def take(self) -> tuple[str, list[int]]:
        """(tag ``train:EPOCH:BATCH``, example indices) of the next global batch."""
        if self.batch >= len(self.plan):
            self.epoch, self.batch = self.epoch + 1, 0
            self.plan = length_grouped_batches(self.lengths, self.batch_size, self.seed, self.epoch)
        tag, indices = f"train:{self.epoch}:{self.batch}", self.plan[self.batch]
        self.batch += 1
        return tag, indices


class _PlanSampler(Sampler[list[tuple[int, str]]]):
    """Batch sampler: this process's part of the next ``count`` global batches of the plan.

    Yields ``(example index, batch tag)`` pairs. A process whose slice of a small batch is
    empty gets the batch's first example (the loop weighs its loss 0), as the loop always did.
    """

    def __init__(self, stream: _BatchStream, count: int, world: int, rank: int) -> None:
        self.start = (stream.lengths, stream.batch_size, stream.seed, stream.epoch, stream.batch)
        self.count, self.world, self.rank = count, world, rank

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[tuple[int, str]]]:
        stream = _BatchStream(*self.start)
        for _ in range(self.count):
            tag, indices = stream.take()
            mine = _shard(indices, self.world, self.rank) or indices[:1]
            yield [(i, tag) for i in mine]


class _ValidationSampler(Sampler[list[tuple[int, str]]]):
    """Batch sampler of the held-out set: consecutive global batches, this process's slices."""

    def __init__(self, n: int, global_batch: int, world: int, rank: int) -> None:
        self.batches = []
        for k, start in enumerate(range(0, n, global_batch)):
            mine = _shard(range(start, min(start + global_batch, n)), world, rank)
            if mine:
                self.batches.append([(i, f"val:{k}") for i in mine])

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, str]]]:
        return iter(self.batches)


class _Examples(Dataset):
    """The conversations keyed by ``(index, batch tag)``: image paths (under root) and turns."""

    def __init__(self, conversations: Sequence[Any], root: Path) -> None:
        self.conversations, self.root = conversations, root

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, key: tuple[int, str]) -> tuple[str, list[Path], list[dict[str, Any]]]:
        index, tag = key
        paths, turns = images_and_turns(self.conversations[index])
        return tag, [self.root / p for p in paths], turns


@contextlib.contextmanager
def _seeded(key: str) -> Iterator[None]:
    """Seeds ``random``, numpy and torch (CPU) from ``key`` inside, and restores them after.

    A batch's random draws (any augmentation in the processor) then depend on the run seed and
    the batch's place in the plan alone: the same with 0, 1 or 4 workers and after a resume,
    and building a batch in the training process leaves its own random streams untouched.
    """
    value = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    saved_random, saved_numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(value)
        np.random.seed(value % 2**32)
        torch.manual_seed(value)
        try:
            yield
        finally:
            random.setstate(saved_random)
            np.random.set_state(saved_numpy)


class _Collate:
    """collate_fn: the processor call on one micro-batch; returns ``(batch tag, tensors)``.

    Args:
        processor: The ``RadProcessor``.
        seed: The run seed (with the batch tag, the seed of the batch's random draws).
        contrastive: Build image-report pairs (``contrastive_batch``: the first image and the
            last turn of each conversation) instead of conversations.
    """

    def __init__(self, processor: Any, seed: int, contrastive: bool, head: Any = None) -> None:
        self.processor, self.seed, self.contrastive = processor, seed, contrastive
        # The contrastive head, when it tokenizes reports itself (open_clip's text tower:
        # its tokenizer). Workers get a copy of it; only its tokenize() is used there.
        self.head = head

    def __call__(
        self, examples: Sequence[tuple[str, list[Path], list[dict[str, Any]]]]
    ) -> tuple[str, dict[str, torch.Tensor]]:
        tag = examples[0][0]
        images = [paths for _, paths, _ in examples]
        turns = [conv for _, _, conv in examples]
        try:
            with _seeded(f"radixpert.loop.batch:{self.seed}:{tag}"):
                if self.contrastive:
                    from radixpert.train.contrastive import contrastive_batch

                    reports = [conv[-1]["value"] for conv in turns]
                    batch = contrastive_batch(
                        self.processor, [p[0] for p in images], reports, head=self.head
                    )
                else:
                    batch = self.processor(images if any(images) else None, turns)
        except RadixpertError:
            raise  # an ImageError already names the file that failed
        except (OSError, ValueError) as e:
            files = ", ".join(str(p) for paths in images for p in paths) or "no images"
            raise InputError(f"cannot build batch {tag} ({files}): {e}") from e
        return tag, batch


def _loader(
    examples: _Examples,
    sampler: Sampler[list[tuple[int, str]]],
    collate: _Collate,
    num_workers: int,
    device: torch.device,
    seed: int,
    persistent: bool,
) -> DataLoader:
    """A DataLoader of ready batches (pinned on CUDA, for non-blocking copies)."""
    # Without a generator the DataLoader draws its workers' base seed from the global torch
    # RNG at each iteration, which would shift the dropout masks of the steps that follow.
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        examples,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=PREFETCH_BATCHES if num_workers else None,
        persistent_workers=persistent and num_workers > 0,
        generator=generator,
    )


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
    val_conversations: Sequence[Any] = (),
    evaluate_fn: Callable[[Any], Mapping[str, float]] | None = None,
    log_with: Sequence[str] = (),
    progress: bool = True,
    global_step_offset: int = 0,
    accelerator: Any = None,
    num_workers: int | None = None,
) -> dict[str, Any]:
    """Trains ``model`` for one stage; resumes exactly from a checkpoint in ``out_dir``.

    Args:
        model: A transformers model; its trainability is set from the stage unless it already
            carries peft adapters (then the caller set it, e.g. with ``next_stage``).
        processor: The ``RadProcessor`` that turns images and conversations into inputs.
        conversations: ``Conversation`` records or mappings with ``conversations`` and
            ``image`` (paths relative to ``image_root``, or absolute).
        stage: The stage: trainability, optimiser, schedule, length, batch (per process),
            accumulation, clipping, mixed precision, gradient checkpointing, ``eval_every``,
            ``save_every``, early stopping.
        out_dir: Where checkpoints, ``metrics.jsonl`` and the tracker logs go.
        resume: Continue from the checkpoint in ``out_dir`` if there is one.
        image_root: Folder relative image paths are relative to.
        seed: Seed of the batch order and of the RNGs at a fresh start.
        log_every: Steps between loss log lines and metric records.
        max_steps: Overrides the stage's length (the schedule follows it).
        component_prefixes: Module prefixes of the components (``LLAVA_COMPONENTS``).
        keep_checkpoints: How many newest checkpoints to keep.
        on_step: Called after every optimiser step with (step, loss), e.g. for metrics.
        val_conversations: Held-out examples; every ``eval_every`` steps (else once per
            epoch) and at the end their token-weighted loss is ``val_loss``.
        evaluate_fn: Called with the model at each evaluation; the metrics it returns (e.g.
            a report metric) are logged beside ``val_loss`` and can drive early stopping.
        log_with: accelerate trackers, e.g. ``["tensorboard"]`` or ``["tensorboard",
            "mlflow"]``; logs go under ``out_dir/logs``.
        progress: Show a progress bar (main process only).
        global_step_offset: Added to the step in tracker logs, so stages line up in one plot.
        accelerator: An ``accelerate.Accelerator`` to use; by default one is made from the
            stage's mixed precision and accumulation.
        num_workers: DataLoader worker processes per training process that build the next
            batches (read and letterbox the images, tokenise) while a step runs; 0 builds
            each batch in the training process. Default ``default_num_workers()``: all cores
            but one, at most 4. The losses do not depend on it.

    Returns:
        ``final_loss`` (mean loss of the last step, None if no step ran), ``steps`` (the
        optimiser steps done in total), ``losses`` (this call's per-step losses),
        ``resumed_from`` (the step resumed at, 0 for a fresh start), ``stopped_early``,
        ``best`` (early stopping's best value and step, or None), ``validation`` (the last
        validation metrics) and ``model`` (the trained model, unwrapped from accelerate).

    Raises:
        ValueError: On an empty data set, a stage objective this loop cannot train or a
            negative ``num_workers``.
        ImageError: An image of a batch cannot be read (the message names the file), also
            when a worker process read it.

    Batches and loss: ``stage.batch_size`` is per process; each micro-step takes one global
    batch of ``batch_size x num_processes`` examples from the length-grouped plan and every
    process its own slice. The loss is the sum of answer-token losses divided by the answer
    tokens of the whole optimiser step (all micro-batches of all processes), so N processes
    and one process with the same global batch compute the same gradient, and gradient
    accumulation does not over-weight short answers.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from tqdm.auto import tqdm

    if stage.objective not in ("lm", "contrastive"):
        raise ValueError(f"objective {stage.objective!r} is not supported")
    if not conversations:
        raise ValueError("no conversations to train on")
    workers = default_num_workers() if num_workers is None else int(num_workers)
    if workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(image_root)
    set_seed(seed)
    if not hasattr(model, "peft_config"):
        model = apply_trainability(model, stage.component_specs(), component_prefixes)
    if stage.gradient_checkpointing:
        base = _unwrap(model)
        # transformers 5 calls it activation checkpointing; the old name still works but warns.
        settings = {"use_reentrant": False}
        if hasattr(base, "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=settings)
        elif hasattr(base, "gradient_checkpointing_enable"):
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=settings)
        else:
            raise ValueError(f"{type(base).__name__} does not support gradient checkpointing")
        if hasattr(base, "enable_input_require_grads"):
            base.enable_input_require_grads()
    family = getattr(getattr(processor, "config", None), "family", "llava")
    causal = family != "radscribe"

    contrastive = None
    if stage.objective == "contrastive":
        from radixpert.train.contrastive import ContrastiveHead

        contrastive = ContrastiveHead.for_model(_unwrap(model))
    if accelerator is None:
        trackers = list(log_with)
        # A model can hold trainable parameters that a stage's loss never reaches (the vision
        # tower's final LayerNorm when features come from hidden states, an HCF level or a
        # head a task does not use): DDP must then look for them each step, as the
        # transformers Trainer does by default. The loop's checkpointing is non-reentrant,
        # which works with that search.
        _fit_accelerator_state(stage.mixed_precision)
        accelerator = Accelerator(
            mixed_precision=stage.mixed_precision,
            gradient_accumulation_steps=stage.grad_accum,
            log_with=trackers or None,
            project_dir=str(out / "logs"),
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
    world, rank = accelerator.num_processes, accelerator.process_index
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and world == 1:
        raise UsageError(
            f"launched with WORLD_SIZE={launched} but accelerate runs one process; on CPU set "
            "ACCELERATE_USE_CPU=true (see `radixpert config path accelerate/cpu_ddp_2proc`)"
        )
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None:  # DeepSpeed runs the step itself: give it the stage's settings
        plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=stage.batch_size,
            gradient_accumulation_steps=stage.grad_accum,
            gradient_clipping=stage.grad_clip or 0.0,
        )
    main = accelerator.is_main_process

    measured = [_measure(processor, c) for c in conversations]
    lengths = [length for length, _ in measured]
    # Length groups would fill a contrastive batch with look-alike reports (false negatives):
    # a contrastive stage batches at random.
    plan_lengths = [0] * len(lengths) if contrastive is not None else lengths
    answer = [tokens for _, tokens in measured] if causal else None
    global_batch = stage.batch_size * world
    n_batches = math.ceil(len(conversations) / global_batch)
    steps_total = total_steps(stage, n_batches, max_steps)
    optimizer = build_optimizer(model, stage, component_prefixes)
    if contrastive is not None:
        optimizer.add_param_group(
            {
                "params": list(contrastive.parameters()),
                "lr": stage.lr("vision_tower"),
                "weight_decay": 0.0,
                "name": "contrastive_head",
            }
        )
    scheduler = build_scheduler(optimizer, stage, steps_total)
    # The scheduler is not prepared: accelerate would step it once per process per step
    # (it assumes a dataloader sharded by the processes), which would run the schedule N times
    # too fast on N processes. It steps here once per optimiser step and is checkpointed.
    if contrastive is not None:
        model, contrastive, optimizer = accelerator.prepare(model, contrastive, optimizer)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    if log_with and main:
        accelerator.init_trackers(stage.name, config=_flat_config(stage))

    step, epoch, batch_index, last_loss = 0, 0, 0, None
    stopper = _EarlyStop(stage.early_stopping, None) if stage.early_stopping else None
    found = latest_checkpoint(out) if resume else None
    if found is not None:
        path, position = found
        accelerator.load_state(str(path))
        step, epoch, batch_index = position["step"], position["epoch"], position["batch"]
        last_loss = position.get("loss")
        if stage.early_stopping:
            stopper = _EarlyStop(stage.early_stopping, position.get("early_stopping"))
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)", path, step, epoch, batch_index
        )
    resumed_from = step
    stopped = bool(found and found[1].get("stopped_early"))

    # The DataLoaders are not given to accelerator.prepare: it would re-shard them by process
    # (whole batches per process, padded with repeated examples to even counts) and resume by
    # skipping batches, while the loop gives every process its slice of each global batch, so
    # that the step's loss denominator spans all processes and N processes train as one with
    # the same global batch, and restarts its sampler at the saved plan position.
    own_tokenizer = contrastive is not None and hasattr(contrastive, "tokenizer")
    collate = _Collate(processor, seed, contrastive is not None,
                       head=contrastive if own_tokenizer else None)  # fmt: skip

    def to_device(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # non_blocking: from pinned memory the copy overlaps the step (a no-op on the CPU).
        return {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}

    def lm_loss(batch: Mapping[str, torch.Tensor], denominator: int) -> tuple[torch.Tensor, float]:
        """(loss to backpropagate, this shard's share of the step's mean token loss)."""
        local = _loss_tokens(batch, causal)
        loss = model(**batch).loss
        summed = loss * local
        # accelerate divides by grad_accum and DDP averages over processes: undo both so the
        # gradient is that of sum(token losses) / (tokens of the whole step).
        return summed * stage.grad_accum * world / denominator, float(summed.detach()) / denominator

    def contrastive_loss(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
        from radixpert.train.contrastive import contrastive_loss as clip_loss

        loss = clip_loss(model, contrastive, batch)
        # Each process contrasts its own shard (local negatives), as open_clip without
        # gather_with_grad; accelerate and DDP then average the shards' gradients.
        return loss, float(loss.detach())

    # Validation runs every eval_every steps: its workers stay up between evaluations.
    val_loader = _loader(
        _Examples(val_conversations, root),
        _ValidationSampler(len(val_conversations), global_batch, world, rank),
        collate,
        workers,
        accelerator.device,
        seed,
        persistent=True,
    )

    @torch.no_grad()
    def validate() -> dict[str, float]:
        metrics: dict[str, float] = {}
        if val_conversations:
            model.eval()
            total, tokens = 0.0, 0
            for _, loaded in val_loader:
                batch = to_device(loaded)
                if contrastive is not None:
                    size = int(batch["pixel_values"].shape[0])
                    total += contrastive_loss(batch)[1] * size
                    tokens += size
                    continue
                n = _loss_tokens(batch, causal)
                total += float(model(**batch).loss) * n
                tokens += n
            both = accelerator.reduce(
                torch.tensor([total, float(tokens)], device=accelerator.device), "sum"
            )
            metrics["val_loss"] = float(both[0] / both[1]) if float(both[1]) else float("nan")
            model.train()
        if evaluate_fn is not None:
            model.eval()
            metrics.update(
                {k: float(v) for k, v in evaluate_fn(accelerator.unwrap_model(model)).items()}
            )
            model.train()
        return metrics

    def record(kind: str, values: Mapping[str, Any]) -> None:
        if not main:
            return
        row = {"kind": kind, "stage": stage.name, "step": step, **values}
        with (out / METRICS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if log_with:
            numeric = {f"{kind}/{k}": v for k, v in values.items() if isinstance(v, int | float)}
            accelerator.log(numeric, step=global_step_offset + step)

    stream = _BatchStream(plan_lengths, global_batch, seed, epoch, batch_index)
    epoch_steps = max(1, len(stream.plan) // stage.grad_accum)
    eval_every = stage.eval_every or epoch_steps
    losses: list[float] = []
    validation: dict[str, float] = {}
    best_path = out / BEST_FILE
    bar = tqdm(
        total=steps_total,
        initial=step,
        desc=f"stage {stage.name}",
        disable=not (progress and main),
        unit="step",
        dynamic_ncols=True,
    )
    model.train()
    feed: Iterator[tuple[str, dict[str, torch.Tensor]]] = iter(())
    if step < steps_total and not stopped:
        # The loader walks its own copy of the stream, from the same position, and tags each
        # batch with its place in the plan: the loop checks that it gets the batch it expects.
        sampler = _PlanSampler(stream, (steps_total - step) * stage.grad_accum, world, rank)
        feed = iter(
            _loader(
                _Examples(conversations, root),
                sampler,
                collate,
                workers,
                accelerator.device,
                seed,
                persistent=False,  # one pass over the sampler
            )
        )
    tick, seen, seen_tokens = time.perf_counter(), 0, 0
    while step < steps_total and not stopped:
        micro = [stream.take() for _ in range(stage.grad_accum)]
        epoch, batch_index = stream.epoch, stream.batch
        # RadScribe's labels are in the decoder's vocabulary: it keeps its own mean loss.
        denominator = sum(answer[i] for _, b in micro for i in b) if answer is not None else 0
        summed = 0.0
        for tag, indices in micro:
            mine = _shard(indices, world, rank)
            # A batch smaller than the process count leaves some process without examples;
            # it still runs one (weight 0) so that every process takes part in the all-reduce.
            weight = 1.0 if mine else 0.0
            loaded_tag, loaded = next(feed)
            if loaded_tag != tag:
                raise RuntimeError(f"the data loader gave batch {loaded_tag}, expected {tag}")
            batch = to_device(loaded)
            with accelerator.accumulate(model):
                if contrastive is not None:
                    loss, value = contrastive_loss(batch)
                    value /= stage.grad_accum * world
                elif denominator:
                    loss, value = lm_loss(batch, denominator)
                else:
                    loss = model(**batch).loss
                    value = float(loss.detach()) / (stage.grad_accum * world)
                loss, value = loss * weight, value * weight
                accelerator.backward(loss)
                if accelerator.sync_gradients and stage.grad_clip is not None:
                    accelerator.clip_grad_norm_(model.parameters(), stage.grad_clip)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            summed += value
            seen += len(mine)
            seen_tokens += sum(lengths[i] for i in mine)
        step += 1
        if world > 1:
            summed = float(
                accelerator.reduce(torch.tensor([summed], device=accelerator.device), "sum")
            )
        last_loss = summed
        losses.append(last_loss)
        bar.update(1)
        bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
        if step % max(1, log_every) == 0 or step == steps_total:
            elapsed = max(time.perf_counter() - tick, 1e-9)
            values: dict[str, Any] = {
                "loss": last_loss,
                "lr": scheduler.get_last_lr()[0],
                "epoch": epoch,
                "samples_per_s": seen * world / elapsed,
                "tokens_per_s": seen_tokens * world / elapsed,
                "peak_memory_gb": _peak_memory_gb(accelerator.device),
            }
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                values[f"lr/{group.get('name', 'group')}"] = lr
            gate = _gate_weights(model)
            if gate is not None:
                values.update({f"gate/level{i}": g for i, g in enumerate(gate)})
            record("train", values)
            tick, seen, seen_tokens = time.perf_counter(), 0, 0
            logger.info(
                "stage %s step %d/%d loss %.4f lr %.3g",
                stage.name,
                step,
                steps_total,
                last_loss,
                values["lr"],
            )
        if (val_conversations or evaluate_fn) and (step % eval_every == 0 or step == steps_total):
            validation = validate()
            record("validation", validation)
            bar.write(
                f"stage {stage.name} step {step}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in validation.items())
            )
            if stopper is not None:
                if stopper.update(validation, step) and main:
                    _save_tensors(_trainable_state(model), best_path)
                accelerator.wait_for_everyone()
                if stopper.stop:
                    stopped = True
                    logger.info(
                        "stage %s: early stop at step %d, %s did not improve for %d evaluations"
                        " (best %.4f at step %s)",
                        stage.name,
                        step,
                        stopper.rule.metric,
                        stopper.rule.patience,
                        stopper.best,
                        stopper.best_step,
                    )
        save_now = stage.save_every is not None and step % stage.save_every == 0
        if save_now or step == steps_total or stopped:
            position = {"step": step, "epoch": epoch, "batch": batch_index, "loss": last_loss}
            if stopper is not None:
                position["early_stopping"] = stopper.state()
                position["stopped_early"] = stopped
            _save(accelerator, out, position, keep_checkpoints)
        if on_step is not None:
            on_step(step, last_loss)
    bar.close()
    accelerator.wait_for_everyone()
    best = None
    if stopper is not None and stopper.best is not None:
        best = {"value": stopper.best, "step": stopper.best_step, "metric": stopper.rule.metric}
        if best_path.is_file() and stopper.best_step != step:
            _load_trainable(model, best_path)
            logger.info(
                "stage %s: restored the best weights (step %s)", stage.name, stopper.best_step
            )
    if log_with and main:
        accelerator.end_training()
    return {
        "final_loss": last_loss,
        "steps": step,
        "losses": losses,
        "resumed_from": resumed_from,
        "stopped_early": stopped,
        "best": best,
        "validation": validation,
        "model": accelerator.unwrap_model(model),
    }


def _fit_accelerator_state(mixed_precision: str) -> None:
    """Lets a stage set its own mixed precision in a process an earlier stage already ran in.

    accelerate keeps one ``AcceleratorState`` per process and refuses an Accelerator with
    another precision (RadScribe's fp16 after a bf16 stage); the state is reset then, keeping
    the process group (``PartialState``), as accelerate's own tests do between runs.
    """
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and (
        str(AcceleratorState().mixed_precision) != mixed_precision
    ):
        AcceleratorState._reset_state(reset_partial_state=False)


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """Writes ``tensors`` as one safetensors file, atomically."""
    from safetensors.torch import save

    write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}))


def _load_trainable(model: Any, path: Path) -> None:
    """Copies the tensors saved by ``_save_tensors`` back into ``model``'s parameters."""
    from safetensors.torch import load_file

    saved = load_file(str(path))
    params = dict(_unwrap(model).named_parameters())
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def _flat_config(stage: Stage) -> dict[str, Any]:
    """The stage's settings as flat scalars, for the trackers' hyper-parameter tables."""
    import dataclasses

    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                walk(f"{prefix}{f.name}.", getattr(value, f.name))
        elif isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        elif isinstance(value, int | float | str | bool):
            flat[prefix.rstrip(".")] = value
        elif value is not None:
            flat[prefix.rstrip(".")] = str(value)

    walk("", stage)
    return flat
