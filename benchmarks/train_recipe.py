"""Throughput and peak memory of a shipped recipe's stages, on phantoms, with random weights.

For the GPU question of issue 6: does the ``msa_lora`` recipe (Llama 3.2 Vision 11B + HCF,
LoRA r64 -> 32 -> 16, bf16) fit an 80 GB card at its defaults, and how fast does it train?
Every study file the recipe names is filled with the same phantoms (drawn at the model's
input size), each stage runs ``--steps`` optimiser steps with the recipe's own batch,
accumulation, precision and trainability, and the script prints per stage: samples/s,
tokens/s and peak memory as the loop logged them (``metrics.jsonl``).

    python benchmarks/train_recipe.py --recipe msa_lora --steps 200 --out runs/bench_msa_lora
    python benchmarks/train_recipe.py --recipe msa_lora --size tiny-mllama --steps 3 \\
        --image-size 64 --out /tmp/bench          # the same path, tiny, on a CPU

A random-init model has no tokenizer: one is trained on the phantom reports and laid out on
the model's fixed ids (``radixpert.models.tokenizers``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _prepare(recipe_file: Path, data: Path, n: int, size: int) -> None:
    """Draws the phantoms once and points every source of the recipe at them."""
    from radixpert.data.phantoms import generate_phantoms
    from radixpert.train.recipe import load_recipe

    phantoms = data / "phantoms"
    if not (phantoms / "studies.jsonl").is_file():
        generate_phantoms(n, phantoms, size=size, progress=True)
    text = (phantoms / "studies.jsonl").read_text(encoding="utf-8")
    recipe = load_recipe(recipe_file, data_root=str(data))
    for stage in recipe.stages:
        for source in stage.data.sources:
            path = Path(source.studies)
            if path.parent == phantoms:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            rel = Path("..") / "phantoms" / "images"
            path.write_text(text.replace('"path": "images/', f'"path": "{rel}/'), "utf-8")


def main() -> None:
    from radixpert.train.recipe import load_recipe, recipe_path
    from radixpert.train.runner import run_recipe, stage_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="msa_lora")
    ap.add_argument("--size", help="another named size or tiny family (default: the recipe's)")
    ap.add_argument("--steps", type=int, default=200, help="optimiser steps per stage")
    ap.add_argument("--phantoms", type=int, default=2000)
    ap.add_argument("--image-size", type=int, default=560, help="phantom side in pixels")
    ap.add_argument("--out", required=True)
    ap.add_argument("overrides", nargs="*", help="further key=value recipe overrides")
    args = ap.parse_args()

    out = Path(args.out)
    path = recipe_path(args.recipe)
    _prepare(path, out / "data", args.phantoms, args.image_size)
    raw = load_recipe(path, data_root=str(out / "data"))
    overrides = [f"model.size={args.size}"] if args.size else []
    for i in range(len(raw.stages)):
        overrides += [
            f"stages.{i}.epochs=null",
            f"stages.{i}.max_steps={args.steps}",
            f"stages.{i}.save_every=null",
            f"stages.{i}.eval_every={args.steps}",
        ]
    recipe = load_recipe(path, [*overrides, *args.overrides], data_root=str(out / "data"))
    run_recipe(recipe, out / "run", log_with=())
    print(f"{'stage':<12}{'steps':>7}{'samples/s':>11}{'tokens/s':>11}{'peak GiB':>10}{'s':>8}")
    for index, stage in enumerate(recipe.stages):
        folder = stage_dir(out / "run", index, stage)
        rows = [
            json.loads(line)
            for line in (folder / "train" / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "train"
        ]
        steady = rows[1:] or rows  # the first window holds start-up (compilation, caches)
        result = json.loads((folder / "result.json").read_text())
        print(
            f"{stage.name:<12}{result['steps']:>7}"
            f"{statistics.median(r['samples_per_s'] for r in steady):>11.2f}"
            f"{statistics.median(r['tokens_per_s'] for r in steady):>11.0f}"
            f"{max(r['peak_memory_gb'] for r in rows):>10.2f}{result['seconds']:>8.0f}"
        )


if __name__ == "__main__":
    main()
