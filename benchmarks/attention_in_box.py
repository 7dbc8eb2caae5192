"""Does a trained model look at the finding it names? Attention inside vs outside the true box.

For every held-out phantom (validate and test splits) with a box whose finding is named in its
report ("pleural effusion" / "effusion", "pneumothorax", "consolidation", "nodule" / "mass"),
the report is teacher-forced through ``radixpert.infer.attention.explain`` (mean over heads,
max over layers), the phrase's map is projected onto the image, and the ratio of attention per
pixel inside the finding's true box to attention per pixel outside it is taken. A model that
looks where the finding is has ratios above 1. Prints the median per finding and overall and
writes them as JSON. ``--all-aggregations`` does it for every heads x layers choice of
``radixpert explain``; ``--tower-probe`` asks the same question of the vision tower's patch
tokens (does a token's distance from its position's usual token peak in the box?), to tell a
tower that does not see where the finding is from a language model that does not look there.
Each measurement is made for the phrase itself and for the sentence that names the finding
(the phrase with its laterality and size words: the words the image decides, where the noun
itself often follows from the words before it).
Usage::

    radixpert demo --out runs/demo                              # the demo's full training
    python benchmarks/attention_in_box.py --demo runs/demo       # its final model and phantoms
    python benchmarks/attention_in_box.py --bundle B --phantoms P
    python benchmarks/attention_in_box.py --train-steps 300      # a short training of its own
    python benchmarks/attention_in_box.py --demo runs/demo --all-aggregations --tower-probe
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

PHRASES = {
    "Pleural Effusion": ("pleural effusion", "effusion"),
    "Pneumothorax": ("pneumothorax",),
    "Consolidation": ("consolidation",),
    "Lung Lesion": ("nodule", "mass"),
}


def train(root: Path, phantoms: int, steps: int) -> tuple[Path, Path]:
    """The demo recipe's ``see`` and ``foundation`` stages, ``steps`` of 8, on new phantoms."""
    from radixpert.data.phantoms import generate_phantoms
    from radixpert.train.recipe import load_recipe, recipe_path
    from radixpert.train.runner import run_recipe

    generate_phantoms(phantoms, root / "data" / "phantoms", size=64)
    overrides = [
        "stages.see.max_steps=1",
        f"stages.foundation.max_steps={steps}",
        "stages.foundation.batch_size=8",
        "stages.see.eval_every=null",
        "stages.foundation.eval_every=null",
    ]
    recipe = load_recipe(recipe_path("demo"), overrides=overrides, data_root=str(root / "data"))
    run = run_recipe(
        recipe, root / "model", only=["see", "foundation"], log_with=(), progress=False
    )
    return Path(run["final_bundle"]), root / "data" / "phantoms"


AGGREGATIONS = [(h, la) for h in ("mean", "max") for la in ("max", "mean", "last")]


def _named_findings(phantoms: Path) -> Iterator[tuple[Any, Any, str]]:
    """(study, box, phrase) for each held-out box whose finding its report names."""
    from radixpert.data.study import read_studies

    for study in read_studies(phantoms / "studies.jsonl"):
        if study.split == "train":
            continue
        for box in study.boxes:
            text = study.findings.lower()
            phrase = next((p for p in PHRASES.get(box.label, ()) if p in text), None)
            if phrase is not None:
                yield study, box, phrase


def _sentence(result: Any, report: str, phrase: str) -> Any:
    """The sentence map (``Explanation.sentence_maps``) of the sentence that names the
    finding first: the phrase with its laterality, size and severity words."""
    at = report.lower().find(phrase)
    return next(
        span
        for span in reversed(result.sentence_maps)
        if span.start <= at  # the last sentence that starts before the phrase holds it
    )


def ratios(
    bundle: Path, phantoms: Path, aggregations: list[tuple[str, str]], limit: int | None = None
) -> dict[str, list[tuple[str, float]]]:
    """Per span ("phrase" or "sentence") and aggregation ("heads/layers"): (finding, density
    inside its box / outside) per held-out named finding."""
    from radixpert.infer.attention import box_densities, explain, project
    from radixpert.models.bundle import load_bundle

    model, processor = load_bundle(bundle)
    out: dict[str, list[tuple[str, float]]] = {}
    for k, (study, box, phrase) in enumerate(_named_findings(phantoms)):
        if limit is not None and k >= limit:
            break
        for heads, layers in aggregations:
            result = explain(
                model, processor, phantoms / study.images[0].path, report=study.findings,
                phrases=[phrase], heads=heads, layers=layers,
            )  # fmt: skip
            span = result.phrase_maps[0]
            if not span.tokens:
                raise RuntimeError(f"{study.id}: phrase {phrase!r} not found in its report")
            grids = {
                "phrase": span.grid,
                "sentence": _sentence(result, study.findings, phrase).grid,
            }
            for name, grid in grids.items():
                inside, outside = box_densities(
                    project(grid, result.geometry), (box.x1, box.y1, box.x2, box.y2)
                )
                out.setdefault(f"{name} {heads}/{layers}", []).append((box.label, inside / outside))
    return out


