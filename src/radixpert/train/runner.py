"""Runs a recipe: its stages in order, each starting from the previous stage's model.

``run_recipe`` is what ``radixpert train RECIPE.yaml`` calls::

    from radixpert.train.recipe import load_recipe
    from radixpert.train.runner import run_recipe

    recipe = load_recipe("demo", data_root="runs/demo/data")
    summary = run_recipe(recipe, "runs/demo/model")
    summary["final_bundle"]          # the last stage's model folder (radixpert.models.bundle)

For every stage it:

1. builds the stage's conversations from its sources (``studies.jsonl`` of ``radixpert data
   prepare`` or the phantoms) with ``radixpert.instruct.mixture.build_mixture``: the stage's
   task weights times each source's ``weight`` and ``repeat``, the split it names, and its
   prompt settings (``input: image_only`` keeps only the image in the prompt;
   ``prompt_fields: [indication]`` puts the indication in the report prompt); held-out
   conversations of the ``validate`` split (at most ``max_val`` of them) give ``val_loss``;
2. sets what trains: the first stage applies its trainability to the model; a later stage
   with LoRA on a model that has an adapter moves on with ``next_stage`` (the adapter merged,
   a new one of the new rank started, MSA-LoRA's 64 -> 32 -> 16); RadScribe stages switch
   with ``family_stage`` (``encoder_decoder.set_stage``);
3. trains with ``train_stage`` (accelerate; checkpoints that resume exactly) into
   ``OUT/NN-name/train`` and writes the model with its processor to ``OUT/NN-name/bundle``
   (``save_bundle``) and the stage's result to ``OUT/NN-name/result.json``.

A finished stage (its ``result.json`` exists) is not trained again: a rerun of a killed run
loads the last finished stage's bundle and resumes the unfinished stage from its newest
checkpoint. The model is built from ``model.size`` (random weights: a tiny family, the demo
size or a named real size) or loaded from ``model.pretrained``; a model with random weights
and no ``model.tokenizer`` gets tokenizers trained on the recipe's text
(``radixpert.models.tokenizers``), saved in ``OUT/tokenizer``.

Every random choice follows the recipe's ``seed``: the random-init weights and each stage's
fresh adapters and connectors are drawn after seeding with ``stage_seed(seed, stage, ...)``,
the task mixture and the batch order from ``seed`` itself, dropout from the RNGs seeded at the
start of each stage (and restored exactly on resume). Two runs of one recipe give the same
losses and weights, and a resumed run starts a stage as an uninterrupted one does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from radixpert.errors import RecipeError, UnknownName, UsageError
from radixpert.io import write_json
from radixpert.train.recipe import ModelSpec, Recipe, Stage

logger = logging.getLogger(__name__)

__all__ = [
    "STAGE_RESULT",
    "apply_stage",
    "build_model",
    "run_recipe",
    "stage_conversations",
    "stage_dir",
]

STAGE_RESULT = "result.json"
RUN_SUMMARY = "run.json"
TOKENIZER_DIR = "tokenizer"
DECODER_TOKENIZER_DIR = "decoder_tokenizer"
BUNDLE_DIR = "bundle"


def stage_dir(out: str | Path, index: int, stage: Stage) -> Path:
    """The folder of stage ``index``: ``OUT/00-name``."""
    return Path(out) / f"{index:02d}-{stage.name}"


def _components(model: Any) -> Mapping[str, Any]:
    from radixpert.models.families import components_of

    return components_of(model)


def stage_conversations(
    stage: Stage, split: str | None = None, seed: int = 0, limit: int | None = None
) -> list[Any]:
    """The conversations of ``stage`` (its sources, tasks and prompt settings).

    Args:
        stage: The stage.
        split: The split to read; None reads the stage's own (``data.split``).
        seed: Seed of the task mixture.
        limit: Keep at most this many (the first ones, a deterministic choice).

    Returns:
        ``Conversation`` records whose image paths are absolute.

    Raises:
        FileNotFoundError: A source file is missing (named).
    """
    from radixpert.data.study import read_studies
    from radixpert.instruct.conversation import IMAGE_TOKEN
    from radixpert.instruct.mixture import build_mixture
    from radixpert.instruct.tasks import ReportTask

    split = split or stage.data.split
    objects: dict[str, Any] = {}
    if stage.prompt_fields or stage.input == "image_only":
        with_indication = "indication" in stage.prompt_fields
        objects["report"] = ReportTask("findings", with_indication=with_indication)
        objects["report-full"] = ReportTask("findings+impression", with_indication=with_indication)
    out: list[Any] = []
    for source in stage.data.sources:
        path = Path(source.studies)
        if not path.is_file():
            raise FileNotFoundError(f"stage {stage.name}: studies file {path} does not exist")
        # Studies without a split count as training data only, never as held-out data.
        unsplit = ("", None) if split == "train" else ()
        studies = [s for s in read_studies(path) if s.split == split or s.split in unsplit]
        factor = source.weight * source.repeat
        weights = {t: w * factor for t, w in stage.data.tasks.items()}
        tasks = {n: objects[n] for n in weights if n in objects}
        for conv in build_mixture(studies, weights, seed=seed, task_objects=tasks):
            conv.image = [str((path.parent / p).resolve()) for p in conv.image]
            if stage.input == "image_only" and conv.image:
                conv.conversations[0] = {"from": "human", "value": IMAGE_TOKEN}
            out.append(conv)
            if limit is not None and len(out) >= limit:
                return out
    return out


def _texts(conversations: Sequence[Any]) -> list[str]:
    from radixpert.instruct.conversation import IMAGE_TOKEN

    return [t["value"].replace(IMAGE_TOKEN, " ") for c in conversations for t in c.conversations]


def _corpus(stages: Sequence[Stage], seed: int) -> list[str]:
    """The text of every stage (boxes, labels, reports): what a new tokenizer must know."""
    return [t for stage in stages for t in _texts(stage_conversations(stage, seed=seed))]


def build_model(spec: ModelSpec, out: Path, texts: Callable[[], Sequence[str]]) -> tuple[Any, Any]:
    """The recipe's starting model and its processor
    (``radixpert.models.families.create_model_and_processor``).

    Args:
        spec: The recipe's model.
        out: The run folder (a tokenizer trained for random weights is kept in
            ``out/tokenizer``, RadScribe's decoder tokenizer in ``out/decoder_tokenizer``).
        texts: Returns the training text; called only if a tokenizer must be trained.

    Returns:
        ``(model, processor)``.
    """
    from radixpert.models.families import create_model_and_processor

    return create_model_and_processor(
        spec,
        tokenizer_dir=out / TOKENIZER_DIR,
        decoder_tokenizer_dir=out / DECODER_TOKENIZER_DIR,
        texts=texts,
    )


def _precision(model: Any, stage: Stage) -> Any:
    """Without mixed precision the stage computes in fp32: a model loaded in bf16/fp16 is cast
    up (with bf16/fp16 the frozen weights stay as loaded and autocast does the compute)."""
    import torch

    low = {p.dtype for p in model.parameters() if p.is_floating_point()} - {torch.float32}
    if stage.mixed_precision == "no" and low:
        logger.warning(
            "stage %s: mixed_precision no, so the %s weights are cast to fp32 (set "
            "mixed_precision: bf16 to keep frozen weights as loaded)",
            stage.name,
            "/".join(sorted(str(d).removeprefix("torch.") for d in low)),
        )
        model = model.float()
    return model


def _save_head(head: Any, bundle: Path) -> None:
    """The contrastive stage's head (``ContrastiveHead.state_dict()``) in the bundle, where
    ``evaluate --retrieval`` looks for it first (``radixpert.train.contrastive.HEAD_FILE``)."""
    from radixpert.train.checkpoint import save_tensors
    from radixpert.train.contrastive import HEAD_FILE

    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in head.state_dict().items()}
    save_tensors(state, bundle / HEAD_FILE)


def apply_stage(model: Any, stage: Stage) -> Any:
    """Sets what trains in ``stage``, moving on from the model's adapter (see the module doc)."""
    from radixpert.models.trainability import apply_trainability, next_stage

    specs = stage.component_specs()
    if stage.family_stage is not None:
        from radixpert.models.encoder_decoder import set_stage

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        set_stage(base, stage.family_stage)
        return model
    prefixes = _components(model)
    lora = [c for c in specs.values() if c.mode == "lora"]
    if hasattr(model, "peft_config"):
        if lora:
            return next_stage(model, lora[0].rank, specs, prefixes)
        model = model.merge_and_unload()
    return apply_trainability(model, specs, prefixes)


def _report_metric(
    stage: Stage,
    val: Sequence[Any],
    processor: Any,
    evaluate_fn: Callable[[Any, Any, Stage], Mapping[str, float]] | None,
) -> Callable[[Any], Mapping[str, float]]:
    """``f(model)``: the stage's ``eval_metric`` on reports written for the held-out reports."""
    from radixpert.evaluate import registry
    from radixpert.infer.generate import generate_answers

    name = stage.eval_metric or ""
    registry.expand([name])  # an unknown name fails before training, not at the first eval
    reports = [c for c in val if c.task in ("report", "report-full")]
    if not reports:
        raise RecipeError(f"stage {stage.name}: eval_metric needs report conversations to score")

    def compute(model: Any) -> Mapping[str, float]:
        written = generate_answers(model, processor, reports, progress=False)
        truth = [c.conversations[-1]["value"] for c in reports]
        out: dict[str, float] = {}
        for metric in registry.expand([name]):
            for result in registry.create(metric).compute(truth, written).flatten():
                out[f"val_{result.name}"] = float(result.aggregate)
        if evaluate_fn is not None:
            out.update(evaluate_fn(model, processor, stage))
        return out

    return compute


def stage_seed(seed: int, index: int, purpose: str) -> int:
    """A seed for one purpose of stage ``index`` of a run seeded with ``seed`` (32 bits)."""
    digest = hashlib.sha256(f"radixpert.runner:{seed}:{index}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def run_recipe(
    recipe: Recipe,
    out_dir: str | Path,
    *,
    only: Sequence[str] | None = None,
    resume: bool = True,
    log_with: Sequence[str] = ("tensorboard",),
    progress: bool = True,
    max_val: int = 64,
    evaluate_fn: Callable[[Any, Any, Stage], Mapping[str, float]] | None = None,
) -> dict[str, Any]:
    """Trains every stage of ``recipe`` in order into ``out_dir``; resumes a killed run.

    Args:
        recipe: A validated recipe (``load_recipe``).
        out_dir: The run folder.
        only: Names of the stages to run (the others must be finished already, or come
            after); None runs them all.
        resume: Resume unfinished stages from their checkpoints and skip finished ones;
            False starts every stage afresh (finished stages are trained again).
        log_with: accelerate trackers ("tensorboard", "mlflow"); () for none.
        progress: Show progress bars.
        max_val: Held-out conversations per stage for ``val_loss``.
        evaluate_fn: ``f(model, processor, stage) -> metrics`` run at each evaluation
            (e.g. a report metric on held-out studies); its metrics are logged.

    Returns:
        The run summary (also in ``OUT/run.json``): per stage its result, and
        ``final_bundle``.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env, set_seed

    from radixpert.models.bundle import load_bundle, save_bundle
    from radixpert.train.loop import train_stage

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # As AcceleratorState does: PartialState alone ignores ACCELERATE_USE_CPU, and the state
    # it makes first is the one every later Accelerator shares (a 2-process CPU launch would
    # otherwise run as two single processes).
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    names = [s.name for s in recipe.stages]
    for name in only or ():
        if name not in names:
            raise UnknownName(f"no stage {name!r}; stages: {names}")
    model = processor = None
    last_bundle: Path | None = None
    results: dict[str, Any] = {}
    offset = 0
    start = time.perf_counter()
    for index, stage in enumerate(recipe.stages):
        folder = stage_dir(out, index, stage)
        done = folder / STAGE_RESULT
        if resume and done.is_file():
            result = json.loads(done.read_text(encoding="utf-8"))
            results[stage.name] = result
            offset += int(result.get("steps", 0))
            last_bundle, model, processor = folder / BUNDLE_DIR, None, None
            logger.info("stage %s: finished earlier, skipped", stage.name)
            continue
        if only is not None and stage.name not in only:
            if any(n in only for n in names[index + 1 :]):
                raise UsageError(
                    f"stage {stage.name!r} is not finished; it must run before {list(only)}"
                )
            break
        train = stage_conversations(stage, seed=recipe.seed)
        if not train:
            raise RecipeError(f"stage {stage.name}: no training conversations in its sources")
        val = stage_conversations(stage, "validate", seed=recipe.seed, limit=max_val)
        if model is None:
            if last_bundle is not None:
                model, processor = load_bundle(last_bundle)
                model.train()
            else:
                set_seed(stage_seed(recipe.seed, index, "init"))  # random-init weights
                with state.main_process_first():
                    model, processor = build_model(
                        recipe.model, out, partial(_corpus, recipe.stages[index:], recipe.seed)
                    )
        # Fresh adapters and connectors of the stage: seeded by (seed, stage), so a run that
        # resumes here from the previous bundle starts them as an uninterrupted run does.
        set_seed(stage_seed(recipe.seed, index, "stage"))
        model = apply_stage(_precision(model, stage), stage)
        logger.info("stage %d/%d: %s", index + 1, len(recipe.stages), stage.name)
        metric_fn = None
        if stage.eval_metric is not None:
            metric_fn = _report_metric(stage, val, processor, evaluate_fn)
        elif evaluate_fn is not None:

            def metric_fn(
                m: Any, _stage: Stage = stage, _proc: Any = processor
            ) -> Mapping[str, float]:
                return evaluate_fn(m, _proc, _stage)

        tick = time.perf_counter()
        result = train_stage(
            model,
            processor,
            train,
            stage,
            folder / "train",
            resume=resume,
            seed=recipe.seed,
            component_prefixes=_components(model),
            val_conversations=val,
            evaluate_fn=metric_fn,
            log_with=log_with,
            progress=progress,
            global_step_offset=offset,
        )
        model = result.pop("model")
        extra = result.pop("objective_modules", [])
        bundle = folder / BUNDLE_DIR
        if state.is_main_process:
            save_bundle(model, processor, bundle, recipe=dataclasses.asdict(recipe))
            if stage.objective == "contrastive" and extra:
                _save_head(extra[0], bundle)
        state.wait_for_everyone()
        result.update(
            stage=stage.name,
            index=index,
            examples=len(train),
            validation_examples=len(val),
            seconds=time.perf_counter() - tick,
            bundle=str(bundle),
        )
        if state.is_main_process:
            write_json(done, result)
        results[stage.name] = result
        offset += int(result["steps"])
        last_bundle = bundle
    summary = {
        "recipe": recipe.name,
        "version": recipe.version,
        "stages": results,
        "final_bundle": str(last_bundle) if last_bundle else None,
        "seconds": time.perf_counter() - start,
    }
    if state.is_main_process:
        write_json(out / RUN_SUMMARY, summary)
    return summary
