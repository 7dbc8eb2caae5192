"""What a training stage minimises: one ``Objective`` per recipe ``objective`` name.

The stage trainer (``radixpert.train.loop``) owns the optimiser, the batches, the
checkpoints and the logs; an objective owns what differs between losses::

    objective = create_objective(stage.objective)       # "lm", "contrastive" or "grpo"
    objective.prepare(model, processor, stage)          # builds a head it trains, if any
    build = objective.batch_builder(processor)          # micro-batch -> model inputs
    out = objective.loss(model, build(images, turns))   # BatchLoss(loss, count)
    metrics = objective.validate(model, batches, accelerator)   # {"val_loss": ...}

``BatchLoss.count`` is what ``loss`` averages over (answer tokens, image-report pairs). When
``step_count`` knows the units of a whole optimiser step in advance (answer tokens of all its
micro-batches on all processes), the trainer weighs each micro-batch's loss by
``count / step_count``: the step's loss is then the mean over all its units, however unevenly
they fall into micro-batches. Otherwise the step's loss is the mean of its micro-batch losses.

Objectives are found by name in ``OBJECTIVES`` (``"module:Class"`` strings, imported when
used). A new objective is one class here or in its own module (``grpo``:
``radixpert.train.grpo``), one entry in ``OBJECTIVES`` and its name in ``Stage.objective``
(``radixpert.train.recipe``); the loop does not change. An objective that needs to know which
examples a batch holds (``grpo``: their tasks and targets for the rewards) gets them with
``bind`` and gives its builder ``takes_keys = True``: the builder is then called with the
``(index, batch tag)`` keys of the batch's examples and the run seed.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from radixpert.models.connectors import IGNORE_INDEX
from radixpert.models.trainability import _unwrap
from radixpert.train.batching import BatchBuilder
from radixpert.train.recipe import Stage

__all__ = [
    "OBJECTIVES",
    "BatchLoss",
    "ContrastiveObjective",
    "LanguageModelObjective",
    "Objective",
    "create_objective",
]

OBJECTIVES: dict[str, str] = {
    "lm": "radixpert.train.objectives:LanguageModelObjective",
    "contrastive": "radixpert.train.objectives:ContrastiveObjective",
    "grpo": "radixpert.train.grpo:GRPOObjective",
}
"""Objective classes by the recipe's ``objective`` name, imported when asked for."""


class BatchLoss(NamedTuple):
    """The loss of one micro-batch: a mean over ``count`` units (tokens or pairs)."""

    loss: torch.Tensor
    count: int


class Objective:
    """The loss of a stage, what it trains beside the model, and how it validates.

    Subclasses set ``name`` and implement ``batch_builder`` and ``loss``; the rest has
    defaults that fit an objective which trains the model alone.
    """

    name: ClassVar[str]

    def prepare(self, model: Any, processor: Any, stage: Stage) -> None:
        """Called once before the optimiser is built, with the model's trainability set."""

    def bind(self, train: Sequence[Any], val: Sequence[Any]) -> None:
        """Receives the stage's training and held-out examples (batches name them by index)."""

    def modules(self) -> list[nn.Module]:
        """Modules the objective trains beside the model (prepared and checkpointed with it)."""
        return []

    def attach(self, prepared: Sequence[nn.Module]) -> None:
        """Receives ``modules()`` as ``accelerator.prepare`` returned them (wrapped, moved)."""

    def param_groups(self, stage: Stage) -> list[dict[str, Any]]:
        """Optimiser parameter groups of ``modules()``, added after the model's."""
        return []

    def plan_lengths(self, lengths: Sequence[int]) -> list[int]:
        """The lengths the batch plan groups by (the examples' token lengths by default)."""
        return list(lengths)

    def step_count(self, answer_tokens: Sequence[int]) -> int | None:
        """Units the loss of one optimiser step averages over, or None.

        Args:
            answer_tokens: Answer tokens of each example of the step (all its micro-batches,
                all processes), as ``radixpert.train.batching.measure`` counts them.

        Returns:
            The step's denominator; None makes the step's loss the mean of its micro-batch
            losses.
        """
        return None

    def batch_builder(self, processor: Any) -> BatchBuilder:
        """``f(image paths, turns)`` of a micro-batch's conversations -> model inputs.

        It runs in DataLoader workers, so it must pickle.
        """
        raise NotImplementedError

    def val_batch_builder(self, processor: Any) -> BatchBuilder:
        """The builder of the held-out batches (``batch_builder`` by default)."""
        return self.batch_builder(processor)

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> BatchLoss:
        """The mean loss of one micro-batch and the count of units it averages over."""
        raise NotImplementedError

    def account(self, weight: float) -> None:
        """Called after each micro-batch's ``loss`` with its weight (0 for a stand-in batch of a
        process that has no example of a small batch): statistics of weight 0 are dropped."""

    def log_values(self, accelerator: Any) -> dict[str, float]:
        """Statistics since the last call, logged with the step (every process calls it)."""
        return {}

    def bar_values(self) -> dict[str, float]:
        """Values shown on the progress bar beside the loss."""
        return {}

    @torch.no_grad()
    def validate(
        self, model: Any, batches: Iterable[Mapping[str, torch.Tensor]], accelerator: Any
    ) -> dict[str, float]:
        """``val_loss``: the loss over every unit of the held-out batches of all processes.

        Args:
            model: The prepared model, in eval mode.
            batches: This process's held-out batches, on its device.
            accelerator: Sums the totals over the processes.
        """
        total, count = 0.0, 0
        for batch in batches:
            out = self.loss(model, batch)
            total += float(out.loss) * out.count
            count += out.count
        both = accelerator.reduce(
            torch.tensor([total, float(count)], device=accelerator.device), "sum"
        )
        return {"val_loss": float(both[0] / both[1]) if float(both[1]) else float("nan")}


