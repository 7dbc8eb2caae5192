"""The plan of a training run: parameters, steps and per-GPU memory of each stage, before it runs.

``radixpert train RECIPE --dry-run`` prints it; a real launch whose estimate exceeds the card
is refused before training (``check_fits``)::

    from radixpert.train.plan import format_plan, plan_recipe
    from radixpert.train.recipe import load_recipe

    recipe = load_recipe("msa_lora", data_root="/data/radiology")
    plan = plan_recipe(recipe, gpus=8, gpu_memory=parse_memory("80GB"), strategy="zero3")
    logging.getLogger(__name__).info("%s", format_plan(plan))

The model comes from a factory (default ``radixpert.models.families.meta_model``: the recipe's
model on the meta device), so nothing is allocated. Each stage's trainability is applied to it
as the runner does (MSA-LoRA: the adapter merged, a fresh one of the next rank started).

What is exact and what is not:

* weights, gradients and AdamW state are exact for one GPU (a test measures them byte for
  byte). The precision policy: frozen parameters stay in the dtype the model holds them in;
  trainable ones (LoRA, connector, fully trained components) are fp32, so each costs 4 bytes of
  weight, 4 of gradient and 8 of AdamW moments; AdamW adds one fp32 ``step`` scalar per tensor.
  DeepSpeed's bf16 mode (16-bit weights and gradients, fp32 master copy and moments) also
  costs 16 bytes per trainable parameter, though split differently.
* sharding (DDP replicates; ZeRO-2 shards gradients and optimiser state over the GPUs; ZeRO-3
  and FSDP full shard also shard the weights) divides by the GPU count, rounded up; real
  shards are padded a little more.
* communication buffers are approximate: DDP keeps its gradient buckets beside the gradients
  (torch's default ``gradient_as_bucket_view=False``: one more copy); ZeRO-2 reduces the
  gradients of one layer at a time; ZeRO-3 and FSDP gather the full weights of one layer (or of
  the unwrapped remainder: embeddings, head) and reduce its gradients. Prefetching and bucket
  sizes add to this.
* activations are approximate: Korthikanti et al. 2022, "Reducing Activation Recomputation
  in Large Transformer Models" (arXiv:2205.05198), Sec. 4.1: a transformer layer stores
  ``s*b*h*(34 + 5*a*s/h)`` bytes at 16-bit without recomputation (s sequence, b micro-batch,
  h width, a heads), and ``2*s*b*h`` (its input) with full activation checkpointing, plus one
  layer's activations recomputed during the backward pass. The formula assumes a 4h GELU MLP
  with dropout; SwiGLU MLPs of other widths differ. With SDPA or flash attention the
  ``5*a*s/h`` term (the attention matrix) is not stored and is dropped. The language model's
  logits (in the compute dtype and in fp32 for the loss) are added. A frozen vision tower
  stores nothing (no input of it needs a gradient); the connector's and the chat template's
  tokens are not counted.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from radixpert.errors import RecipeError, UsageError
from radixpert.train.recipe import ModelSpec, Recipe, Stage

logger = logging.getLogger(__name__)

__all__ = [
    "ASSUMED_IMAGES",
    "ASSUMED_TEXT_TOKENS",
    "STRATEGIES",
    "MemoryEstimate",
    "Plan",
    "StagePlan",
    "check_fits",
    "cuda_memory",
    "estimate_memory",
    "format_plan",
    "human_bytes",
    "parse_memory",
    "plan_recipe",
    "strategy_from_env",
]

STRATEGIES: tuple[str, ...] = ("ddp", "fsdp", "zero2", "zero3")
ASSUMED_TEXT_TOKENS = 512
"""Text tokens per example assumed when a stage's data files are missing."""
ASSUMED_IMAGES = 1
"""Images per example assumed when a stage's data files are missing."""
WORDS_TO_TOKENS = 1.3
"""Approximate subword tokens per whitespace-separated word (no tokenizer at hand)."""

