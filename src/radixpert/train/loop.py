"""The trainer of one recipe stage, with checkpoints that resume exactly.

``train_stage`` trains a model on conversations for one ``Stage`` of a recipe::

    from radixpert.train.loop import train_stage

    result = train_stage(model, processor, conversations, recipe.stage("stage1"), "runs/s1",
                         image_root=Path("/data/phantoms"), seed=recipe.seed)
    logging.getLogger(__name__).info("final loss %.4f after %d steps", result["final_loss"],
                                     result["steps"])

It is a ``StageTrainer`` with ``setup``, ``train``, ``validate`` and ``save``:

* ``setup``: ``apply_trainability`` with the stage's component settings (unless the model
  already carries peft adapters, e.g. after ``next_stage``); an ``accelerate.Accelerator`` with
  the stage's mixed precision and gradient accumulation; the stage's objective
  (``radixpert.train.objectives``: ``lm``, ``contrastive``, ``grpo``); AdamW with one
  parameter group per component (the stage's per-component learning rates; no weight decay on
  biases and norms),
  a cosine, linear or constant schedule after a linear warmup of ``warmup_ratio`` of the
  steps; the checkpoint to resume from;
* ``train``: every optimiser step takes the next ``grad_accum`` global batches of the
  length-grouped plan (``radixpert.train.batching``), fed by a torch ``DataLoader`` whose
  ``num_workers`` processes build the next batches while a step runs, and clips the gradient
  norm. The step's loss is the objective's: for ``lm``, the sum of answer-token losses over the
  answer tokens of the whole step;
* ``validate``: every ``eval_every`` steps (else once per epoch) and at the end, the
  objective's ``val_loss`` on the held-out examples and the caller's metrics; early stopping
  keeps the best trainable weights and restores them at the end;
* ``save``: every ``save_every`` steps and at the end, a checkpoint
  (``radixpert.train.checkpoint``) of the accelerator state and the data position.

Exact resume: with ``resume=True`` the checkpoint named by ``checkpoint.json`` is loaded, and
training continues at the saved data position with the saved RNG states, so the losses after
it equal those of a run that was never interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from radixpert.errors import UnknownName, UsageError
from radixpert.models.trainability import (
    LLAVA_COMPONENTS,
    Prefix,
    _component_of,
    _unwrap,
    apply_trainability,
)
from radixpert.train.batching import (
    GROUP_BATCHES,
    BatchStream,
    Collate,
    Examples,
    PlanSampler,
    ValidationSampler,
    default_num_workers,
    example_length,
    length_grouped_batches,
    make_loader,
    measure,
    shard,
)
from radixpert.train.checkpoint import (
    BEST_FILE,
    CHECKPOINT_POINTER,
    POSITION_FILE,
    latest_checkpoint,
    load_trainable,
    resume_checkpoint,
    save_checkpoint,
    save_tensors,
    trainable_state,
)
from radixpert.train.objectives import create_objective
from radixpert.train.recipe import Stage

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_POINTER",
    "GROUP_BATCHES",
    "POSITION_FILE",
    "StageTrainer",
    "TrainOptions",
    "build_optimizer",
    "build_scheduler",
    "default_num_workers",
    "example_length",
    "latest_checkpoint",
    "length_grouped_batches",
    "total_steps",
    "train_stage",
]

METRICS_FILE = "metrics.jsonl"
_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def log_interval(log_every: int | None, steps: int) -> int:
    """Steps between records: ``log_every`` if given, else 10, or fewer in a stage shorter
    than 500 steps (about 50 records per stage)."""
    if log_every is not None:
        return max(1, log_every)
    return max(1, min(10, steps // 50))


def enable_activation_checkpointing(model: Any) -> None:
    """Recomputes activations in the backward pass, non-reentrant (which works with DDP's
    search for unused parameters), as a stage with ``gradient_checkpointing`` trains.

    Raises:
        ValueError: The model supports no checkpointing.
    """
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


@dataclasses.dataclass
class TrainOptions:
    """How ``StageTrainer`` runs a stage, beyond the stage itself (``train_stage``'s keywords)."""

    resume: bool = True
    image_root: str | Path = Path(".")
    seed: int = 0
    log_every: int | None = None
    max_steps: int | None = None
    component_prefixes: Mapping[str, Prefix] = dataclasses.field(
        default_factory=lambda: LLAVA_COMPONENTS
    )
    keep_checkpoints: int = 2
    on_step: Callable[[int, float], None] | None = None
    val_conversations: Sequence[Any] = ()
    evaluate_fn: Callable[[Any], Mapping[str, float]] | None = None
    log_with: Sequence[str] = ()
    progress: bool = True
    global_step_offset: int = 0
    accelerator: Any = None
    num_workers: int | None = None


class StageTrainer:
    """One stage's training: ``setup()``, then ``train()`` (which validates and saves).

    See ``train_stage`` for the arguments and the result.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        conversations: Sequence[Any],
        stage: Stage,
        out_dir: str | Path,
        options: TrainOptions | None = None,
    ) -> None:
        self.options = options = options or TrainOptions()
        self.objective = create_objective(stage.objective)
        if not conversations:
            raise ValueError("no conversations to train on")
        n = options.num_workers
        self.workers = default_num_workers() if n is None else int(n)
        if self.workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {n}")
        self.model, self.processor, self.stage = model, processor, stage
        self.conversations = conversations
        self.out, self.root = Path(out_dir), Path(options.image_root)
        self.step, self.last_loss, self.stopped = 0, None, False
        self.losses: list[float] = []
        self.validation: dict[str, float] = {}

    # ------------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Model, accelerator, objective, optimiser, schedule, resume position and loaders."""
        from accelerate.utils import set_seed

        self.out.mkdir(parents=True, exist_ok=True)
        set_seed(self.options.seed)
        self._setup_model()
        # Before the accelerator: a head's random initialisation follows the model's.
        self.objective.prepare(self.model, self.processor, self.stage)
        self.objective.bind(self.conversations, self.options.val_conversations)
        self._setup_accelerator()
        measured = [measure(self.processor, c) for c in self.conversations]
        self.lengths = [length for length, _ in measured]
        self.answers = [tokens for _, tokens in measured]
        self.global_batch = self.stage.batch_size * self.world
        n_batches = math.ceil(len(self.conversations) / self.global_batch)
        self.steps_total = total_steps(self.stage, n_batches, self.options.max_steps)
        self._setup_optimizer()
        if self.options.log_with and self.main:
            self.accelerator.init_trackers(self.stage.name, config=_flat_config(self.stage))
        self._resume()
        self._setup_data()

    def _setup_model(self) -> None:
        stage, model = self.stage, self.model
        if not hasattr(model, "peft_config"):
            model = apply_trainability(
                model, stage.component_specs(), self.options.component_prefixes
            )
        if stage.gradient_checkpointing:
            enable_activation_checkpointing(model)
        self.model = model

    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        stage, accelerator = self.stage, self.options.accelerator
        if accelerator is None:
            trackers = list(self.options.log_with)
            # A model can hold trainable parameters that a stage's loss never reaches (the
            # vision tower's final LayerNorm when features come from hidden states, an HCF
            # level or a head a task does not use): DDP must then look for them each step, as
            # the transformers Trainer does by default. The trainer's checkpointing is
            # non-reentrant, which works with that search.
            _fit_accelerator_state(stage.mixed_precision)
            accelerator = Accelerator(
                mixed_precision=stage.mixed_precision,
                gradient_accumulation_steps=stage.grad_accum,
                log_with=trackers or None,
                project_dir=str(self.out / "logs"),
                kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
            )
        self.accelerator = accelerator
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched > 1 and self.world == 1:
            raise UsageError(
                f"launched with WORLD_SIZE={launched} but accelerate runs one process; on CPU "
                "set ACCELERATE_USE_CPU=true (see `radixpert config path "
                "accelerate/cpu_ddp_2proc`)"
            )
        plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        if plugin is not None:  # DeepSpeed runs the step itself: give it the stage's settings
            plugin.deepspeed_config.update(
                train_micro_batch_size_per_gpu=stage.batch_size,
                gradient_accumulation_steps=stage.grad_accum,
                gradient_clipping=stage.grad_clip or 0.0,
            )
        self.main = accelerator.is_main_process

    def _setup_optimizer(self) -> None:
        optimizer = build_optimizer(self.model, self.stage, self.options.component_prefixes)
        for group in self.objective.param_groups(self.stage):
            optimizer.add_param_group(group)
        self.scheduler = build_scheduler(optimizer, self.stage, self.steps_total)
        # The scheduler is not prepared: accelerate would step it once per process per step
        # (it assumes a dataloader sharded by the processes), which would run the schedule N
        # times too fast on N processes. It steps here once per optimiser step and is
        # checkpointed.
        extra = self.objective.modules()
        model, *prepared, self.optimizer = self.accelerator.prepare(self.model, *extra, optimizer)
        self.model = model
        if extra:
            self.objective.attach(prepared)
        self.accelerator.register_for_checkpointing(self.scheduler)

    def _resume(self) -> None:
        rule = self.stage.early_stopping
        self.stopper = _EarlyStop(rule, None) if rule else None
        self.epoch, self.batch_index = 0, 0
        position = resume_checkpoint(self.accelerator, self.out) if self.options.resume else None
        if position is not None:
            self.step, self.epoch = position["step"], position["epoch"]
            self.batch_index = position["batch"]
            self.last_loss = position.get("loss")
            if rule:
                self.stopper = _EarlyStop(rule, position.get("early_stopping"))
        self.resumed_from = self.step
        self.stopped = bool(position and position.get("stopped_early"))

    def _setup_data(self) -> None:
        # The DataLoaders are not given to accelerator.prepare: it would re-shard them by
        # process (whole batches per process, padded with repeated examples to even counts)
        # and resume by skipping batches, while the trainer gives every process its slice of
        # each global batch, so that the step's loss denominator spans all processes and N
        # processes train as one with the same global batch, and restarts its sampler at the
        # saved plan position.
        options, device = self.options, self.accelerator.device
        collate = Collate(self.objective.batch_builder(self.processor), options.seed)
        # Validation runs every eval_every steps: its workers stay up between evaluations.
        val = options.val_conversations
        self.val_loader = make_loader(
            Examples(val, self.root),
            ValidationSampler(len(val), self.global_batch, self.world, self.rank),
            Collate(self.objective.val_batch_builder(self.processor), options.seed),
            self.workers,
            device,
            options.seed,
            persistent=True,
        )
        plan_lengths = self.objective.plan_lengths(self.lengths)
        self.stream = BatchStream(
            plan_lengths, self.global_batch, options.seed, self.epoch, self.batch_index
        )
        self.feed: Iterator[tuple[str, dict[str, torch.Tensor]]] = iter(())
        if self.step < self.steps_total and not self.stopped:
            # The loader walks its own copy of the stream, from the same position, and tags
            # each batch with its place in the plan: the trainer checks that it gets the batch
            # it expects.
            count = (self.steps_total - self.step) * self.stage.grad_accum
            self.feed = iter(
                make_loader(
                    Examples(self.conversations, self.root),
                    PlanSampler(self.stream, count, self.world, self.rank),
                    collate,
                    self.workers,
                    device,
                    options.seed,
                    persistent=False,  # one pass over the sampler
                )
            )

    # ------------------------------------------------------------------------ train

    def train(self) -> dict[str, Any]:
        """Runs the optimiser steps left, validating, logging and saving on the way."""
        from tqdm.auto import tqdm

        stage, options = self.stage, self.options
        epoch_steps = max(1, len(self.stream.plan) // stage.grad_accum)
        eval_every = stage.eval_every or epoch_steps
        evaluates = bool(options.val_conversations or options.evaluate_fn)
        bar = tqdm(
            total=self.steps_total,
            initial=self.step,
            desc=f"stage {stage.name}",
            disable=not (options.progress and self.main),
            unit="step",
            dynamic_ncols=True,
        )
        every = log_interval(options.log_every, self.steps_total)
        self.model.train()
        self._tick, self._seen, self._seen_tokens = time.perf_counter(), 0, 0
        while self.step < self.steps_total and not self.stopped:
            self.last_loss = self.train_step()
            self.losses.append(self.last_loss)
            bar.update(1)
            last = self.step == self.steps_total
            if self.step % every == 0 or last:
                self._log_step()
            shown = {k: f"{v:.4f}" for k, v in self.objective.bar_values().items()}
            bar.set_postfix(loss=f"{self.last_loss:.4f}", **shown, refresh=False)
            if evaluates and (self.step % eval_every == 0 or last):
                self.validation = self.validate()
                self.record("validation", self.validation)
                bar.write(
                    f"stage {stage.name} step {self.step}: "
                    + ", ".join(f"{k} {v:.4f}" for k, v in self.validation.items())
                )
                self._early_stopping()
            save_now = stage.save_every is not None and self.step % stage.save_every == 0
            if save_now or last or self.stopped:
                self.save()
            if options.on_step is not None:
                options.on_step(self.step, self.last_loss)
        bar.close()
        self.accelerator.wait_for_everyone()
        return self._finish()

    def train_step(self) -> float:
        """One optimiser step over the next ``grad_accum`` global batches; returns its loss.

        The loss is the objective's mean over the units of the whole step (all micro-batches
        of all processes) when it knows their count in advance (``step_count``), else the mean
        of the micro-batch losses; the gradient is that of the same mean.
        """
        stage, accelerator, model = self.stage, self.accelerator, self.model
        accum, world = stage.grad_accum, self.world
        micro = [self.stream.take() for _ in range(accum)]
        self.epoch, self.batch_index = self.stream.epoch, self.stream.batch
        denominator = self.objective.step_count([self.answers[i] for _, b in micro for i in b])
        summed = 0.0
        for tag, indices in micro:
            mine = shard(indices, world, self.rank)
            # A batch smaller than the process count leaves some process without examples;
            # it still runs one (weight 0) so that every process takes part in the all-reduce.
            weight = 1.0 if mine else 0.0
            loaded_tag, loaded = next(self.feed)
            if loaded_tag != tag:
                raise RuntimeError(f"the data loader gave batch {loaded_tag}, expected {tag}")
            batch = self._to_device(loaded)
            with accelerator.accumulate(model):
                out = self.objective.loss(model, batch)
                if denominator:
                    summed_loss = out.loss * out.count
                    # accelerate divides by grad_accum and DDP averages over processes: undo
                    # both so the gradient is that of sum(unit losses) / (units of the step).
                    loss = summed_loss * accum * world / denominator
                    value = float(summed_loss.detach()) / denominator
                else:
                    loss = out.loss
                    value = float(loss.detach()) / (accum * world)
                loss, value = loss * weight, value * weight
                self.objective.account(weight)
                accelerator.backward(loss)
                if accelerator.sync_gradients and stage.grad_clip is not None:
                    accelerator.clip_grad_norm_(model.parameters(), stage.grad_clip)
                self.optimizer.step()
                if accelerator.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad()
            summed += value
            self._seen += len(mine)
            self._seen_tokens += sum(self.lengths[i] for i in mine)
        self.step += 1
        if world > 1:
            total = accelerator.reduce(torch.tensor([summed], device=accelerator.device), "sum")
            summed = float(total)
        return summed

    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        # non_blocking: from pinned memory the copy overlaps the step (a no-op on the CPU).
        return _moved(batch, self.accelerator.device)

    def _log_step(self) -> None:
        elapsed = max(time.perf_counter() - self._tick, 1e-9)
        lrs = self.scheduler.get_last_lr()
        values: dict[str, Any] = {
            "loss": self.last_loss,
            "lr": lrs[0],
            "epoch": self.epoch,
            "samples_per_s": self._seen * self.world / elapsed,
            "tokens_per_s": self._seen_tokens * self.world / elapsed,
            "peak_memory_gb": _peak_memory_gb(self.accelerator.device),
        }
        for group, lr in zip(self.optimizer.param_groups, lrs):
            values[f"lr/{group.get('name', 'group')}"] = lr
        values.update(self.objective.log_values(self.accelerator))
        gate = _gate_weights(self.model)
        if gate is not None:
            values.update({f"gate/level{i}": g for i, g in enumerate(gate)})
        self.record("train", values)
        self._tick, self._seen, self._seen_tokens = time.perf_counter(), 0, 0
        logger.info(
            "stage %s step %d/%d loss %.4f lr %.3g",
            self.stage.name,
            self.step,
            self.steps_total,
            self.last_loss,
            values["lr"],
        )

    def record(self, kind: str, values: Mapping[str, Any]) -> None:
        """Appends a row to ``metrics.jsonl`` and logs its numbers to the trackers (main only)."""
        if not self.main:
            return
        row = {"kind": kind, "stage": self.stage.name, "step": self.step, **values}
        with (self.out / METRICS_FILE).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.options.log_with:
            numeric = {f"{kind}/{k}": v for k, v in values.items() if isinstance(v, int | float)}
            self.accelerator.log(numeric, step=self.options.global_step_offset + self.step)

    # ------------------------------------------------------------------------ validate

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """The objective's metrics on the held-out examples, and ``evaluate_fn``'s."""
        metrics: dict[str, float] = {}
        model, options = self.model, self.options
        if options.val_conversations:
            model.eval()
            batches = (self._to_device(loaded) for _, loaded in self.val_loader)
            metrics.update(self.objective.validate(model, batches, self.accelerator))
            model.train()
        if options.evaluate_fn is not None:
            model.eval()
            found = options.evaluate_fn(self.accelerator.unwrap_model(model))
            metrics.update({k: float(v) for k, v in found.items()})
            model.train()
        return metrics

    def _early_stopping(self) -> None:
        stopper = self.stopper
        if stopper is None:
            return
        if stopper.update(self.validation, self.step) and self.main:
            save_tensors(trainable_state(self.model), self.out / BEST_FILE)
            for i, module in enumerate(self.objective.modules()):  # a head goes with its tower
                save_tensors(trainable_state(module), self.out / f"best_objective_{i}.safetensors")
        self.accelerator.wait_for_everyone()
        if stopper.stop:
            self.stopped = True
            logger.info(
                "stage %s: early stop at step %d, %s did not improve for %d evaluations"
                " (best %.4f at step %s)",
                self.stage.name,
                self.step,
                stopper.rule.metric,
                stopper.rule.patience,
                stopper.best,
                stopper.best_step,
            )

    # ------------------------------------------------------------------------ save

    def save(self) -> Path:
        """A checkpoint of the accelerator state and the data position at this step."""
        position: dict[str, Any] = {
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch_index,
            "loss": self.last_loss,
        }
        if self.stopper is not None:
            position["early_stopping"] = self.stopper.state()
            position["stopped_early"] = self.stopped
        return save_checkpoint(self.accelerator, self.out, position, self.options.keep_checkpoints)

    def _finish(self) -> dict[str, Any]:
        best, stopper = None, self.stopper
        if stopper is not None and stopper.best is not None:
            best = {"value": stopper.best, "step": stopper.best_step, "metric": stopper.rule.metric}
            best_path = self.out / BEST_FILE
            if best_path.is_file() and stopper.best_step != self.step:
                load_trainable(self.model, best_path)
                for i, module in enumerate(self.objective.modules()):
                    saved = self.out / f"best_objective_{i}.safetensors"
                    if saved.is_file():
                        load_trainable(module, saved)
                logger.info(
                    "stage %s: restored the best weights (step %s)",
                    self.stage.name,
                    stopper.best_step,
                )
        if self.options.log_with and self.main:
            self.accelerator.end_training()
        return {
            "final_loss": self.last_loss,
            "steps": self.step,
            "losses": self.losses,
            "resumed_from": self.resumed_from,
            "stopped_early": self.stopped,
            "best": best,
            "validation": self.validation,
            "model": self.accelerator.unwrap_model(self.model),
            "objective_modules": self.objective.modules(),
        }


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
    log_every: int | None = None,
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
        stage: The stage: objective, trainability, optimiser, schedule, length, batch (per
            process), accumulation, clipping, mixed precision, gradient checkpointing,
            ``eval_every``, ``save_every``, early stopping.
        out_dir: Where checkpoints, ``metrics.jsonl`` and the tracker logs go.
        resume: Continue from the checkpoint in ``out_dir`` if there is one.
        image_root: Folder relative image paths are relative to.
        seed: Seed of the batch order and of the RNGs at a fresh start.
        log_every: Steps between loss log lines and metric records; None: every 10 steps,
            or more often in a short stage, so that each stage has about 50 records
            (``log_interval``: a 24-step reinforcement stage logs every step).
        max_steps: Overrides the stage's length (the schedule follows it).
        component_prefixes: Module prefixes of the components (``LLAVA_COMPONENTS``).
        keep_checkpoints: How many newest checkpoints to keep.
        on_step: Called after every optimiser step with (step, loss), e.g. for metrics.
        val_conversations: Held-out examples; every ``eval_every`` steps (else once per
            epoch) and at the end the objective's loss over them is ``val_loss``.
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
        validation metrics), ``model`` (the trained model, unwrapped from accelerate) and
        ``objective_modules`` (what the objective trained beside it: the contrastive head).

    Raises:
        ValueError: On an empty data set, a stage objective this loop cannot train or a
            negative ``num_workers``.
        ImageError: An image of a batch cannot be read (the message names the file), also
            when a worker process read it.

    Batches and loss: ``stage.batch_size`` is per process; each micro-step takes one global
    batch of ``batch_size x num_processes`` examples from the length-grouped plan and every
    process its own slice. The ``lm`` loss is the sum of answer-token losses divided by the
    answer tokens of the whole optimiser step (all micro-batches of all processes), so N
    processes and one process with the same global batch compute the same gradient, and
    gradient accumulation does not over-weight short answers.
    """
    options = TrainOptions(
        resume=resume,
        image_root=image_root,
        seed=seed,
        log_every=log_every,
        max_steps=max_steps,
        component_prefixes=component_prefixes,
        keep_checkpoints=keep_checkpoints,
        on_step=on_step,
        val_conversations=val_conversations,
        evaluate_fn=evaluate_fn,
        log_with=log_with,
        progress=progress,
        global_step_offset=global_step_offset,
        accelerator=accelerator,
        num_workers=num_workers,
    )
    trainer = StageTrainer(model, processor, conversations, stage, out_dir, options)
    trainer.setup()
    return trainer.train()


def _moved(value: Any, device: torch.device) -> Any:
    """Tensors of a batch (nested in mappings and lists) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: _moved(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_moved(v, device) for v in value]
    return value


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


def _flat_config(stage: Stage) -> dict[str, Any]:
    """The stage's settings as flat scalars, for the trackers' hyper-parameter tables."""
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