class ConversationBatch:
    """The processor's call on a micro-batch's conversations (images, turns, labels)."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(
        self, images: list[list[Path]], turns: list[list[dict[str, Any]]]
    ) -> dict[str, torch.Tensor]:
        return self.processor(images if any(images) else None, turns)


class LanguageModelObjective(Objective):
    """``lm``: the model's own next-token loss on the processor's labels (-100 but answers).

    With a causal language model the step's loss is the sum of answer-token losses over the
    answer tokens of the whole step; RadScribe's labels are in its decoder's vocabulary, which
    the examples' measured answer counts are not, so there it is the mean of the micro-batch
    losses.
    """

    name = "lm"

    def __init__(self) -> None:
        self.causal = True

    def prepare(self, model: Any, processor: Any, stage: Stage) -> None:
        family = getattr(getattr(processor, "config", None), "family", "llava")
        self.causal = family != "radscribe"

    def step_count(self, answer_tokens: Sequence[int]) -> int | None:
        return sum(answer_tokens) if self.causal else None

    def batch_builder(self, processor: Any) -> BatchBuilder:
        return ConversationBatch(processor)

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> BatchLoss:
        labels = batch["labels"]
        if self.causal:
            labels = labels[..., 1:]
        return BatchLoss(model(**batch).loss, int((labels != IGNORE_INDEX).sum()))


class ReportBatch:
    """Image-report pairs of a micro-batch: the first image and the last turn of each
    conversation (``contrastive_batch``), tokenized by ``head`` when it has a tokenizer."""

    def __init__(self, processor: Any, head: Any = None) -> None:
        self.processor, self.head = processor, head

    def __call__(
        self, images: list[list[Path]], turns: list[list[dict[str, Any]]]
    ) -> dict[str, torch.Tensor]:
        from radixpert.train.contrastive import contrastive_batch

        reports = [conv[-1]["value"] for conv in turns]
        return contrastive_batch(self.processor, [p[0] for p in images], reports, head=self.head)


class ContrastiveObjective(Objective):
    """``contrastive``: the CLIP loss of the vision tower against ``ContrastiveHead``'s text side.

    The head trains with the stage at the vision tower's learning rate, without weight decay.
    Each process contrasts its own shard (local negatives), as open_clip without
    ``gather_with_grad``; the step's loss is the mean of the micro-batch losses. The batch plan
    ignores lengths: length groups would fill a batch with look-alike reports (false
    negatives).
    """

    name = "contrastive"

    def __init__(self) -> None:
        self.head: Any = None
        self.prepared: Any = None

    def prepare(self, model: Any, processor: Any, stage: Stage) -> None:
        from radixpert.train.contrastive import ContrastiveHead

        self.head = ContrastiveHead.for_model(_unwrap(model))
        self.prepared = self.head

    def modules(self) -> list[nn.Module]:
        return [self.head]

    def attach(self, prepared: Sequence[nn.Module]) -> None:
        (self.prepared,) = prepared

    def param_groups(self, stage: Stage) -> list[dict[str, Any]]:
        return [
            {
                "params": list(self.head.parameters()),
                "lr": stage.lr("vision_tower"),
                "weight_decay": 0.0,
                "name": "contrastive_head",
            }
        ]

    def plan_lengths(self, lengths: Sequence[int]) -> list[int]:
        return [0] * len(lengths)

    def batch_builder(self, processor: Any) -> BatchBuilder:
        # A head with a tokenizer of its own (open_clip's text tower) tokenizes the reports;
        # workers get a copy of it, of which only tokenize() is used there.
        own = self.head if hasattr(self.head, "tokenizer") else None
        return ReportBatch(processor, own)

    def loss(self, model: Any, batch: Mapping[str, torch.Tensor]) -> BatchLoss:
        from radixpert.train.contrastive import contrastive_loss

        loss = contrastive_loss(model, self.prepared, batch)
        return BatchLoss(loss, int(batch["pixel_values"].shape[0]))


def create_objective(name: str) -> Objective:
    """A fresh objective of the recipe's ``objective`` name.

    Raises:
        ValueError: If no objective has that name.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"objective {name!r} is not supported; known: {sorted(OBJECTIVES)}")
    module, _, cls = OBJECTIVES[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