TRAINABLE_BYTES = 4  # trainable parameters, their gradients and each AdamW moment are fp32
ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq
ADAMW_STEP_BYTES = 4  # torch AdamW's per-tensor `step`: a 0-d fp32 tensor
_ACT_BYTES = {"no": 4, "fp16": 2, "bf16": 2}

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_MEMORY = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_memory(text: str) -> int:
    """Bytes of a size written as ``80GB``, ``80GiB``, ``141GB``, ``1MB`` or a plain number.

    Raises:
        UsageError: The text is not a number with a known unit (named).
    """
    match = _MEMORY.match(text)
    unit = (match.group(2).lower() or "b") if match else ""
    if not match or unit not in _UNITS:
        raise UsageError(
            f"--gpu-memory: {text!r} is not a size such as 80GB, 80GiB or 141GB "
            f"(units: {', '.join(u.upper().replace('I', 'i') for u in _UNITS)})"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units: ``1.50 GiB``, ``12.0 MiB``, ``512 B``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def cuda_memory() -> int | None:
    """Bytes of the current CUDA device, or None without one (the default card)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return int(torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory)


def strategy_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The strategy ``accelerate launch`` set up: fsdp, zero2/zero3 or ddp (the default)."""
    env = os.environ if environ is None else environ
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return "zero3" if env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3" else "zero2"
    return "ddp"


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU of one stage under one strategy.

    Attributes:
        strategy: "ddp", "fsdp", "zero2" or "zero3".
        gpus: GPUs the run is spread over.
        weights: Parameters (exact; sharded under fsdp and zero3).
        gradients: Gradients of the trainable parameters (exact; sharded except under ddp).
        optimizer: AdamW state (exact; sharded except under ddp).
        buffers: The model's buffers (rotary tables, position ids), on every GPU.
        communication: Gradient buckets (ddp) or one layer gathered / reduced (approximate).
        activations: Stored activations of one micro-batch without checkpointing (approximate).
        activations_checkpointed: The same with full activation checkpointing (approximate).
        gradient_checkpointing: Whether the stage checkpoints (which activations ``peak`` uses).
    """

    strategy: str
    gpus: int
    weights: int
    gradients: int
    optimizer: int
    buffers: int
    communication: int
    activations: int
    activations_checkpointed: int
    gradient_checkpointing: bool

    def peak_with(self, checkpointing: bool) -> int:
        """Total bytes per GPU with or without activation checkpointing."""
        act = self.activations_checkpointed if checkpointing else self.activations
        state = self.weights + self.gradients + self.optimizer
        return state + self.buffers + self.communication + act

    @property
    def peak(self) -> int:
        """Total bytes per GPU with the stage's own checkpointing setting."""
        return self.peak_with(self.gradient_checkpointing)


def _parameters(model: Any) -> list[tuple[str, Any]]:
    from radixpert.models.families import unwrap

    return list(unwrap(model).named_parameters())  # tied weights once


def _weight_bytes(param: Any) -> int:
    size = TRAINABLE_BYTES if param.requires_grad else param.element_size()
    return param.numel() * size


def _state_bytes(model: Any) -> tuple[int, int, int]:
    """Exact (weights, gradients, AdamW state) bytes of the whole model on one device."""
    params = [p for _, p in _parameters(model)]
    trainable = [p for p in params if p.requires_grad]
    weights = sum(_weight_bytes(p) for p in params)
    grads = sum(p.numel() * TRAINABLE_BYTES for p in trainable)
    optim = sum(p.numel() * TRAINABLE_BYTES * ADAMW_MOMENTS + ADAMW_STEP_BYTES for p in trainable)
    return weights, grads, optim


def _layer_bytes(model: Any) -> tuple[int, int, int]:
    """(weights, gradients) of the largest layer (an item of a ``ModuleList``) and the weights
    of what lies outside every layer (embeddings, head, norms)."""
    from torch import nn

    from radixpert.models.families import unwrap

    base = unwrap(model)
    layers = [m for m in base.modules() if isinstance(m, nn.ModuleList)]
    items = [item for ml in layers for item in ml]
    inside = {id(p) for item in items for p in item.parameters()}
    largest_w = largest_g = 0
    for item in items:
        ps = list(item.parameters())
        largest_w = max(largest_w, sum(_weight_bytes(p) for p in ps))
        largest_g = max(largest_g, sum(p.numel() * TRAINABLE_BYTES for p in ps if p.requires_grad))
    rest = sum(_weight_bytes(p) for p in base.parameters() if id(p) not in inside)
    return largest_w, largest_g, rest


def _shard(n: int, gpus: int) -> int:
    return -(-n // gpus)


@dataclasses.dataclass(frozen=True)
class _Stack:
    """A transformer stack whose activations count: layers of width ``hidden`` over ``seq``
    tokens, ``batch`` sequences per micro-batch."""

    layers: int
    hidden: int
    heads: int
    seq: int
    batch: int
    quadratic: bool  # eager attention stores the s x s attention matrix


def _korthikanti(stack: _Stack, act_bytes: int) -> tuple[int, int]:
    """(stored bytes without recomputation, with full checkpointing) of ``stack``.

    Korthikanti et al. 2022 (arXiv:2205.05198) Sec. 4.1, eq. (1): per layer
    ``s*b*h*(34 + 5*a*s/h)`` bytes at 16-bit; Sec. 5: full recomputation stores ``2*s*b*h`` per
    layer. One layer's activations are live again while it is recomputed in the backward pass.
    """
    s, b, h, a = stack.seq, stack.batch, stack.hidden, stack.heads
    per_layer = s * b * h * 34 + (5 * a * s * s * b if stack.quadratic else 0)
    scale = act_bytes / 2  # the formula counts 16-bit values
    full = int(per_layer * stack.layers * scale)
    checkpointed = int((2 * s * b * h * stack.layers + per_layer) * scale)
    return full, checkpointed


def _trains(model: Any, component: str) -> bool:
    from radixpert.models.families import components_of
    from radixpert.models.trainability import _component_of

    prefixes = components_of(model)
    return any(
        p.requires_grad and _component_of(n, prefixes) == component for n, p in _parameters(model)
    )


def _eager(config: Any) -> bool:
    return getattr(config, "_attn_implementation", None) == "eager"


def image_tokens_per_image(model: Any) -> int:
    """Tokens one image adds to the language model's sequence, read from the model config.

    llava: ``image_seq_length``; llava-onevision: the base view, the AnyRes tiles the processor
    makes of a square image and their row-end tokens (transformers' own unpadding); mllama and
    radscribe: 0 (images enter through cross-attention or the joint encoder).
    """
    from radixpert.models.families import family_of, unwrap

    family = family_of(model)
    config = unwrap(model).config if family != "radscribe" else None
    if family == "llava":
        return int(config.image_seq_length)
    if family != "llava_onevision":
        return 0
    import torch
    from transformers.models.llava_onevision.modeling_llava_onevision import unpad_image

    vision = config.vision_config
    size, p = int(vision.image_size), int(vision.image_size) // int(vision.patch_size)
    tile_rows, tile_cols = _onevision_tiles(config)
    grid = torch.empty(1, tile_rows * p, tile_cols * p, device="meta")
    height, width = unpad_image(grid, torch.tensor([size, size])).shape[1:]
    most = int(config.vision_aspect_ratio.removeprefix("anyres_max_"))
    ratio = math.sqrt(height * width / (most * p * p))
    if ratio > 1.1:
        height, width = int(height // ratio), int(width // ratio)
    return p * p + height * (width + 1)  # base view, then the tiles with a newline per row


def _onevision_tiles(config: Any) -> tuple[int, int]:
    """(rows, columns) of AnyRes tiles the processor cuts a square image into: the pinpoint
    ``select_best_resolution`` picks for an image of the tower's size."""
    from transformers.image_processing_utils import select_best_resolution

    size = int(config.vision_config.image_size)
    pinpoints = [tuple(x) for x in config.image_grid_pinpoints]
    height, width = select_best_resolution((size, size), pinpoints)
    return int(height) // size, int(width) // size


def _vision_stack(config: Any, batch: int, views: int, quadratic: bool) -> _Stack:
    patches = (int(config.image_size) // int(config.patch_size)) ** 2
    cls = 0 if config.model_type.startswith("siglip") else 1
    return _Stack(
        int(config.num_hidden_layers),
        int(config.hidden_size),
        int(config.num_attention_heads),
        patches + cls,
        batch * views,
        quadratic,
    )


def _activations(model: Any, stage: Stage, seq_len: int, images_per_sample: int) -> tuple[int, int]:
    """(without, with checkpointing) activation bytes of one micro-batch (see module doc)."""
    from radixpert.models.families import family_of, unwrap

    family = family_of(model)
    base = unwrap(model)
    b, act = stage.batch_size, _ACT_BYTES[stage.mixed_precision]
    images = b * images_per_sample
    vision_trains = _trains(model, "vision_tower")
    stacks: list[_Stack] = []
    extra = 0
    if family == "radscribe":
        backbone, joint, t5 = base.backbone.config, base.joint.config, base.t5.config
        image_seq = 0
        if hasattr(backbone, "patch_size"):
            vit = _vision_stack(backbone, images, 1, _eager(backbone))
            image_seq = vit.seq * images_per_sample
            if vision_trains:
                stacks.append(vit)
        heads = int(joint.num_attention_heads)
        if vision_trains or _trains(model, "connector"):  # else the joint encoder keeps none
            stacks.append(
                _Stack(
                    int(joint.num_hidden_layers),
                    int(joint.hidden_size),
                    heads,
                    image_seq + seq_len + 2,
                    b,
                    _eager(joint),
                )
            )
        layers = int(t5.num_decoder_layers or t5.num_layers)
        stacks.append(_Stack(layers, int(t5.d_model), int(t5.num_heads), seq_len, b, _eager(t5)))
        vocab = int(t5.vocab_size)
        text_seq = seq_len
    else:
        config = base.config
        text, vision = config.text_config, config.vision_config
        text_seq = seq_len + images_per_sample * image_tokens_per_image(model)
        if family == "mllama":
            patches = (int(vision.image_size) // int(vision.patch_size)) ** 2 + 1
            patches += (8 - patches % 8) % 8  # MllamaVisionModel pads patches to a multiple of 8
            if vision_trains:
                stacks.append(
                    _Stack(
                        int(vision.num_hidden_layers) + int(vision.num_global_layers),
                        int(vision.hidden_size),
                        int(vision.attention_heads),
                        patches,
                        images * int(vision.max_num_tiles),
                        _eager(vision),
                    )
                )
            # Cross-attention keys and values over every image token, per cross layer.
            kv = images * int(vision.max_num_tiles) * patches * int(text.hidden_size) * 2
            extra += len(text.cross_attention_layers) * kv * act
        elif vision_trains:
            views = 1
            if family == "llava_onevision":  # the base view and its tiles
                views = 1 + math.prod(_onevision_tiles(config))
            stacks.append(_vision_stack(vision, images, views, _eager(vision)))
        stacks.append(
            _Stack(
                int(text.num_hidden_layers),
                int(text.hidden_size),
                int(text.num_attention_heads),
                text_seq,
                b,
                _eager(text),
            )
        )
        vocab = int(text.vocab_size)
    logits = b * text_seq * vocab * (act + 4)  # in the compute dtype, and fp32 for the loss
    parts = [_korthikanti(s, act) for s in stacks]
    return (
        sum(p[0] for p in parts) + extra + logits,
        sum(p[1] for p in parts) + extra + logits,
    )


def estimate_memory(
    model: Any,
    stage: Stage,
    *,
    gpus: int,
    strategy: str,
    seq_len: int,
    images_per_sample: int,
) -> MemoryEstimate:
    """Per-GPU memory of training ``stage`` on ``model`` (see the module doc for what is exact).

    Args:
        model: The model with the stage's trainability applied (``requires_grad`` says what
            trains); on the meta device or real, plain or peft-wrapped.
        stage: The stage (micro-batch size, mixed precision, gradient checkpointing).
        gpus: GPUs the run is spread over.
        strategy: "ddp", "fsdp" (full shard), "zero2" or "zero3".
        seq_len: Text tokens of the longest example (image tokens are added from the model
            config where images enter the sequence).
        images_per_sample: Images of that example.

    Returns:
        The estimate; ``.peak`` is the total.
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy: unknown {strategy!r}; known: {', '.join(STRATEGIES)}")
    if gpus < 1:
        raise UsageError(f"--gpus: must be >= 1, got {gpus}")
    weights, grads, optim = _state_bytes(model)
    from radixpert.models.families import unwrap

    buffers = sum(b.numel() * b.element_size() for b in unwrap(model).buffers())
    layer_w, layer_g, rest = _layer_bytes(model)
    if strategy == "ddp":
        comm = grads if gpus > 1 else 0  # accelerate wraps no DDP around a single process
    else:
        grads, optim = _shard(grads, gpus), _shard(optim, gpus)
        comm = layer_g
        if strategy in ("fsdp", "zero3"):
            weights = _shard(weights, gpus)
            comm += max(layer_w, rest)
    act, act_ckpt = _activations(model, stage, seq_len, images_per_sample)
    return MemoryEstimate(
        strategy, gpus, weights, grads, optim, buffers, comm, act, act_ckpt,
        stage.gradient_checkpointing,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# The plan of a recipe
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """One stage of the plan.

    Attributes:
        stage: The stage.
        parameters: ``parameter_report`` rows (per component, then "all").
        conversations: Training conversations, or None when the data is missing.
        steps: Optimiser steps, or None when they depend on missing data.
        seq_len: Text tokens of the longest example (measured or assumed).
        images_per_sample: Images of that example.
        image_tokens: Tokens each image adds to the language model's sequence.
        mean_tokens: Mean tokens per example (text and image tokens).
        tokens_per_step: Mean tokens per optimiser step over all GPUs.
        how: How the lengths were found (tokenizer, words x 1.3, or the assumption).
        missing: Data files of the stage that do not exist.
        memory: An estimate per strategy.
    """

    stage: Stage
    parameters: list[dict[str, Any]]
    conversations: int | None
    steps: int | None
    seq_len: int
    images_per_sample: int
    image_tokens: int
    mean_tokens: float
    tokens_per_step: float
    how: str
    missing: tuple[str, ...]
    memory: Mapping[str, MemoryEstimate]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The plan of a recipe: its stages, the strategy and GPUs, and the card."""

    recipe: Recipe
    gpus: int
    strategy: str
    gpu_memory: int | None
    stages: tuple[StagePlan, ...]

    @property
    def peak(self) -> int:
        """The largest per-GPU peak of any stage under the chosen strategy."""
        return max(s.memory[self.strategy].peak for s in self.stages)

    @property
    def missing(self) -> list[str]:
        """Every missing data file, as "stage NAME: studies file PATH does not exist"."""
        return [
            f"stage {s.stage.name}: studies file {path} does not exist"
            for s in self.stages
            for path in s.missing
        ]


def _default_factory(spec: ModelSpec) -> Any:
    from radixpert.models import families

    meta_model = getattr(families, "meta_model", None)
    if meta_model is None:
        raise RecipeError(
            "model: radixpert.models.families.meta_model is not available to build the plan"
        )
    return meta_model(spec)


def _text_counter(spec: ModelSpec) -> tuple[Callable[[str], int], str]:
    """Counts text tokens: the recipe's tokenizer when it is a local folder, else words x 1.3."""
    if spec.tokenizer is not None and Path(spec.tokenizer).is_dir():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
        return (
            lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]),
            f"tokenizer {Path(spec.tokenizer).name}",
        )
    return (
        lambda text: math.ceil(len(text.split()) * WORDS_TO_TOKENS),
        f"words x {WORDS_TO_TOKENS:g}",
    )


def _lengths(conversations: Sequence[Any], count: Callable[[str], int]) -> list[tuple[int, int]]:
    """(text tokens, images) of each conversation; ``<image>`` placeholders are not text."""
    from radixpert.instruct.conversation import IMAGE_TOKEN

    return [
        (
            sum(count(t["value"].replace(IMAGE_TOKEN, " ")) for t in c.conversations),
            len(c.image),
        )
        for c in conversations
    ]


def _plan_stage(
    recipe: Recipe,
    stage: Stage,
    model: Any,
    count: Callable[[str], int],
    how: str,
    gpus: int,
) -> StagePlan:
    from radixpert.models.families import components_of
    from radixpert.models.trainability import parameter_report
    from radixpert.train.loop import total_steps
    from radixpert.train.runner import stage_conversations

    missing = tuple(s.studies for s in stage.data.sources if not Path(s.studies).is_file())
    image_tokens = image_tokens_per_image(model)
    n_conv = steps = None
    if missing:
        seq_len, images, how = ASSUMED_TEXT_TOKENS, ASSUMED_IMAGES, "assumed: data missing"
        mean = float(seq_len + images * image_tokens)
        if stage.max_steps is not None:
            steps = stage.max_steps
    else:
        lengths = _lengths(stage_conversations(stage, seed=recipe.seed), count)
        if not lengths:
            raise RecipeError(f"stage {stage.name}: no training conversations in its sources")
        n_conv = len(lengths)
        seq_len, images = max(lengths, key=lambda t: t[0] + t[1] * image_tokens)
        mean = sum(t + i * image_tokens for t, i in lengths) / n_conv
        steps = total_steps(stage, math.ceil(n_conv / (stage.batch_size * gpus)))
    memory = {
        s: estimate_memory(
            model, stage, gpus=gpus, strategy=s, seq_len=seq_len, images_per_sample=images
        )
        for s in STRATEGIES
    }
    return StagePlan(
        stage=stage,
        parameters=parameter_report(model, components_of(model)),
        conversations=n_conv,
        steps=steps,
        seq_len=seq_len,
        images_per_sample=images,
        image_tokens=image_tokens,
        mean_tokens=mean,
        tokens_per_step=mean * stage.batch_size * stage.grad_accum * gpus,
        how=how,
        missing=missing,
        memory=memory,
    )


def plan_recipe(
    recipe: Recipe,
    *,
    gpus: int = 1,
    gpu_memory: int | None = None,
    strategy: str = "ddp",
    model_factory: Callable[[ModelSpec], Any] | None = None,
) -> Plan:
    """The plan of every stage of ``recipe``.

    Args:
        recipe: A validated recipe.
        gpus: GPUs the run is spread over (the global batch is ``batch_size x gpus``).
        gpu_memory: Bytes of one card, or None for no card check.
        strategy: "ddp", "fsdp", "zero2" or "zero3": the one ``check_fits`` compares.
        model_factory: ``f(model_spec) -> nn.Module``, the recipe's model (default
            ``radixpert.models.families.meta_model``, on the meta device).

    Returns:
        The plan; missing data files are listed in ``plan.missing`` (their stages use the
        declared assumption ``ASSUMED_TEXT_TOKENS``, ``ASSUMED_IMAGES``).
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"--strategy: unknown {strategy!r}; known: {', '.join(STRATEGIES)}")
    if gpus < 1:
        raise UsageError(f"--gpus: must be >= 1, got {gpus}")
    model = (model_factory or _default_factory)(recipe.model)
    from radixpert.train.runner import apply_stage  # what the run will do, stage by stage

    count, how = _text_counter(recipe.model)
    stages = []
    for stage in recipe.stages:
        model = apply_stage(model, stage)
        stages.append(_plan_stage(recipe, stage, model, count, how, gpus))
    return Plan(recipe, gpus, strategy, gpu_memory, tuple(stages))


# --------------------------------------------------------------------------------------------
# Text and the card check
# --------------------------------------------------------------------------------------------

_ROWS = (
    ("weights", "weights"),
    ("gradients", "gradients"),
    ("optimizer", "AdamW state"),
    ("buffers", "buffers"),
    ("communication", "communication"),
    ("activations", "activations"),
    ("activations_checkpointed", "activations (ckpt)"),
)


def _stage_text(plan: Plan, index: int, sp: StagePlan) -> list[str]:
    from radixpert.models.trainability import format_parameter_report

    stage = sp.stage
    global_batch = stage.batch_size * plan.gpus
    steps = "? (data missing)" if sp.steps is None else f"{sp.steps:,}"
    convs = "data missing" if sp.conversations is None else f"{sp.conversations:,} conversations"
    lines = [
        f"stage {index + 1}/{len(plan.stages)} {stage.name}: {convs}, {steps} steps "
        f"(global batch {global_batch} = {stage.batch_size} x {plan.gpus} GPU, "
        f"grad_accum {stage.grad_accum})",
        f"  sequence: longest {sp.seq_len:,} text tokens + {sp.images_per_sample} image(s) "
        + (
            f"x {sp.image_tokens} tokens"
            if sp.image_tokens
            else "(not in the sequence: cross-attention or joint encoder)"
        )
        + f" ({sp.how}); mean {sp.mean_tokens:,.0f} tokens per example; "
        f"~{sp.tokens_per_step:,.0f} tokens per step",
        *("  " + line for line in format_parameter_report(sp.parameters).splitlines()),
        f"  memory per GPU, {plan.gpus} GPU, precision {stage.mixed_precision} (* = --strategy):",
        "  "
        + f"{'':<20}"
        + "".join(f"{s + ('*' if s == plan.strategy else ''):>13}" for s in STRATEGIES),
    ]
    for key, label in _ROWS:
        cells = "".join(f"{human_bytes(getattr(sp.memory[s], key)):>13}" for s in STRATEGIES)
        lines.append(f"  {label:<20}{cells}")
    ckpt = "on" if stage.gradient_checkpointing else "off"
    cells = "".join(f"{human_bytes(sp.memory[s].peak):>13}" for s in STRATEGIES)
    lines.append(f"  {'peak (ckpt ' + ckpt + ')':<20}{cells}")
    return lines


def format_plan(plan: Plan) -> str:
    """The plan as text: per stage its steps, lengths, parameters and memory table, then the
    peak per GPU against the card."""
    card = "no card check"
    if plan.gpu_memory is not None:
        card = f"card {human_bytes(plan.gpu_memory)} ({plan.gpu_memory / 1e9:.1f} GB)"
    lines = [
        f"plan of {plan.recipe.name} v{plan.recipe.version}: {plan.gpus} GPU, strategy "
        f"{plan.strategy}, {card}"
    ]
    for i, sp in enumerate(plan.stages):
        lines += _stage_text(plan, i, sp)
    verdict = ""
    if plan.gpu_memory is not None:
        verdict = " - fits" if plan.peak <= plan.gpu_memory else " - EXCEEDS the card"
        verdict = f" of {human_bytes(plan.gpu_memory)}{verdict}"
    lines.append(f"peak per GPU ({plan.strategy}): {human_bytes(plan.peak)}{verdict}")
    lines.append(
        "(weights, gradients and AdamW state exact; communication and activations "
        "approximate: Korthikanti et al. 2022)"
    )
    if getattr(plan.recipe.model, "quantize", None):
        lines.append(
            f"(model.quantize={plan.recipe.model.quantize}: the frozen base is loaded quantized, "
            "which this estimate does not model; its frozen weights count in the dtype the "
            "shape-only model holds them in, an upper bound)"
        )
    return "\n".join(lines)


def check_fits(plan: Plan) -> None:
    """Refuses a launch whose estimate exceeds the card, naming the knobs to turn.

    Raises:
        UsageError: A stage's peak under the plan's strategy exceeds ``plan.gpu_memory``.
    """
    if plan.gpu_memory is None:
        return
    over = [s for s in plan.stages if s.memory[plan.strategy].peak > plan.gpu_memory]
    if not over:
        return
    sp = max(over, key=lambda s: s.memory[plan.strategy].peak)
    est, name = sp.memory[plan.strategy], sp.stage.name
    knobs = [f"batch_size (stages.{name}.batch_size={max(1, sp.stage.batch_size // 2)})"]
    if not sp.stage.gradient_checkpointing:
        knobs.append(
            f"gradient_checkpointing (stages.{name}.gradient_checkpointing=true: "
            f"{human_bytes(est.peak_with(True))})"
        )
    sharded = [f"{s} {human_bytes(sp.memory[s].peak)}" for s in STRATEGIES if s != plan.strategy]
    knobs += [
        f"ZeRO stage / FSDP (--strategy with its accelerate config: {', '.join(sharded)})",
        "QLoRA (model.quantize=4bit: a pretrained base loaded in 4 bits)",
        f"gpus (--gpus, now {plan.gpus}; sharded strategies divide weights and state)",
    ]
    raise UsageError(
        f"stage {name} needs about {human_bytes(est.peak)} per GPU ({plan.strategy}, "
        f"{plan.gpus} GPU) but the card has {human_bytes(plan.gpu_memory)}; turn a knob: "
        f"{'; '.join(knobs)}; or --force to launch anyway"
    )
