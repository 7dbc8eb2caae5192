"""Real-size training and generation speed and memory on one GPU, with random weights.

Weights do not change the cost of a step, so the real architectures with random weights
measure what a user of the pretrained checkpoints will see. One command, under 8 minutes on
one H100 or H200 (``--budget-s`` stops starting new cases once it is spent)::

    python benchmarks/gpu_suite.py --out runs/gpu_suite
    python benchmarks/gpu_suite.py --out runs/gpu_suite --only mllama-11b-hcf-lora64
    python benchmarks/gpu_suite.py --dry-run --out /tmp/gpu_suite   # tiny sizes, on the CPU

Inputs are one phantom radiograph and a report of ``--report-tokens`` tokens (300) per
example, through the project's processor (a tokenizer trained on the phantom reports stands
in for the checkpoint's: random weights have none), in bf16 (frozen weights bf16, trained
ones fp32, autocast: the trainer's precision policy). The cases:

* ``mllama-11b-hcf-lora64``: Llama-3.2-11B-Vision with the HCF connector trained in full and
  LoRA r64 on the language model (``msa_lora`` stage 1), batch 1, 2, 4, 8 until it no longer
  fits, without and with activation checkpointing;
* ``trainer-mllama-11b-hcf-lora64``: the baseline on the same model and inputs:
  transformers' ``Trainer`` with a peft ``LoraConfig`` (r64 on the same modules, peft's
  defaults otherwise) and ``TrainingArguments(bf16=True)``, defaults otherwise;
* ``llava-7b-lora64`` and ``llava-7b-full``: the LLaVA-1.5-7B shape with LoRA r64, and with
  the language model trained in full (activation checkpointing on) at the largest batch that
  fits;
* ``generate-llava-7b``: ``radixpert generate``'s batched path (``infer.generate.
  generate_batch``; dynamic and static cache) against a one-at-a-time loop of the same call,
  same prompts, same number of new tokens (``min_new_tokens`` = ``max_new_tokens``).

The project's step is the stage trainer's: ``apply_trainability``, ``build_optimizer``, the
``lm`` objective's loss, accelerate's ``backward`` and gradient clipping (1.0); batches are
built by the processor in the loop, as the Trainer's default collation does (the trainer's
workers, which overlap loading, are measured in ``benchmarks/loop_feeding.py``).

Reported per case and batch: samples/s, tokens/s (every input token, image tokens included),
peak memory (``torch.cuda.max_memory_allocated``) beside the memory plan's estimate
(``radixpert.train.plan.estimate_memory``), and MFU. FLOP-count convention: model FLOPs of
one training step as ``torch.utils.flop_counter.FlopCounterMode`` counts them without
activation checkpointing (every matmul, convolution and attention kernel of the forward and
backward pass, 2 FLOPs per multiply-accumulate; a frozen part gets no weight gradients and the
frozen vision tower no backward at all), so recomputation is not counted (PaLM's MFU,
Chowdhery et al. 2022, App. B); MFU = FLOPs per sample x samples/s / the card's dense bf16
peak (``--peak-tflops``, else from the device name: H100/H200 SXM 989, H100 PCIe 756, A100
312). Results go to ``OUT/results.json`` and ``OUT/table.md`` (the rows of
``docs/benchmarks.md``), each case as it finishes, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import itertools
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("gpu_suite")

PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))
"""Dense bf16 peak per device-name fragment (NVIDIA data sheets), first match wins."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One measured configuration family.

    Attributes:
        name: The case's name (``--only``).
        kind: "train" (the project's step), "trainer" (the transformers baseline) or
            "generate".
        size: A ``radixpert model list`` size.
        connector: The connector (None: the size's own).
        lm: The language model's mode: "lora" (r64) or "full".
        batches: Batch sizes, in rising order, tried until one does not fit.
        checkpointing: The activation-checkpointing settings tried, each over ``batches``.
        largest_only: Report only the largest batch that fits (full fine-tuning).
    """

    name: str
    kind: str
    size: str
    connector: str | None = None
    lm: str = "lora"
    batches: tuple[int, ...] = (1, 2, 4, 8)
    checkpointing: tuple[bool, ...] = (False, True)
    largest_only: bool = False


HCF = {"levels": 3, "gate": "learned", "num_heads": 8}  # msa_lora's connector

REAL = (
    Case("mllama-11b-hcf-lora64", "train", "llama32_vision_11b", "hcf"),
    Case("trainer-mllama-11b-hcf-lora64", "trainer", "llama32_vision_11b", "hcf",
         checkpointing=(False,)),
    Case("llava-7b-lora64", "train", "llava15_7b"),
    Case("llava-7b-full", "train", "llava15_7b", lm="full", checkpointing=(True,),
         largest_only=True),
    Case("generate-llava-7b", "generate", "llava15_7b", batches=(16,), checkpointing=(False,)),
)  # fmt: skip

TINY = (
    Case("mllama-11b-hcf-lora64", "train", "tiny-mllama", "hcf", batches=(1, 2)),
    Case("trainer-mllama-11b-hcf-lora64", "trainer", "tiny-mllama", "hcf", batches=(1, 2),
         checkpointing=(False,)),
    Case("llava-7b-lora64", "train", "tiny-llava", batches=(1, 2), checkpointing=(False,)),
    Case("llava-7b-full", "train", "tiny-llava", lm="full", batches=(1, 2),
         checkpointing=(True,), largest_only=True),
    Case("generate-llava-7b", "generate", "tiny-llava", batches=(4,), checkpointing=(False,)),
)  # fmt: skip
"""The same cases at tiny sizes: the CPU check of every code path (``--dry-run``)."""


@dataclasses.dataclass
class Settings:
    steps: int
    warmup: int
    report_tokens: int
    image_size: int
    new_tokens: int
    prompts: int
    attn: str | None
    peak_tflops: float | None


class DoesNotFit(Exception):
    """A configuration ran out of device memory."""


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def phantom_inputs(root: Path, n: int, size: int) -> tuple[list[Path], list[str]]:
    """``n`` phantom images and every report text of them (for the tokenizer)."""
    from radixpert.data.phantoms import generate_phantoms

    studies = generate_phantoms(n, root / "phantoms", size=size)
    images = [root / "phantoms" / s.images[0].path for s in studies]
    texts = [t for s in studies for t in (s.findings, s.impression) if t]
    return images, texts


def report_of(processor: Any, texts: Sequence[str], start: int, tokens: int) -> str:
    """A report of about ``tokens`` tokens: the phantom reports from ``start`` on, joined,
    cut to the last word that keeps it within ``tokens``."""
    tokenizer = processor.tokenizer
    words: list[str] = []
    i = start
    while len(tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]) < tokens:
        words += texts[i % len(texts)].split()
        i += 1
    lo, hi = 1, len(words)
    while lo < hi:  # the longest prefix within the budget
        mid = (lo + hi + 1) // 2
        n = len(tokenizer(" ".join(words[:mid]), add_special_tokens=False)["input_ids"])
        lo, hi = (mid, hi) if n <= tokens else (lo, mid - 1)
    return " ".join(words[:lo])


def examples(
    processor: Any, images: Sequence[Path], texts: Sequence[str], n: int, tokens: int
) -> list[dict[str, Any]]:
    """``n`` training examples: an image, the report prompt and a report of ``tokens``."""
    from PIL import Image

    from radixpert.instruct.tasks import ReportTask

    prompt = ReportTask.PROMPTS[0].format(what="findings")
    out = []
    for i in range(n):
        with Image.open(images[i % len(images)]) as img:
            image = img.convert("L")
        report = report_of(processor, texts, 7 * i, tokens)
        turns = [{"from": "human", "value": prompt}, {"from": "gpt", "value": report}]
        out.append({"images": [image], "turns": turns})
    return out


def collate(processor: Any) -> Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]]:
    def batch(items: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return processor([it["images"] for it in items], [it["turns"] for it in items])

    return batch


def text_tokens(processor: Any, example: dict[str, Any]) -> int:
    """Text tokens of one example (the memory plan's ``seq_len``: images are added by it)."""
    ids, _ = processor.encode_conversation(example["turns"])
    return sum(1 for t in ids if t != processor.image_token_id)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def stage_for(case: Case, batch: int, checkpointing: bool) -> Any:
    """``msa_lora`` stage 1 with the case's batch, checkpointing and language-model mode."""
    from radixpert.train.recipe import ComponentTraining, load_recipe

    stage = load_recipe("msa_lora", data_root=".").stages[0]
    trainability = stage.trainability
    if case.lm == "full":
        trainability = dataclasses.replace(
            trainability, language_model=ComponentTraining(mode="full")
        )
    return dataclasses.replace(
        stage,
        batch_size=batch,
        grad_accum=1,
        gradient_checkpointing=checkpointing,
        trainability=trainability,
        early_stopping=None,
    )


def build(case: Case, device: torch.device, texts: Sequence[str], out: Path) -> tuple[Any, Any]:
    """The case's model (random weights, bf16, on ``device``) and its processor."""
    from radixpert.models.families import create_model_and_processor
    from radixpert.models.spec import HCFOptions, ModelSpec

    hcf = HCFOptions(**HCF) if case.connector == "hcf" and "tiny" not in case.size else None
    spec = ModelSpec(
        family="mllama" if "mllama" in case.size else "llava",
        size=case.size,
        connector=case.connector,
        hcf=hcf,
        dtype="bfloat16" if device.type == "cuda" else "float32",
        system_prompt="",
    )
    torch.manual_seed(0)
    with torch.device(device), default_dtype(torch.bfloat16 if device.type == "cuda" else None):
        model, processor = create_model_and_processor(
            spec, tokenizer_dir=out / f"tokenizer-{case.size}", texts=lambda: list(texts)
        )
    # bf16 on the GPU; fp32 on the CPU, where the trainer computes in fp32 (no autocast)
    return model.to(device=device, dtype=compute_dtype(device)), processor


def compute_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype | None) -> Iterator[None]:
    """Builds in ``dtype`` (an 11B model built in fp32 would hold 44 GB before its cast)."""
    before = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def set_attention(model: Any, attn: str | None) -> None:
    if attn is not None:
        model.set_attn_implementation(attn)


def freed() -> None:
    """Collects what was let go and returns the cached device memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Fits:
    """Swallows the device's out-of-memory error inside the block; ``check()`` after it raises
    ``DoesNotFit``. Raised outside the ``with``, it holds neither the error nor its traceback,
    whose frames hold the step's activations, so their memory is free for the next setting."""

    def __init__(self) -> None:
        self.error: str | None = None

    def __enter__(self) -> Fits:
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> bool:
        if isinstance(error, torch.OutOfMemoryError):
            self.error = str(error).splitlines()[0]
            return True
        return False

    def check(self) -> None:
        if self.error is not None:
            freed()
            raise DoesNotFit(self.error)


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def step_flops(model: Any, batch: dict[str, torch.Tensor], loss_of: Callable) -> int:
    """Model FLOPs of one forward + backward (the module doc's convention)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss_of(model, batch).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def sweep(
    case: Case, run: Callable[[int, bool], dict[str, Any]], record: Callable[[dict], None]
) -> None:
    """Each checkpointing setting over the case's batches, rising, until one does not fit."""
    for checkpointing in case.checkpointing:
        fitted: dict[str, Any] | None = None
        for batch in case.batches:
            row = {"case": case.name, "batch": batch, "checkpointing": checkpointing}
            try:
                row.update(run(batch, checkpointing))
            except DoesNotFit as err:
                row.update(fits=False, error=str(err)[:200])
                if not case.largest_only:
                    record(row)
                break
            row["fits"] = True
            if case.largest_only:
                fitted = row
            else:
                record(row)
        if case.largest_only and fitted is not None:
            record(fitted)
        elif case.largest_only:
            record({"case": case.name, "batch": case.batches[0], "fits": False,
                    "checkpointing": checkpointing})  # fmt: skip


def timed_steps(step: Callable[[], None], settings: Settings, device: torch.device) -> float:
    """Median seconds per step after the warm-up steps."""
    for _ in range(settings.warmup):
        step()
    sync(device)
    times = []
    for _ in range(settings.steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_case(case: Case, ctx: dict[str, Any], record: Callable[[dict], None]) -> None:
    """The project's training step over the case's sweep."""
    from accelerate import Accelerator

    from radixpert.models.families import components_of
    from radixpert.train.loop import _moved, build_optimizer
    from radixpert.train.objectives import LanguageModelObjective
    from radixpert.train.plan import estimate_memory

    settings, device = ctx["settings"], ctx["device"]
    model, processor = build(case, device, ctx["texts"], ctx["out"])
    set_attention(model, settings.attn)
    prefixes = components_of(model)
    pool = examples(
        processor, ctx["images"], ctx["texts"], max(case.batches), settings.report_tokens
    )
    make = collate(processor)
    objective = LanguageModelObjective()
    accelerator = Accelerator(mixed_precision="bf16" if device.type == "cuda" else "no",
                              cpu=device.type == "cpu")  # fmt: skip

    def loss_of(m: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with accelerator.autocast():
            return objective.loss(m, batch).loss

    def count_flops() -> float:
        """Model FLOPs of one example: batch 1, checkpointing off (the module doc)."""
        nonlocal model
        trained = _trainable(model, stage_for(case, 1, False), prefixes, False)
        try:
            with Fits() as guard:
                flops = step_flops(trained, _moved(make(pool[:1]), device), loss_of)
        finally:
            model = _untrained(trained)
            freed()
        guard.check()
        return flops

    def run(batch_size: int, checkpointing: bool) -> dict[str, Any]:
        nonlocal model
        stage = stage_for(case, batch_size, checkpointing)
        trained = optimizer = None
        try:
            with Fits() as guard:
                trained = _trainable(model, stage, prefixes, checkpointing)
                optimizer = build_optimizer(trained, stage, prefixes)
                lengths = [text_tokens(processor, e) for e in pool[:batch_size]]
                estimate = estimate_memory(trained, stage, gpus=1, strategy="ddp",
                                           seq_len=max(lengths), images_per_sample=1)  # fmt: skip

                def step() -> None:
                    loss = loss_of(trained, _moved(make(pool[:batch_size]), device))
                    accelerator.backward(loss)
                    accelerator.clip_grad_norm_(trained.parameters(), stage.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)

                reset_peak(device)
                seconds = timed_steps(step, settings, device)
                peak = peak_gib(device)
        finally:
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            optimizer = None
            if trained is not None:
                model = _untrained(trained)
            trained = None
            freed()
        guard.check()
        batch = make(pool[:batch_size])
        tokens = int(batch["attention_mask"].sum()) + _image_tokens(processor, batch_size)
        row = _rates(batch_size, tokens, seconds, ctx["flops"].get(case.name), ctx)
        row.update(peak_gib=peak, plan_gib=estimate.peak / 2**30)
        return row

    try:
        ctx["flops"].setdefault(case.name, count_flops())
    except DoesNotFit as err:
        logger.warning("%s: FLOPs not counted (%s)", case.name, err)
    sweep(case, run, record)
    model = None  # the closures share it: let the model go before the next case
    freed()


def _trainable(model: Any, stage: Any, prefixes: Any, checkpointing: bool) -> Any:
    from radixpert.models.trainability import apply_trainability
    from radixpert.train.loop import enable_activation_checkpointing

    trained = apply_trainability(model, stage.component_specs(), prefixes)
    if checkpointing:  # as the stage trainer sets it
        enable_activation_checkpointing(trained)
    trained.train()
    return trained


def _untrained(trained: Any) -> Any:
    """The base model back, adapters removed and checkpointing off, for the next setting."""
    from radixpert.models.families import unwrap

    model = trained.unload() if hasattr(trained, "peft_config") else trained
    base = unwrap(model)
    if getattr(base, "is_activation_checkpointing", False):
        base.activation_checkpointing_disable()
    for param in model.parameters():
        param.requires_grad_(False)
        param.grad = None
    return model.to(compute_dtype(next(model.parameters()).device))


def _image_tokens(processor: Any, batch_size: int) -> int:
    """Image tokens that the attention mask does not count (Mllama cross-attends to them)."""
    if processor.config.family == "mllama":
        return batch_size * processor.config.image_seq_length
    return 0


def _rates(batch: int, tokens: int, seconds: float, flops: float | None, ctx: dict) -> dict:
    row: dict[str, Any] = {
        "s_per_step": seconds,
        "samples_per_s": batch / seconds,
        "tokens_per_s": tokens / seconds,
    }
    peak = ctx["peak_flops"]
    if flops is not None:
        row["tflop_per_sample"] = flops / 1e12
        row["mfu"] = flops * batch / seconds / peak if peak else None
    return row


def trainer_case(case: Case, ctx: dict[str, Any], record: Callable[[dict], None]) -> None:
    """The baseline: transformers' Trainer with peft, defaults, on the same model and inputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from radixpert.models.families import components_of, unwrap
    from radixpert.models.trainability import _component_of, lora_target_regex

    settings, device = ctx["settings"], ctx["device"]
    model, processor = build(case, device, ctx["texts"], ctx["out"])
    prefixes = components_of(model)
    pool = examples(
        processor, ctx["images"], ctx["texts"], max(case.batches), settings.report_tokens
    )

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync(device)
            self.ends.append(time.perf_counter())

    def run(batch_size: int, checkpointing: bool) -> dict[str, Any]:
        nonlocal model
        stage = stage_for(case, batch_size, checkpointing)
        specs = stage.component_specs()
        target = lora_target_regex(specs, prefixes, model)
        rank = specs["language_model"].rank
        config = LoraConfig(r=rank, lora_alpha=specs["language_model"].lora_alpha,
                            lora_dropout=0.1, target_modules=target)  # fmt: skip
        clock = Clock()
        wrapped = None
        try:
            with Fits() as guard:
                wrapped = get_peft_model(model, config)
                for name, param in unwrap(wrapped).named_parameters():  # the connector in full
                    if _component_of(name, prefixes) == "connector":
                        param.requires_grad_(True)
                args = TrainingArguments(
                    output_dir=str(ctx["out"] / "trainer"),
                    per_device_train_batch_size=batch_size,
                    max_steps=settings.warmup + settings.steps + 1,
                    learning_rate=stage.optimizer.lr,
                    bf16=device.type == "cuda",
                    use_cpu=device.type == "cpu",
                    save_strategy="no",
                    report_to=[],
                    logging_steps=10_000,
                    remove_unused_columns=False,
                    disable_tqdm=True,
                    gradient_checkpointing=checkpointing,
                )
                data = [pool[i % len(pool)] for i in range(batch_size * (args.max_steps + 1))]
                reset_peak(device)
                Trainer(model=wrapped, args=args, train_dataset=data,
                        data_collator=collate(processor), callbacks=[clock]).train()  # fmt: skip
                peak = peak_gib(device)
        finally:
            if wrapped is not None:
                model = _untrained(wrapped)
            wrapped = None
            freed()
        guard.check()
        steady = clock.ends[settings.warmup :]
        seconds = statistics.median(b - a for a, b in itertools.pairwise(steady))
        batch = collate(processor)(pool[:batch_size])
        tokens = int(batch["attention_mask"].sum()) + _image_tokens(processor, batch_size)
        flops = ctx["flops"].get(case.name.removeprefix("trainer-"))
        row = _rates(batch_size, tokens, seconds, flops, ctx)
        row["peak_gib"] = peak
        return row

    sweep(case, run, record)
    model = None  # the closures share it: let the model go before the next case
    freed()


def generate_case(case: Case, ctx: dict[str, Any], record: Callable[[dict], None]) -> None:
    """Batched generation (dynamic and static cache) against a one-at-a-time loop."""
    from radixpert.infer import generate as gen
    from radixpert.instruct.tasks import ReportTask

    settings, device = ctx["settings"], ctx["device"]
    model, processor = build(case, device, ctx["texts"], ctx["out"])
    set_attention(model, settings.attn)
    model.eval()
    n, tokens = settings.prompts, settings.new_tokens
    prompt = [{"from": "human", "value": ReportTask.PROMPTS[0].format(what="findings")}]
    images = [[ctx["images"][i % len(ctx["images"])]] for i in range(n)]
    fixed = {"max_new_tokens": tokens, "min_new_tokens": tokens}

    def timed(batch_size: int, **kwargs: Any) -> float:
        sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                chunk = images[start : start + batch_size]
                gen.generate_batch(model, processor, chunk, [prompt] * len(chunk), **fixed,
                                   **kwargs)  # fmt: skip
        sync(device)
        return time.perf_counter() - t0

    timed(min(n, 2))  # warm-up: kernels, allocator
    reset_peak(device)
    loop = timed(1)
    rows = [{"case": case.name, "mode": "loop", "batch": 1, "cache": "dynamic", "seconds": loop}]
    for batch_size in case.batches:
        for cache in ("dynamic", "static"):
            kwargs = {"cache_implementation": "static"} if cache == "static" else {}
            try:
                gen.check_decoding(model, processor, kwargs)
                with Fits() as guard:
                    seconds = timed(batch_size, **kwargs)
                guard.check()
            except (ValueError, DoesNotFit) as err:
                rows.append({"case": case.name, "mode": "batched", "batch": batch_size,
                             "cache": cache, "error": str(err).splitlines()[0][:200]})  # fmt: skip
                continue
            rows.append({"case": case.name, "mode": "batched", "batch": batch_size,
                         "cache": cache, "seconds": seconds})  # fmt: skip
    for row in rows:
        if "seconds" in row:
            row.update(samples_per_s=n / row["seconds"], tokens_per_s=n * tokens / row["seconds"],
                       speedup=loop / row["seconds"], peak_gib=peak_gib(device))  # fmt: skip
        record(row)
    model = None  # let the model go before the next case
    freed()


RUNNERS = {"train": train_case, "trainer": trainer_case, "generate": generate_case}


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown tables of ``docs/benchmarks.md``: training, then generation."""
    train = [r for r in rows if "mode" not in r]
    best = {}
    for r in train:
        if r.get("fits"):
            key = r["case"].removeprefix("trainer-")
            kind = "trainer" if r["case"].startswith("trainer-") else "ours"
            best[key, kind] = max(best.get((key, kind), 0.0), r["samples_per_s"])
    lines = [
        "| case | batch | act. ckpt | samples/s | tokens/s | peak GiB | plan GiB | TFLOP/sample "
        "| MFU | vs best Trainer |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in train:
        ckpt = "on" if r["checkpointing"] else "off"
        if not r.get("fits"):
            lines.append(f"| {r['case']} | {r['batch']} | {ckpt} | does not fit | | | | | | |")
            continue
        base = best.get((r["case"], "trainer"))
        ratio = f"{r['samples_per_s'] / base:.2f}x" if base and "trainer" not in r["case"] else "-"
        mfu = r.get("mfu")
        lines.append(
            f"| {r['case']} | {r['batch']} | {ckpt} | {r['samples_per_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {_fmt(r.get('peak_gib'), '.1f')} | "
            f"{_fmt(r.get('plan_gib'), '.1f')} | {_fmt(r.get('tflop_per_sample'), '.2f')} | "
            f"{'-' if mfu is None else f'{100 * mfu:.0f}%'} | {ratio} |"
        )
    gen_rows = [r for r in rows if "mode" in r]
    if gen_rows:
        lines += ["", "| generation | batch | cache | samples/s | new tokens/s | vs loop |",
                  "| --- | ---: | --- | ---: | ---: | ---: |"]  # fmt: skip
        for r in gen_rows:
            if "error" in r:
                lines.append(f"| {r['mode']} | {r['batch']} | {r['cache']} | {r['error']} | | |")
                continue
            lines.append(
                f"| {r['mode']} | {r['batch']} | {r['cache']} | {r['samples_per_s']:.2f} | "
                f"{r['tokens_per_s']:.0f} | {r['speedup']:.1f}x |"
            )
    return "\n".join(lines) + "\n"


def environment(device: torch.device) -> dict[str, Any]:
    import transformers

    try:
        import peft

        peft_version = peft.__version__
    except ImportError:
        peft_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {
        "device": name or platform.machine(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "peft": peft_version,
        "python": platform.python_version(),
        "command": " ".join(["python", *sys.argv]),
    }


def peak_flops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf * 1e12 for frag, tf in PEAK_TFLOPS if frag in name), None)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="results.json and table.md go here")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (a check)")
    ap.add_argument("--only", nargs="+", help="case names (default: all)")
    ap.add_argument("--steps", type=int, help="timed steps per setting (default 5; dry run 1)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 2; dry run 1)")
    ap.add_argument("--report-tokens", type=int, help="report length (default 300; dry 16)")
    ap.add_argument("--new-tokens", type=int, help="generated tokens (default 64; dry 4)")
    ap.add_argument("--prompts", type=int, help="generation prompts (default 32; dry 4)")
    ap.add_argument("--attn", help="attention implementation (sdpa, eager, flash_attention_2)")
    ap.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (MFU)")
    ap.add_argument("--budget-s", type=float, default=450.0,
                    help="start no new case after this many seconds (default 450)")  # fmt: skip
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    dry = args.dry_run
    if not dry and not torch.cuda.is_available():
        ap.error("no CUDA device: run on a GPU, or --dry-run for the tiny CPU check")
    device = torch.device("cpu" if dry else "cuda")
    settings = Settings(
        steps=args.steps or (1 if dry else 5),
        warmup=args.warmup if args.warmup is not None else (1 if dry else 2),
        report_tokens=args.report_tokens or (16 if dry else 300),
        image_size=64 if dry else 1024,
        new_tokens=args.new_tokens or (4 if dry else 64),
        prompts=args.prompts or (4 if dry else 32),
        attn=args.attn,
        peak_tflops=args.peak_tflops,
    )
    cases = [c for c in (TINY if dry else REAL) if not args.only or c.name in args.only]
    if args.only and len(cases) != len(args.only):
        known = ", ".join(c.name for c in REAL)
        ap.error(f"--only: unknown case in {args.only}; known: {known}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, texts = phantom_inputs(out, 8, settings.image_size)
    ctx = {"settings": settings, "device": device, "images": images, "texts": texts,
           "out": out, "peak_flops": peak_flops(device, args.peak_tflops), "flops": {}}  # fmt: skip
    result: dict[str, Any] = {"environment": environment(device), "settings":
                              dataclasses.asdict(settings), "rows": []}  # fmt: skip

    def record(row: dict[str, Any]) -> None:
        logger.info("%s", json.dumps(row))
        result["rows"].append(row)
        _write(out, result)

    start = time.perf_counter()
    for case in cases:
        if time.perf_counter() - start > args.budget_s:
            result.setdefault("skipped", []).append(case.name)
            logger.warning("%s skipped: the %.0f s budget is spent", case.name, args.budget_s)
            continue
        logger.info("case %s (%s)", case.name, case.size)
        RUNNERS[case.kind](case, ctx, record)
    result["seconds"] = time.perf_counter() - start
    _write(out, result)
    print(table(result["rows"]), end="")
    return 0


def _write(out: Path, result: dict[str, Any]) -> None:
    """Both files, each written whole (a temporary file renamed)."""
    for name, text in (("results.json", json.dumps(result, indent=1)),
                       ("table.md", table(result["rows"]))):  # fmt: skip
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)


if __name__ == "__main__":
    raise SystemExit(main())
