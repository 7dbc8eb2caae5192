"""Does a trained model look at the finding it names? Attention inside vs outside the true box.

For every held-out phantom (validate and test splits) with a box whose finding is named in its
report ("pleural effusion" / "effusion", "pneumothorax", "consolidation", "nodule" / "mass"),
the report is teacher-forced through ``radixpert.infer.attention.explain`` (mean over heads,
max over layers), the phrase's map is projected onto the image, and the ratio of attention per
pixel inside the finding's true box to attention per pixel outside it is taken. A model that
looks where the finding is has ratios above 1. Prints the median per finding and overall and
writes them as JSON. Usage::

    radixpert demo --out runs/demo                              # the demo's full training
    python benchmarks/attention_in_box.py --demo runs/demo       # its final model and phantoms
    python benchmarks/attention_in_box.py --bundle B --phantoms P
    python benchmarks/attention_in_box.py --train-steps 300      # a short training of its own
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

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


def ratios(bundle: Path, phantoms: Path) -> list[tuple[str, float]]:
    """(finding, density inside its box / density outside) per held-out named finding."""
    from radixpert.data.study import read_studies
    from radixpert.infer.attention import box_densities, explain, project
    from radixpert.models.bundle import load_bundle

    model, processor = load_bundle(bundle)
    out = []
    for study in read_studies(phantoms / "studies.jsonl"):
        if study.split == "train":
            continue
        for box in study.boxes:
            text = study.findings.lower()
            phrase = next((p for p in PHRASES.get(box.label, ()) if p in text), None)
            if phrase is None:
                continue
            result = explain(
                model, processor, phantoms / study.images[0].path, report=study.findings,
                phrases=[phrase],
            )  # fmt: skip
            span = result.phrase_maps[0]
            if not span.tokens:
                raise RuntimeError(f"{study.id}: phrase {phrase!r} not found in its report")
            inside, outside = box_densities(
                project(span.grid, result.geometry), (box.x1, box.y1, box.x2, box.y2)
            )
            out.append((box.label, inside / outside))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, help="a `radixpert demo --out` folder")
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--phantoms", type=Path)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--n-phantoms", type=int, default=600)
    ap.add_argument("--out", type=Path, default=Path("attention_in_box.json"))
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
    values = ratios(bundle, phantoms)
    by: dict[str, list[float]] = {}
    for label, r in values:
        by.setdefault(label, []).append(r)
    result = {
        **source,
        "bundle": str(bundle),
        "aggregation": "mean over heads, max over layers; teacher-forced true report",
        "findings": len(values),
        "median_ratio": statistics.median(r for _, r in values) if values else None,
        "share_above_1": sum(r > 1 for _, r in values) / len(values) if values else None,
        "median_by_finding": {k: statistics.median(v) for k, v in sorted(by.items())},
        "seconds": round(time.perf_counter() - t0, 1),
    }
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
