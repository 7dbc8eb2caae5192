"""Batches of a training stage: the length-grouped plan and the DataLoader that feeds it.

The plan of one epoch (``length_grouped_batches``) shuffles the examples with a generator
seeded by ``(seed, epoch)``, cuts them into groups of ``GROUP_BATCHES`` batches, sorts each
group by length and batches it, then shuffles the batch order. ``BatchStream`` strings the
epochs' plans into one stream of global batches; its position (epoch, index of the next batch)
is what a checkpoint saves, so a resumed run takes the same batches::

    stream = BatchStream(lengths, batch_size=4, seed=0, epoch=0, batch=0)
    loader = make_loader(Examples(conversations, root), PlanSampler(stream, 100, world, rank),
                         Collate(build, seed=0), num_workers=2, device=device, seed=0,
                         persistent=False)
    for tag, batch in loader:  # tag "train:EPOCH:BATCH", batch the tensors of this process
        ...

Worker processes read the images and run the processor for the next batches while a step
runs. Every batch's random draws are seeded by ``(seed, batch tag)``, so the batches are the
same with any number of workers and after a resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from radixpert.errors import InputError, RadixpertError
from radixpert.instruct.conversation import images_and_turns
from radixpert.models.connectors import IGNORE_INDEX

__all__ = [
    "GROUP_BATCHES",
    "PREFETCH_BATCHES",
    "BatchStream",
    "Collate",
    "Examples",
    "PlanSampler",
    "ValidationSampler",
    "default_num_workers",
    "example_length",
    "length_grouped_batches",
    "make_loader",
    "measure",
    "shard",
]

# Batches per length group: sorting inside a group keeps padding low, groups keep randomness.
GROUP_BATCHES = 8
PREFETCH_BATCHES = 2  # per worker: enough to hide a slow image read behind the step before it

BatchBuilder = Callable[..., dict[str, Any]]
"""Turns the image paths and turns of a micro-batch's conversations into model inputs; one with
``takes_keys = True`` also gets ``keys`` (each example's ``(index, batch tag)``) and ``seed``."""


def example_length(processor: Any, item: Any) -> int:
    """Token length of one example as the processor encodes it (images expanded).

    Args:
        processor: A ``RadProcessor``.
        item: A ``Conversation`` or a mapping with ``conversations`` (and ``image``).
    """
    return measure(processor, item)[0]


def measure(processor: Any, item: Any) -> tuple[int, int]:
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
    # The key names the module this function was first written in: changing it would change
    # the batch order of every run, and with it every loss ever recorded.
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


def default_num_workers() -> int:
    """Worker processes per training process by default: all cores but one, at most 4."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def shard(indices: Sequence[int], world: int, rank: int) -> list[int]:
    """This process's contiguous slice of a global batch (empty when the batch is too small)."""
    size = math.ceil(len(indices) / world)
    return list(indices[rank * size : (rank + 1) * size])


class BatchStream:
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


class PlanSampler(Sampler[list[tuple[int, str]]]):
    """Batch sampler: this process's part of the next ``count`` global batches of the plan.

    Yields ``(example index, batch tag)`` pairs. A process whose slice of a small batch is
    empty gets the batch's first example (the trainer weighs its loss 0).
    """

    def __init__(self, stream: BatchStream, count: int, world: int, rank: int) -> None:
        self.start = (stream.lengths, stream.batch_size, stream.seed, stream.epoch, stream.batch)
        self.count, self.world, self.rank = count, world, rank

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[tuple[int, str]]]:
        stream = BatchStream(*self.start)
        for _ in range(self.count):
            tag, indices = stream.take()
            mine = shard(indices, self.world, self.rank) or indices[:1]
            yield [(i, tag) for i in mine]


class ValidationSampler(Sampler[list[tuple[int, str]]]):
    """Batch sampler of the held-out set: consecutive global batches, this process's slices."""

    def __init__(self, n: int, global_batch: int, world: int, rank: int) -> None:
        self.batches = []
        for k, start in enumerate(range(0, n, global_batch)):
            mine = shard(range(start, min(start + global_batch, n)), world, rank)
            if mine:
                self.batches.append([(i, f"val:{k}") for i in mine])

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, str]]]:
        return iter(self.batches)


class Examples(Dataset):
    """The conversations keyed by ``(index, batch tag)``: tag, index, image paths (under root)
    and turns."""

    def __init__(self, conversations: Sequence[Any], root: Path) -> None:
        self.conversations, self.root = conversations, root

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(
        self, key: tuple[int, str]
    ) -> tuple[str, int, list[Path], list[dict[str, Any]]]:
        index, tag = key
        paths, turns = images_and_turns(self.conversations[index])
        return tag, index, [self.root / p for p in paths], turns


@contextlib.contextmanager
def seeded(key: str) -> Iterator[None]:
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


class Collate:
    """collate_fn: an objective's batch builder on one micro-batch; gives ``(tag, tensors)``.

    Args:
        build: The objective's ``batch_builder`` (picklable: workers get a copy).
        seed: The run seed (with the batch tag, the seed of the batch's random draws).
    """

    def __init__(self, build: BatchBuilder, seed: int) -> None:
        self.build, self.seed = build, seed

    def __call__(
        self, examples: Sequence[tuple[str, int, list[Path], list[dict[str, Any]]]]
    ) -> tuple[str, dict[str, Any]]:
        tag = examples[0][0]
        images = [paths for _, _, paths, _ in examples]
        turns = [conv for _, _, _, conv in examples]
        extra: dict[str, Any] = {}
        if getattr(self.build, "takes_keys", False):
            extra = {"keys": [(i, t) for t, i, _, _ in examples], "seed": self.seed}
        try:
            # The key keeps the loop's first module name, as length_grouped_batches does.
            with seeded(f"radixpert.loop.batch:{self.seed}:{tag}"):
                batch = self.build(images, turns, **extra)
        except RadixpertError:
            raise  # an ImageError already names the file that failed
        except (OSError, ValueError) as e:
            files = ", ".join(str(p) for paths in images for p in paths) or "no images"
            raise InputError(f"cannot build batch {tag} ({files}): {e}") from e
        return tag, batch


def make_loader(
    examples: Examples,
    sampler: Sampler[list[tuple[int, str]]],
    collate: Collate,
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
