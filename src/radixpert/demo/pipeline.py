"""``radixpert demo``: the whole pipeline on synthetic phantoms, on a CPU, in minutes.

    radixpert demo --out runs/demo            # re-run: finished steps are skipped

Steps (each writes its output atomically; a re-run skips what is finished, and a killed
training run resumes from its checkpoint):

1. ``data/phantoms``: phantom chest radiographs with exact findings, boxes and reports
   (``radixpert.data.phantoms``), split train / validate / test by a hash of their id;
2. ``data/instruct``: the instruction sets the recipe trains on (report writing,
   classification, grounding), as ShareGPT JSONL, for inspection;
3. ``model``: the ``demo`` recipe (``configs/recipes/demo.yaml``): a small llava with the HCF
   connector, first trained in full on the phantoms (standing in for a pretrained foundation
   model), then the Radixpert curriculum on it: connector alignment and the three MSA-LoRA
   stages (rank 64 -> 32 -> 16);
4. ``control``: the same recipe on the same data with the training images shuffled among the
   studies, so its reports cannot depend on the image: what the model scores above the
   control is what it reads from the image;
5. ``predictions``: reports and grounding answers for the held-out test phantoms;
6. ``summary.json`` and ``index.html``: findings F1, grounding mAP@0.5 and laterality
   accuracy (``radixpert.demo.scoring``), BLEU-4 / ROUGE-L / CIDEr-D against the true reports,
   for the model and the control; sample images with their generated and true reports and
   boxes; the training curves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radixpert.errors import UsageError
from radixpert.io import write_json

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_PHANTOMS", "run_demo"]

DEFAULT_PHANTOMS = 6000
IMAGE_SIZE = 64
# The phantoms' opt-in conspicuity options (``generate_phantoms``' min_px, contrast). Off: with
# nodules >= 4 px and doubled densities the tower alone classifies every finding at F1 >= 0.83
# (benchmarks/demo_vision_probe.py), but the whole demo did no better with them: F1 0.37 with
# them against 0.64 without, same recipe, one run each (docs/benchmarks.md).
PHANTOM_OPTIONS: dict[str, float] = {}
SAMPLES_ON_PAGE = 8
INSTRUCT_TASKS = {"report": 1.0, "classification": 1.0, "grounding-abnormality": 1.0}


def _say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


def _phantoms(out: Path, n: int) -> list[Any]:
    from radixpert.data.phantoms import generate_phantoms
    from radixpert.data.study import read_studies

    folder = out / "data" / "phantoms"
    studies_file = folder / "studies.jsonl"
    if studies_file.is_file():
        studies = list(read_studies(studies_file))
        if len(studies) == n:
            _say(f"1/6 phantoms: {n} found in {folder}, kept")
            return studies
    _say(f"1/6 phantoms: drawing {n} at {IMAGE_SIZE} px into {folder}")
    return generate_phantoms(n, folder, size=IMAGE_SIZE, progress=True, **PHANTOM_OPTIONS)


def _instruct(out: Path, studies: Sequence[Any]) -> None:
    from collections import Counter

    from radixpert.instruct.conversation import write_conversations
    from radixpert.instruct.mixture import build_mixture

    folder = out / "data" / "instruct"
    if (folder / "counts.json").is_file():
        _say("2/6 instruction sets: found, kept")
        return
    counts: dict[str, Any] = {}
    for split in ("train", "validate", "test"):
        tally: Counter = Counter()
        chosen = [s for s in studies if s.split == split]
        convs = list(build_mixture(chosen, INSTRUCT_TASKS, counts=tally))
        write_conversations(convs, folder / f"{split}.jsonl")
        counts[split] = dict(tally)
    write_json(folder / "counts.json", counts)
    _say(f"2/6 instruction sets: {counts['train']} training conversations in {folder}")


def _control_data(out: Path, studies: Sequence[Any], seed: int) -> Path:
    """A copy of the study file whose training studies have each other's images."""
    from radixpert.data.study import write_studies

    root = out / "control" / "data"
    target = root / "phantoms" / "studies.jsonl"
    if target.is_file():
        return root
    train = [s for s in studies if s.split == "train"]
    images = [s.images for s in train]
    random.Random(f"control:{seed}").shuffle(images)
    shuffled = []
    for study in studies:
        copy = type(study).from_dict(study.to_dict())
        if study.split == "train":
            copy.images = images.pop()
        for image in copy.images:  # relative to the control's study file
            image.path = str(Path("..", "..", "..", "data", "phantoms", image.path))
        shuffled.append(copy)
    write_studies(shuffled, target)
    return root