def tower_probe(bundle: Path, phantoms: Path, limit: int | None = None) -> list[tuple[str, float]]:
    """Do the vision tower's patch tokens say where the finding is? Per held-out named
    finding: each patch token's distance from the mean token at its position over held-out
    phantoms without any of these findings (in units of their spread), as a map on the image,
    and that map's density inside the box over outside. Above 1: the tokens carry the place."""
    import numpy as np
    import torch

    from radixpert.data.study import read_studies
    from radixpert.infer.attention import box_densities
    from radixpert.models.bundle import load_bundle
    from radixpert.models.families import unwrap

    model, processor = load_bundle(bundle)
    tower = unwrap(model).model.vision_tower.eval()
    human = [{"from": "human", "value": "<image>\nx"}]

    def tokens(study: Any) -> np.ndarray:
        batch = processor([[phantoms / study.images[0].path]], [human], add_generation_prompt=True)
        with torch.no_grad():
            hidden = tower(batch["pixel_values"].float()).last_hidden_state
        return hidden[0, 1:].numpy()  # patches, CLS dropped

    held_out = [s for s in read_studies(phantoms / "studies.jsonl") if s.split != "train"]
    normal = [s for s in held_out if not any(b.label in PHRASES for b in s.boxes)][:100]
    stack = np.stack([tokens(s) for s in normal])
    mean, spread = stack.mean(0), stack.std(0).mean(-1) + 1e-6
    out = []
    for k, (study, box, _) in enumerate(_named_findings(phantoms)):
        if limit is not None and k >= limit:
            break
        deviation = np.linalg.norm(tokens(study) - mean, axis=-1) / spread
        side = math.isqrt(len(deviation))
        heat = np.kron(deviation.reshape(side, side), np.ones((16, 16)))  # cells, then pixels
        inside, outside = box_densities(heat, (box.x1, box.y1, box.x2, box.y2))
        out.append((box.label, inside / outside))
    return out


def _summary(values: list[tuple[str, float]]) -> dict[str, Any]:
    by: dict[str, list[float]] = {}
    for label, r in values:
        by.setdefault(label, []).append(r)
    return {
        "findings": len(values),
        "median_ratio": statistics.median(r for _, r in values) if values else None,
        "share_above_1": sum(r > 1 for _, r in values) / len(values) if values else None,
        "median_by_finding": {k: statistics.median(v) for k, v in sorted(by.items())},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, help="a `radixpert demo --out` folder")
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--phantoms", type=Path)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--n-phantoms", type=int, default=600)
    ap.add_argument("--out", type=Path, default=Path("attention_in_box.json"))
    ap.add_argument("--limit", type=int, help="at most this many findings")
    ap.add_argument(
        "--all-aggregations", action="store_true",
        help="every heads (mean, max) x layers (max, mean, last) choice, not only mean/max",
    )  # fmt: skip
    ap.add_argument(
        "--tower-probe", action="store_true",
        help="also: do the vision tower's patch tokens localize the findings?",
    )  # fmt: skip
    args = ap.parse_args()
    t0 = time.perf_counter()
    if args.demo:
        bundle, phantoms, source = *_demo_bundle(args.demo), {"demo": str(args.demo)}
    elif args.bundle:
        bundle, phantoms, source = args.bundle, args.phantoms, {"bundle": str(args.bundle)}
    else:
        tmp = Path(tempfile.mkdtemp(prefix="attention_in_box."))
        bundle, phantoms = train(tmp, args.n_phantoms, args.train_steps)
        source = {"trained_steps": args.train_steps, "phantoms": args.n_phantoms}
    aggregations = AGGREGATIONS if args.all_aggregations else [("mean", "max")]
    maps = ratios(bundle, phantoms, aggregations, args.limit)
    result: dict[str, Any] = {
        **source,
        "bundle": str(bundle),
        "reports": "teacher-forced true reports",
        **_summary(maps["phrase mean/max"]),  # the default: mean over heads, max over layers
        "by_aggregation": {k: _summary(v) for k, v in maps.items()},
    }
    if args.tower_probe:
        result["tower_probe"] = _summary(tower_probe(bundle, phantoms, args.limit))
    result["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _demo_bundle(demo: Path) -> tuple[Path, Path]:
    """The last stage's bundle of the demo's model (``model/<NN-stage>/bundle``; not the
    image-shuffled control) and the demo's phantoms."""
    stages = sorted((demo / "model").glob("*/bundle"))
    if not stages:
        raise SystemExit(f"{demo}: no model/<stage>/bundle (run `radixpert demo --out {demo}`)")
    return stages[-1], demo / "data" / "phantoms"


if __name__ == "__main__":
    main()
