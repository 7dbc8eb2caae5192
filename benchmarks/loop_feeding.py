"""Training samples/s of the stage loop with batches built in-process or by DataLoader workers.

The demo's model (``demo-llava-hcf``, random weights, about 1 M parameters) trains the demo
recipe's ``foundation`` stage (batch 16, reports + classification + grounding, everything
trainable) on phantoms drawn at 64 px and read from disk, for ``--steps`` optimiser steps per
``--workers`` value, ``--repeats`` times in turn (0, 1, 2, 0, 1, 2, ...: a machine shared
with other jobs then slows every setting alike); the median is reported. ``num_workers=0`` is
the loop's old feeding: each batch is decoded, letterboxed and tokenised in the training
process between two steps. Samples/s is measured from the end of the first step to the end
of the last (the first step includes the workers' start). The script also times the feeding
alone (the processor on one batch), to read off its share of a step, and prints the load
average, which says how much of the machine the runs had.

    python benchmarks/loop_feeding.py --phantoms 200 --steps 40 --repeats 2 --workers 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def _setup(data: Path, n: int) -> tuple[Any, Any, Any, list[Any]]:
    """The demo stage, its conversations, and a function making a fresh model + processor."""
    import torch

    from radixpert.data.phantoms import generate_phantoms
    from radixpert.models.info import _tiny
    from radixpert.models.processor import RadProcessor
    from radixpert.models.tokenizers import train_tokenizers
    from radixpert.train.recipe import load_recipe
    from radixpert.train.runner import stage_conversations

    if not (data / "phantoms" / "studies.jsonl").is_file():
        generate_phantoms(n, data / "phantoms", size=64)
    recipe = load_recipe("demo", data_root=str(data))
    stage = recipe.stage("foundation")
    convs = stage_conversations(stage, split="train", seed=recipe.seed)
    texts = [t["value"] for c in convs for t in c.conversations]
    tokenizer, _ = train_tokenizers(_tiny("demo-llava-hcf"), texts)

    def fresh() -> tuple[Any, Any]:
        torch.manual_seed(0)
        model = _tiny("demo-llava-hcf")
        return model, RadProcessor.from_model(model, tokenizer, system="")

    return stage, convs, fresh, texts


def _feeding_ms(processor: Any, convs: list[Any], batch: int, repeats: int) -> float:
    """Median milliseconds of the processor on one batch (image decode + letterbox + text)."""
    from radixpert.instruct.conversation import images_and_turns

    times = []
    for r in range(repeats):
        items = [images_and_turns(c) for c in convs[r * batch : (r + 1) * batch]]
        tick = time.perf_counter()
        processor([paths for paths, _ in items], [turns for _, turns in items])
        times.append(time.perf_counter() - tick)
    return 1000 * statistics.median(times)


def _run(fresh: Any, convs: list[Any], stage: Any, out: Path, workers: int) -> float:
    """One training run; prints and returns its steady samples/s."""
    from radixpert.train.loop import train_stage

    model, processor = fresh()
    ends: list[float] = []
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = train_stage(
        model,
        processor,
        convs,
        stage,
        out,
        resume=False,
        seed=0,
        log_every=stage.max_steps,
        progress=False,
        num_workers=workers,
        on_step=lambda step, loss: ends.append(time.perf_counter()),
    )
    steady = (len(ends) - 1) * stage.batch_size / (ends[-1] - ends[0])
    print(
        f"  num_workers={workers}: {steady:.1f} samples/s "
        f"({1000 * (ends[-1] - ends[0]) / (len(ends) - 1):.0f} ms/step; first step "
        f"{ends[0] - start:.1f} s after the call; load average {load:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after; final loss {result['final_loss']:.6f})",
        flush=True,
    )
    return steady


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=200)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=None, help="torch threads of the trainer")
    ap.add_argument("--data", type=Path, default=None, help="phantom folder to keep (else temp)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "data"
        stage, convs, fresh, _ = _setup(data, args.phantoms)
        stage = dataclasses.replace(
            stage, max_steps=args.steps, eval_every=None, save_every=None, early_stopping=None
        )
        _, processor = fresh()
        feed = _feeding_ms(processor, convs, stage.batch_size, 10)
        print(
            f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"{len(convs)} training conversations, batch {stage.batch_size}, "
            f"{args.steps} steps; processor on one batch: {feed:.1f} ms"
        )
        rates: dict[int, list[float]] = {w: [] for w in args.workers}
        for repeat in range(args.repeats):
            for workers in args.workers:
                rate = _run(fresh, convs, stage, Path(tmp) / f"run-{repeat}-w{workers}", workers)
                rates[workers].append(rate)
        for workers, values in rates.items():
            print(
                f"num_workers={workers}: median {statistics.median(values):.1f} samples/s "
                f"(runs: {', '.join(f'{v:.1f}' for v in values)})"
            )


if __name__ == "__main__":
    main()
