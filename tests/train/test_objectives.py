"""The objectives' registry, and the logged loss of a step being its true mean token loss."""

from __future__ import annotations

import copy
import json
import typing
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from radixpert.instruct.conversation import images_and_turns
from radixpert.models.connectors import IGNORE_INDEX
from radixpert.train.batching import example_length, length_grouped_batches
from radixpert.train.loop import train_stage
from radixpert.train.objectives import (
    OBJECTIVES,
    ContrastiveObjective,
    LanguageModelObjective,
    create_objective,
)
from radixpert.train.recipe import ComponentTraining, Stage, Trainability
from tests.train.test_loop import _deterministic, _make_data, _setup, _stage

ACCUM, BATCH = 3, 2


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("objectives")
    _make_data(root)
    return root


def test_every_recipe_objective_has_a_class() -> None:
    names = typing.get_args(typing.get_type_hints(Stage)["objective"])
    assert set(names) == set(OBJECTIVES)
    assert isinstance(create_objective("lm"), LanguageModelObjective)
    assert isinstance(create_objective("contrastive"), ContrastiveObjective)
    assert create_objective("lm") is not create_objective("lm")  # fresh state per stage
    from radixpert.train.grpo import GRPOObjective

    assert isinstance(create_objective("grpo"), GRPOObjective)
    with pytest.raises(ValueError, match="'contrastive', 'grpo', 'lm'"):
        create_objective("ppo")


def _token_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """(sum of next-token losses over the answer tokens, answer tokens) of one batch."""
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
    labels = batch["labels"][:, 1:]
    losses = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return float(losses), int((labels != IGNORE_INDEX).sum())


def test_logged_loss_is_the_mean_answer_token_loss_of_the_whole_step(
    data_root: Path, tmp_path: Path
) -> None:
    """One step of three micro-batches with different answer lengths: the logged loss is the
    step's answer-token losses summed over its answer tokens, as a forward pass of the
    untrained model over the same examples gives it (no dropout in the model: the forward in
    the step and here are the same function)."""
    _deterministic()
    model, processor, convs = _setup(data_root)
    assert not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    # Sharper logits than a fresh model's near-uniform ones: token losses then vary, so a
    # mean of micro-batch means is told apart from the mean over the step's tokens.
    with torch.no_grad():
        model.model.language_model.norm.weight.mul_(30.0)
    reference = copy.deepcopy(model).train()
    stage = _stage(
        trainability=Trainability(connector=ComponentTraining("full")),
        max_steps=1,
        batch_size=BATCH,
        grad_accum=ACCUM,
        save_every=None,
    )
    result = train_stage(
        model,
        processor,
        convs,
        stage,
        tmp_path / "out",
        image_root=data_root / "phantoms",
        seed=0,
        log_every=1,
        progress=False,
        num_workers=0,
    )
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").open()]
    logged = [r["loss"] for r in rows if r["kind"] == "train"]
    assert logged == result["losses"] and len(logged) == 1

    lengths = [example_length(processor, c) for c in convs]
    micro = length_grouped_batches(lengths, BATCH, seed=0, epoch=0)[:ACCUM]
    sums, counts = [], []
    with torch.no_grad():
        for indices in micro:
            pairs = [images_and_turns(convs[i]) for i in indices]
            images = [[data_root / "phantoms" / p for p in paths] for paths, _ in pairs]
            batch = processor(images, [turns for _, turns in pairs])
            total, tokens = _token_losses(reference, batch)
            sums.append(total)
            counts.append(tokens)
    assert len(set(counts)) > 1, counts  # the micro-batches differ in answer tokens
    true_mean = sum(sums) / sum(counts)
    assert logged[0] == pytest.approx(true_mean, rel=1e-5)

    # The test tells the wrong denominators apart: one micro-batch's tokens, or the mean of
    # the micro-batch means (which over-weights short answers).
    one_micro = sum(sums) / counts[0]
    mean_of_means = sum(s / c for s, c in zip(sums, counts)) / ACCUM
    for wrong in (one_micro, mean_of_means):  # 3x and 0.6% off here, both far beyond 1e-5
        assert wrong != pytest.approx(true_mean, rel=1e-3)