def _train(recipe_path: Path, data_root: Path, out: Path, overrides: Sequence[str]) -> dict:
    from radixpert.train.recipe import load_recipe
    from radixpert.train.runner import RUN_SUMMARY, run_recipe

    summary_file = out / RUN_SUMMARY
    recipe = load_recipe(recipe_path, overrides=overrides, data_root=str(data_root))
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        if summary.get("final_bundle") and len(summary["stages"]) == len(recipe.stages):
            return summary
    return run_recipe(recipe, out)


def _test_questions(studies: Sequence[Any]) -> tuple[list[Any], list[Any], list[dict]]:
    """Report prompts and grounding questions of the test studies (with their truth)."""
    from radixpert.instruct.tasks import ReportTask, create, parse_boxes

    test = [s for s in studies if s.split == "test"]
    report_task, ground_task = ReportTask("findings"), create("grounding-abnormality")
    reports, grounding, truth = [], [], []
    for study in test:
        rng = random.Random(f"demo-test:{study.id}")
        reports.extend(report_task.build(study, rng))
        for conv in ground_task.build(study, rng):
            grounding.append(conv)
            label = next(
                b.label
                for b in study.boxes
                if conv.conversations[0]["value"].find(b.label.lower()) >= 0
            )
            truth.append(
                {
                    "study": study.id,
                    "label": label,
                    "boxes": [parse_boxes(b)[0] for b in conv.target["boxes"]],
                }
            )
    return reports, grounding, truth


def _predict(out: Path, name: str, bundle: Path, studies: Sequence[Any]) -> dict[str, Any]:
    from radixpert.infer.generate import generate_answers
    from radixpert.models.bundle import load_bundle

    path = out / "predictions" / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    reports, grounding, truth = _test_questions(studies)
    model, processor = load_bundle(bundle)
    root = out / "data" / "phantoms"
    tick = time.perf_counter()
    written = generate_answers(
        model, processor, reports, image_root=root, batch_size=32, desc=f"{name}: reports"
    )
    boxes = generate_answers(
        model,
        processor,
        grounding,
        image_root=root,
        batch_size=32,
        max_new_tokens=48,
        desc=f"{name}: grounding",
    )
    result = {
        "reports": {c.study_id: r for c, r in zip(reports, written)},
        "grounding": [
            {**t, "answer": a, "question": c.conversations[0]["value"]}
            for c, t, a in zip(grounding, truth, boxes)
        ],
        "seconds": time.perf_counter() - tick,
    }
    write_json(path, result)
    return result


def _lexical(references: list[str], candidates: list[str]) -> dict[str, float]:
    from radixpert.evaluate import registry

    out: dict[str, float] = {}
    for name in ("bleu", "rouge-l", "cider-d"):
        result = registry.create(name).compute(references, candidates)
        for r in result.flatten():
            if r.name in ("bleu-4", "rouge-l", "cider-d"):
                out[r.name] = float(r.aggregate)
    return out


def _score(predictions: dict[str, Any], studies: Sequence[Any]) -> dict[str, float]:
    from radixpert.demo.scoring import (
        findings_scores,
        grounding_scores,
        lateral_findings,
        laterality_scores,
    )

    test = [s for s in studies if s.split == "test" and s.id in predictions["reports"]]
    reports = [predictions["reports"][s.id] for s in test]
    scores = findings_scores(reports, [s.labels for s in test])
    grounding = predictions["grounding"]
    scores.update(grounding_scores([g["answer"] for g in grounding], grounding))
    sides = [lateral_findings(s.extra.get("spec", {})) for s in test]
    scores.update(laterality_scores(reports, sides))
    scores.update(_lexical([s.findings for s in test], reports))
    scores["test_studies"] = float(len(test))
    return scores


def _logged_rows(run_dir: Path) -> list[tuple[int, dict[str, Any]]]:
    """Every ``metrics.jsonl`` row of a run's stages with its global step (stages in order)."""
    rows, offset = [], 0
    for stage_folder in sorted(p for p in run_dir.glob("[0-9][0-9]-*") if p.is_dir()):
        metrics = stage_folder / "train" / "metrics.jsonl"
        last = 0
        if metrics.is_file():
            for line in metrics.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                last = max(last, int(row["step"]))
                rows.append((offset + int(row["step"]), row))
        offset += last
    return rows


def _reward_curves(run_dir: Path, label: str) -> dict[str, list[tuple[int, float]]]:
    """Mean reward of the grpo stages' steps and of their greedy validation answers."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for step, row in _logged_rows(run_dir):
        for key in ("reward", "reward/findings-f1", "val_reward"):
            if key in row:
                curves.setdefault(f"{label} {key}", []).append((step, float(row[key])))
    return curves


def _curves(run_dir: Path, label: str) -> dict[str, list[tuple[int, float]]]:
    """Training and validation loss of every stage, on one global step axis."""
    train, val = [], []
    for step, row in _logged_rows(run_dir):
        if row["kind"] == "train":
            train.append((step, float(row["loss"])))
        elif row["kind"] == "validation" and "val_loss" in row:
            val.append((step, float(row["val_loss"])))
    return {f"{label} train loss": train, f"{label} validation loss": val}


def _samples(out: Path, studies: Sequence[Any], model: dict, control: dict) -> list[Any]:
    from radixpert.demo.page import Sample
    from radixpert.demo.scoring import predicted_findings
    from radixpert.instruct.tasks import parse_boxes

    test = [s for s in studies if s.split == "test" and s.id in model["reports"]]
    # Show studies with findings first: they are the interesting ones.
    test.sort(key=lambda s: (-len(s.boxes), s.id))
    samples = []
    for study in test[:SAMPLES_ON_PAGE]:
        predicted_boxes = [
            (g["label"], b)
            for g in model["grounding"]
            if g["study"] == study.id
            for b in parse_boxes(g["answer"])
            if all(0.0 <= v <= 1.0 for v in b) and b[0] <= b[2] and b[1] <= b[3]
        ]
        samples.append(
            Sample(
                study_id=study.id,
                image=out / "data" / "phantoms" / study.images[0].path,
                generated=model["reports"][study.id],
                reference=study.findings,
                true_boxes=[(b.label, (b.x1, b.y1, b.x2, b.y2)) for b in study.boxes],
                pred_boxes=predicted_boxes,
                true_labels=[f for f, v in study.labels.items() if v == 1 and f != "No Finding"],
                pred_labels=predicted_findings(model["reports"][study.id]),
                control_generated=control["reports"].get(study.id),
            )
        )
    return samples


def run_demo(
    out_dir: str | Path,
    *,
    phantoms: int = DEFAULT_PHANTOMS,
    recipe: str | Path | None = None,
    overrides: Sequence[str] = (),
    control: bool = True,
) -> dict[str, Any]:
    """Runs (or resumes) the demo into ``out_dir``; returns the summary.

    Args:
        out_dir: The demo folder.
        phantoms: How many phantoms to draw (80% train, 10% validate, 10% test).
        recipe: The recipe file; default the shipped ``demo`` recipe.
        overrides: ``key=value`` recipe overrides (e.g. shorter stages for a quick look).
        control: Also train the image-shuffled control.

    Returns:
        The summary written to ``out_dir/summary.json``.
    """
    from radixpert.demo.page import write_page
    from radixpert.train.recipe import recipe_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = recipe_path(recipe or "demo")
    _check_settings(
        out,
        {
            "phantoms": phantoms,
            "image_size": IMAGE_SIZE,
            "phantom_options": PHANTOM_OPTIONS,
            "recipe_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "overrides": list(overrides),
        },
    )
    start = time.perf_counter()
    studies = _phantoms(out, phantoms)
    _instruct(out, studies)

    _say("3/6 training the model (demo recipe)")
    tick = time.perf_counter()
    model_run = _train(path, out / "data", out / "model", overrides)
    train_seconds = sum(float(s.get("seconds", 0.0)) for s in model_run["stages"].values())
    _say(f"3/6 model trained ({train_seconds:.0f} s of training)")
    runs = {"model": model_run}
    if control:
        _say("4/6 training the control (same recipe, images shuffled)")
        control_root = _control_data(out, studies, seed=0)
        runs["control"] = _train(path, control_root, out / "control" / "model", overrides)
    _say(f"5/6 generating on the test phantoms ({time.perf_counter() - tick:.0f} s so far)")
    predictions = {
        name: _predict(out, name, Path(run["final_bundle"]), studies) for name, run in runs.items()
    }
    _say("6/6 scoring and writing the page")
    scores = {name: _score(p, studies) for name, p in predictions.items()}
    summary: dict[str, Any] = {
        "model": scores["model"],
        "control": scores.get("control", {}),
        "train_seconds": train_seconds,
        "control_train_seconds": sum(
            float(s.get("seconds", 0.0))
            for s in runs.get("control", {"stages": {}})["stages"].values()
        ),
        "phantoms": len(studies),
        "test_studies": int(scores["model"]["test_studies"]),
        "train_steps": sum(int(s.get("steps", 0)) for s in model_run["stages"].values()),
        "recipe": str(path.name),
        "overrides": list(overrides),
        "seconds": time.perf_counter() - start,
    }
    write_json(out / "summary.json", _finite(summary))
    curves = _curves(out / "model", "model")
    rewards = _reward_curves(out / "model", "model")
    if control:
        curves.update(_curves(out / "control" / "model", "control"))
        rewards.update(_reward_curves(out / "control" / "model", "control"))
    model_scores, control_scores = scores["model"], scores.get("control", {})
    notes = [
        "Synthetic phantoms, not patients: the findings, boxes and reports are known exactly.",
        f"Model: the demo recipe ({summary['train_steps']} steps, {train_seconds:.0f} s of "
        "training). Control: the same recipe with the training images shuffled among the "
        "studies, so it can only learn what the reports say on average.",
        f"Findings F1 {model_scores['findings_f1']:.3f} for the model against "
        f"{control_scores.get('findings_f1', float('nan')):.3f} for the control on "
        f"{summary['test_studies']} held-out phantoms.",
    ]
    write_page(
        out / "index.html",
        title="radixpert demo: a model that reads the image",
        summary={
            "model": _table(model_scores),
            "control": _table(control_scores),
            **{k: v for k, v in summary.items() if isinstance(v, int | float)},
        },
        samples=_samples(
            out, studies, predictions["model"], predictions.get("control", {"reports": {}})
        ),
        curves=curves,
        notes=notes,
        reward_curves=rewards,
    )
    _say(f"done: {out / 'index.html'} and {out / 'summary.json'}")
    return summary


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuses to resume a demo folder made with other settings (its steps would be stale)."""
    path = out / "demo.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise UsageError(
                f"{out} holds a demo made with other settings ({', '.join(changed)}: "
                f"{[before.get(k) for k in changed]} -> {[settings[k] for k in changed]}); "
                "use another --out or remove the folder"
            )
        return
    write_json(path, settings)


def _table(scores: dict[str, float]) -> dict[str, float]:
    """The scores shown in the page's metric table (counts left out)."""
    skip = ("findings_tp", "findings_fp", "findings_fn", "test_studies", "laterality_n")
    return {k: v for k, v in scores.items() if k not in skip}


def _finite(value: Any) -> Any:
    """NaN -> None, so summary.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
