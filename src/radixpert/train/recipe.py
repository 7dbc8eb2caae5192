"""Training recipes: a run's model and stages as data in YAML, loaded with strict validation.

A recipe (a YAML file; the shipped ones are in ``radixpert/configs/recipes``) names the model
and lists the stages; each stage says what data it reads, which component trains how (frozen,
LoRA or full, see ``radixpert.models.trainability``), and the optimiser, schedule and loop
settings::

    from radixpert.train.recipe import describe, load_recipe

    recipe = load_recipe(
        "msa_lora",  # a shipped recipe by name, or the path of a YAML file
        overrides=["stages.stage2.optimizer.lr=5e-5", "stages.0.max_steps=10"],
        data_root="/data/radiology",
    )
    logging.getLogger(__name__).info("%s", describe(recipe))

Validation is strict: an unknown key, a value of the wrong type or one outside its allowed set
raises ``RecipeError`` naming the file and the dotted key path (``stages.1.optimizer.lr``).

Overrides are ``"dotted.key=value"`` strings applied to the YAML before validation:

* the value is parsed as a YAML scalar with ``yaml.safe_load`` (``3``, ``2e-4``, ``true``,
  ``null``, ``[0.9, 0.95]``, ``bf16``); nothing is evaluated as Python;
* a key segment into the ``stages`` list is either an index (``stages.0.batch_size=2``) or a
  stage name (``stages.stage2.optimizer.lr=1e-4``);
* a missing mapping on the way is created (``stages.0.early_stopping.patience=5``), and the
  result is validated like the file itself, so a misspelt key is still an error.

Data paths are written relative to a data root, ``"${data}/roco_v2/train.jsonl"``; ``${data}``
is expanded at load from the ``data_root`` argument, else from the recipe's ``data_root`` key
(settable by override, ``data_root=/data``). A recipe that uses ``${data}`` with neither is an
error, as is any absolute path written in the file.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from radixpert.errors import RecipeError, UnknownName
from radixpert.models.spec import HCFOptions, ModelSpec
from radixpert.models.trainability import COMPONENT_NAMES, DEFAULT_LORA_TARGETS, ComponentSpec
from radixpert.paths import configs_dir
from radixpert.vocab import TASKS

logger = logging.getLogger(__name__)

__all__ = [
    "ComponentTraining",
    "DataMixture",
    "DataSource",
    "EarlyStopping",
    "GRPOSettings",
    "HCFOptions",
    "ModelSpec",
    "Optimizer",
    "Recipe",
    "RecipeError",
    "Schedule",
    "Stage",
    "Trainability",
    "apply_overrides",
    "describe",
    "load_recipe",
    "recipe_path",
    "shipped_recipes_dir",
]

_VARIABLE = re.compile(r"\$\{([^}]*)\}")
# PyYAML follows YAML 1.1, where "2e-4" (no dot) is a string; recipes write learning rates so.
_FLOAT = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
    r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.inf|\.Inf|\.INF|\.nan|\.NaN|\.NAN)$"
)


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-5`` (no dot) as a float."""


# YAML 1.1 also reads yes/no/on/off as booleans, so `mixed_precision: no` would be False;
# like YAML 1.2, only true/false are booleans here.
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_Loader.yaml_implicit_resolvers = {
    k: [
        (tag, rx)
        for tag, rx in v
        if tag not in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:bool")
    ]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("tTfF"))


def _positive(value: float | None, name: str) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


@dataclasses.dataclass(frozen=True)
class DataSource:
    """One study file in a mixture.

    Args:
        studies: Path of a ``studies.jsonl``, normally ``"${data}/..."``.
        weight: Relative sampling weight of the source.
        repeat: How many times the source is repeated per epoch.
    """

    studies: str
    weight: float = 1.0
    repeat: int = 1

    def __post_init__(self) -> None:
        _positive(self.weight, "weight")
        _positive(self.repeat, "repeat")


@dataclasses.dataclass(frozen=True)
class DataMixture:
    """What a stage trains on: sources, the task mixture over them and the split.

    Args:
        sources: The study files.
        tasks: Task name (``TASKS``) to relative weight.
        split: Which split of the sources to read.
    """

    sources: tuple[DataSource, ...]
    tasks: Mapping[str, float] = dataclasses.field(default_factory=lambda: {"report": 1.0})
    split: Literal["train", "validate", "test"] = "train"

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources: at least one source is needed")
        if not self.tasks:
            raise ValueError("tasks: at least one task is needed")
        for task, weight in self.tasks.items():
            if task not in TASKS:
                raise ValueError(f"tasks.{task}: unknown task; known: {', '.join(TASKS)}")
            _positive(weight, f"tasks.{task}")


@dataclasses.dataclass(frozen=True)
class ComponentTraining:
    """How one component trains in a stage (see ``ComponentSpec``), and its learning rate.

    Args:
        mode: "frozen", "lora" or "full".
        rank: LoRA rank.
        alpha: LoRA alpha; None means 2 * rank.
        dropout: LoRA dropout.
        lr: This component's learning rate; None means the stage optimiser's ``lr``.
        target_modules: LoRA only: the layers given adapters, a list of leaf names (default
            q/k/v/o), ``all-linear``, or a regex of module paths below the component (see
            ``ComponentSpec``).
    """

    mode: Literal["frozen", "lora", "full"] = "frozen"
    rank: int = 64
    alpha: float | None = None
    dropout: float = 0.1
    lr: float | None = None
    target_modules: tuple[str, ...] | str = DEFAULT_LORA_TARGETS

    def __post_init__(self) -> None:
        self.spec()  # ComponentSpec checks rank, dropout and the targets
        _positive(self.lr, "lr")
        if self.mode != "lora" and self.target_modules != DEFAULT_LORA_TARGETS:
            raise ValueError(f"target_modules: only for mode lora, not {self.mode}")

    def spec(self) -> ComponentSpec:
        """The ``ComponentSpec`` for ``radixpert.models.trainability.apply_trainability``."""
        return ComponentSpec(
            self.mode,
            rank=self.rank,
            alpha=self.alpha,
            dropout=self.dropout,
            target_modules=self.target_modules,
        )


@dataclasses.dataclass(frozen=True)
class Trainability:
    """The setting of each component: vision tower, connector, language model."""

    vision_tower: ComponentTraining = ComponentTraining()
    connector: ComponentTraining = ComponentTraining()
    language_model: ComponentTraining = ComponentTraining()

    def __post_init__(self) -> None:
        lora = {
            (c.rank, c.alpha, c.dropout) for c in self.components().values() if c.mode == "lora"
        }
        if len(lora) > 1:
            raise ValueError(f"all LoRA components must share rank, alpha and dropout, got {lora}")
        if all(c.mode == "frozen" for c in self.components().values()):
            raise ValueError("every component is frozen; nothing would train")

    def components(self) -> dict[str, ComponentTraining]:
        """Component name to setting, in ``COMPONENT_NAMES`` order."""
        return {name: getattr(self, name) for name in COMPONENT_NAMES}


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optimiser of a stage.

    Args:
        name: Only "adamw".
        lr: Learning rate of every component without its own ``lr``.
        betas: AdamW betas.
        weight_decay: Decoupled weight decay.
        eps: AdamW epsilon.
    """

    name: Literal["adamw"] = "adamw"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8

    def __post_init__(self) -> None:
        _positive(self.lr, "lr")
        _positive(self.eps, "eps")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Learning-rate schedule: warmup for ``warmup_ratio`` of the steps, then ``name``."""

    name: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    """Stop when ``metric`` has not improved for ``patience`` evaluations."""

    patience: int
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        _positive(self.patience, "patience")


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """The ``grpo`` objective's settings (``radixpert.train.grpo``).

    Args:
        group_size: Reports sampled per prompt; advantages are relative to the group.
        rewards: Reward name to weight (``radixpert.train.rewards.REWARD_NAMES``): an
            example's reward is the weighted mean of the rewards that apply to its task.
        kl_coef: Coefficient of the KL penalty to the stage's starting model (0: none).
        max_new_tokens: Longest sampled answer; one that runs out is ``truncated``.
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass (1: off).
        top_k: Top-k sampling (0: off).
        scale_rewards: Divide the group-centred rewards by the group's standard deviation.
        max_length_ratio: An answer longer than this many times its reference (in words) is
            penalised in proportion to the excess (guard against padding a report).
        length_penalty: Penalty of an answer twice the allowed length (and more).
        truncation_penalty: Penalty of an answer that reached ``max_new_tokens``.
        repetition_ngram: Word n-grams counted for the repetition guard.
        repetition_threshold: Share of repeated n-grams tolerated before the penalty.
        repetition_penalty: Penalty of an answer made of repeats only.
    """

    group_size: int = 8
    rewards: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"findings-f1": 1.0, "format": 0.1}
    )
    kl_coef: float = 0.04
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    scale_rewards: bool = True
    max_length_ratio: float = 2.0
    length_penalty: float = 0.5
    truncation_penalty: float = 0.5
    repetition_ngram: int = 3
    repetition_threshold: float = 0.2
    repetition_penalty: float = 0.5

    def __post_init__(self) -> None:
        from radixpert.train.rewards import check_reward_names

        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages need a group), got "
                             f"{self.group_size}")  # fmt: skip
        for key in ("max_new_tokens", "temperature", "max_length_ratio", "repetition_ngram"):
            _positive(getattr(self, key), key)
        for key in ("kl_coef", "length_penalty", "truncation_penalty", "repetition_penalty"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.repetition_threshold < 1:
            raise ValueError(
                f"repetition_threshold must be in [0, 1), got {self.repetition_threshold}"
            )
        if not self.rewards:
            raise ValueError("rewards: at least one reward is needed")
        for name, weight in self.rewards.items():
            _positive(weight, f"rewards.{name}")
        try:
            check_reward_names(self.rewards)
        except UnknownName as err:
            raise ValueError(str(err)) from None


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage.

    Args:
        name: Unique within the recipe, not all digits (overrides address stages by name).
        data: The data mixture.
        trainability: Each component's mode, LoRA settings and learning rate.
        optimizer: The optimiser.
        schedule: The learning-rate schedule.
        epochs: Passes over the data; exactly one of epochs and max_steps.
        max_steps: Optimiser steps.
        batch_size: Examples per micro-batch.
        grad_accum: Micro-batches per optimiser step.
        grad_clip: Gradient-norm clip; None for none.
        mixed_precision: "no", "fp16" or "bf16".
        early_stopping: Early stopping on a validation metric, or None.
        eval_every: Steps between evaluations; None evaluates once per epoch.
        eval_metric: A report metric (a ``radixpert evaluate`` name, e.g. "bleu", "rouge-l",
            "f1-chexpert") computed at each evaluation on reports generated for the held-out
            report conversations; its values are logged (``val_<name>``) and can drive early
            stopping.
        save_every: Steps between checkpoints; None saves at the end of the stage.
        objective: "lm" (next-token loss), "contrastive" (image-report, LLaVA-Rad stage 1) or
            "grpo" (group-relative policy optimisation on rewards, ``grpo`` settings).
        grpo: The ``grpo`` objective's settings (defaults when omitted); only with it.
        input: "image+prompt", or "image_only" (the prompt is dropped; LLaVA-Rad alignment).
        prompt_fields: Study fields put in the prompt, e.g. ["indication"].
        family_stage: The family's own stage switch, for RadScribe "decoder" / "end_to_end"
            (``radixpert.models.encoder_decoder.set_stage``), which freezes the joint encoder
            inside the connector while the label branch trains.
        gradient_checkpointing: Recompute activations in the backward pass (less memory).
    """

    name: str
    data: DataMixture
    trainability: Trainability
    optimizer: Optimizer = Optimizer()
    schedule: Schedule = Schedule()
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    early_stopping: EarlyStopping | None = None
    eval_every: int | None = None
    eval_metric: str | None = None
    save_every: int | None = None
    objective: Literal["lm", "contrastive", "grpo"] = "lm"
    grpo: GRPOSettings | None = None
    input: Literal["image+prompt", "image_only"] = "image+prompt"
    prompt_fields: tuple[str, ...] = ()
    family_stage: Literal["decoder", "end_to_end"] | None = None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if not self.name or self.name.isdigit() or "." in self.name or "=" in self.name:
            raise ValueError(f"name: {self.name!r} must be non-empty, not all digits, no '.' '='")
        if (self.epochs is None) == (self.max_steps is None):
            raise ValueError("give exactly one of epochs and max_steps")
        for key in ("epochs", "max_steps", "batch_size", "grad_accum", "grad_clip"):
            _positive(getattr(self, key), key)
        for key in ("eval_every", "save_every"):
            _positive(getattr(self, key), key)
        if self.eval_metric is not None and self.objective != "lm":
            raise ValueError("eval_metric: only a language-model stage writes reports")
        if self.grpo is not None and self.objective != "grpo":
            raise ValueError(f"grpo: settings for the grpo objective, not {self.objective!r}")
        if self.input == "image_only" and self.prompt_fields:
            raise ValueError("prompt_fields: an image_only stage has no prompt")

    def lr(self, component: str) -> float:
        """The learning rate of ``component``: its own ``lr`` or the optimiser's."""
        own = getattr(self.trainability, component).lr
        return self.optimizer.lr if own is None else own

    def component_specs(self) -> dict[str, ComponentSpec]:
        """The stage's ``ComponentSpec`` per component, for ``apply_trainability``."""
        return {name: c.spec() for name, c in self.trainability.components().items()}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A training run: the model and its stages, in order.

    Args:
        name: The recipe's name.
        version: Bumped whenever the recipe changes what it trains, so runs compare.
        model: The model.
        stages: The stages, run in order.
        seed: Random seed of the run.
        output_dir: Relative output folder (under the artifact root, ``RADIXPERT_HOME``).
        data_root: What ``${data}`` expands to; usually given at load, not in the file.
        description: Free text, e.g. the paper followed.
    """

    name: str
    version: int
    model: ModelSpec
    stages: tuple[Stage, ...]
    seed: int = 0
    output_dir: str = "runs"
    data_root: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("stages: at least one stage is needed")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: stage names must be unique, got {names}")
        if Path(self.output_dir).is_absolute():
            raise ValueError(f"output_dir: must be relative, got {self.output_dir!r}")
        _positive(self.version, "version")

    def stage(self, name: str) -> Stage:
        """The stage called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise UnknownName(f"no stage {name!r}; stages: {[s.name for s in self.stages]}")


# --------------------------------------------------------------------------------------------
# Building dataclasses from plain data, strictly
# --------------------------------------------------------------------------------------------


def _join(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and built as) type ``tp``; ValueError names ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for inner in options:  # the first alternative the value fits
            try:
                return _convert(value, inner, key)
            except RecipeError as err:
                errors.append(str(err))
        raise RecipeError(errors[0] if len(errors) == 1 else f"{key}: {value!r} fits none of "
                          f"{' | '.join(_type_name(a) for a in options)}")  # fmt: skip
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise RecipeError(f"{key}: {value!r} is not one of {allowed}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], _join(key, i)) for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(f"{key}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, _join(key, i)) for i, (v, a) in enumerate(zip(value, args)))
    if origin in (Mapping, dict):
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return {
            _convert(k, args[0], key): _convert(v, args[1], _join(key, k)) for k, v in value.items()
        }
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise RecipeError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: Any, key: str) -> Any:
    """An instance of dataclass ``cls`` from mapping ``data``; unknown or missing keys fail."""
    what = key or "recipe"
    if not isinstance(data, dict):
        raise RecipeError(f"{what}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise RecipeError(
            f"{_join(key, unknown[0])}: unknown key; {cls.__name__} takes {', '.join(fields)}"
        )
    missing = [
        n
        for n, f in fields.items()
        if n not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(f"{_join(key, missing[0])}: required key is missing")
    kwargs = {k: _convert(v, hints[k], _join(key, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except RecipeError:
        raise
    except (ValueError, TypeError) as err:
        raise RecipeError(f"{what}: {err}") from err


# --------------------------------------------------------------------------------------------
# Overrides, data root, loading
# --------------------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader


def _step(node: Any, segment: str, where: str) -> Any:
    """The index (list) or key (mapping) that ``segment`` addresses in ``node``."""
    if isinstance(node, list):
        if segment.lstrip("-").isdigit():
            index = int(segment)
            if not -len(node) <= index < len(node):
                raise RecipeError(f"{where}: index {index} out of range ({len(node)} items)")
            return index
        matches = [
            i for i, v in enumerate(node) if isinstance(v, dict) and v.get("name") == segment
        ]
        if not matches:
            names = [v.get("name") for v in node if isinstance(v, dict)]
            raise RecipeError(f"{where}: no item named {segment!r}; names: {names}")
        return matches[0]
    if isinstance(node, dict):
        return segment
    raise RecipeError(f"{where}: cannot index into a {type(node).__name__}")


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies ``"dotted.key=value"`` overrides to raw recipe data, in place (see module doc).

    Args:
        data: The recipe as read from YAML.
        overrides: Override strings; list items are addressed by index or by ``name``.

    Returns:
        ``data``.

    Raises:
        RecipeError: An override without ``=``, with an empty key segment, or addressing an
            item that does not exist.
    """
    for override in overrides:
        key, sep, text = override.partition("=")
        segments = key.strip().split(".")
        if not sep or not all(segments):
            raise RecipeError(f"override {override!r}: expected 'dotted.key=value'")
        node: Any = data
        for depth, segment in enumerate(segments):
            where = f"override {override!r}: {'.'.join(segments[: depth + 1])}"
            at = _step(node, segment, where)
            if depth == len(segments) - 1:
                node[at] = _parse_value(text)
            else:
                if isinstance(node, dict) and node.get(at) is None:
                    node[at] = {}
                node = node[at]
        logger.info("override %s", override)
    return data


def _expand(value: str, key: str, data_root: str | None) -> str:
    def sub(match: re.Match[str]) -> str:
        if match.group(1) != "data":
            raise RecipeError(f"{key}: unknown variable ${{{match.group(1)}}}; only ${{data}}")
        if data_root is None:
            raise RecipeError(f"{key}: uses ${{data}} but no data_root was given")
        return data_root.rstrip("/")

    if Path(value).is_absolute():
        raise RecipeError(f"{key}: absolute path {value!r}; write it as '${{data}}/...'")
    return _VARIABLE.sub(sub, value)


def shipped_recipes_dir() -> Path:
    """The recipes shipped in the package (``radixpert/configs/recipes``)."""
    return configs_dir("recipes")


def recipe_path(name_or_path: str | Path) -> Path:
    """A recipe file: ``name_or_path`` if it is a file, else a shipped recipe by name.

    Raises:
        RecipeError: Neither a file nor a shipped recipe (the shipped names are listed).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = shipped_recipes_dir()
    candidate = shipped / f"{path.stem if path.suffix in ('.yaml', '.yml') else path}.yaml"
    if candidate.is_file():
        return candidate
    names = sorted(p.stem for p in shipped.glob("*.yaml")) if shipped.is_dir() else []
    raise RecipeError(f"{name_or_path}: no such recipe file; shipped recipes: {names}")


def load_recipe(
    path: str | Path, overrides: Sequence[str] = (), data_root: str | Path | None = None
) -> Recipe:
    """Reads, overrides and validates a recipe YAML.

    Args:
        path: The recipe file, or the name of a shipped recipe (``recipe_path``).
        overrides: ``"dotted.key=value"`` strings (see the module docstring).
        data_root: What ``${data}`` expands to; when None, the recipe's ``data_root`` key.

    Returns:
        The validated ``Recipe`` with ``${data}`` expanded and ``data_root`` set.

    Raises:
        RecipeError: The file cannot be read or parsed, an override is bad, or a key is
            unknown, missing, of the wrong type or outside its allowed values; the message
            names the file and the dotted key path.
    """
    path = recipe_path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        if not isinstance(data, dict):
            raise RecipeError(f"expected a mapping at the top, got {type(data).__name__}")
        apply_overrides(data, overrides)
        if data_root is not None:
            data["data_root"] = str(data_root)
        root = data.get("data_root")
        if root is not None and not isinstance(root, str):
            raise RecipeError(f"data_root: expected str, got {type(root).__name__} {root!r}")
        model = data.get("model")
        for key in ("pretrained", "tokenizer"):
            value = model.get(key) if isinstance(model, dict) else None
            if isinstance(value, str) and ("${" in value or Path(value).is_absolute()):
                model[key] = _expand(model[key], f"model.{key}", root)
        for i, stage in enumerate(data.get("stages") or []):
            sources = stage.get("data", {}).get("sources") if isinstance(stage, dict) else None
            for j, source in enumerate(sources if isinstance(sources, list) else []):
                if isinstance(source, dict) and isinstance(source.get("studies"), str):
                    key = f"stages.{i}.data.sources.{j}.studies"
                    source["studies"] = _expand(source["studies"], key, root)
        recipe = _build(Recipe, data, "")
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from err
    except (OSError, yaml.YAMLError) as err:
        raise RecipeError(f"{path}: cannot read the recipe: {err}") from err
    logger.info(
        "recipe %s v%d: %d stages from %s", recipe.name, recipe.version, len(recipe.stages), path
    )
    return recipe


# --------------------------------------------------------------------------------------------
# The plan, as text
# --------------------------------------------------------------------------------------------


def _component_text(name: str, c: ComponentTraining, stage: Stage) -> str:
    if c.mode == "frozen":
        return f"{name}=frozen"
    settings = f"lr={stage.lr(name):g}"
    if c.mode == "lora":
        lora = c.spec()
        settings = f"r={lora.rank} alpha={lora.lora_alpha:g} dropout={lora.dropout:g} " + settings
    return f"{name}={c.mode}({settings})"


def _stage_text(index: int, stage: Stage) -> str:
    parts = [
        " ".join(_component_text(n, c, stage) for n, c in stage.trainability.components().items())
    ]
    sources = ", ".join(
        f"{Path(s.studies).parent.name or s.studies}/{Path(s.studies).name} x{s.weight:g}"
        + (f" repeat {s.repeat}" if s.repeat != 1 else "")
        for s in stage.data.sources
    )
    tasks = ", ".join(f"{t}={w:g}" for t, w in stage.data.tasks.items())
    parts.append(f"data [{sources}] tasks [{tasks}] split {stage.data.split}")
    opt = stage.optimizer
    parts.append(
        f"{opt.name} lr {opt.lr:g} betas ({opt.betas[0]:g}, {opt.betas[1]:g})"
        f" wd {opt.weight_decay:g}, {stage.schedule.name} warmup {stage.schedule.warmup_ratio:g}"
    )
    length = f"{stage.epochs} epochs" if stage.epochs is not None else f"{stage.max_steps} steps"
    loop = (
        f"{length}, batch {stage.batch_size}x{stage.grad_accum}, precision {stage.mixed_precision}"
    )
    if stage.grad_clip is not None:
        loop += f", clip {stage.grad_clip:g}"
    if stage.early_stopping is not None:
        es = stage.early_stopping
        loop += f", early stop {es.metric} ({es.mode}) patience {es.patience}"
    parts.append(loop)
    extra = f"objective {stage.objective}, input {stage.input}"
    if stage.objective == "grpo":
        g = stage.grpo or GRPOSettings()
        rewards = ", ".join(f"{k}={v:g}" for k, v in g.rewards.items())
        extra += f" (group {g.group_size}, rewards [{rewards}], kl {g.kl_coef:g})"
    if stage.prompt_fields:
        extra += f" with {', '.join(stage.prompt_fields)}"
    if stage.family_stage:
        extra += f", family stage {stage.family_stage}"
    parts.append(extra)
    return f"  {index}. {stage.name}: " + " | ".join(parts)


def describe(recipe: Recipe) -> str:
    """The training plan as text: the model, then one line per stage.

    Each stage line gives every component's mode (with LoRA rank, alpha, dropout and its
    learning rate), the data, optimiser and schedule, the loop length and settings.
    """
    model = recipe.model
    if model.size is not None:
        what = model.size
    elif model.pretrained is not None:
        what = f"pretrained {model.pretrained}"
    else:
        what = "from " + ", ".join(f"{k} {v}" for k, v in (model.parts or {}).items())
    connector = model.connector or "the family's own"
    if model.hcf is not None:
        connector += f" (levels {model.hcf.levels}, gate {model.hcf.gate})"
    lines = [
        f"recipe {recipe.name} v{recipe.version}: {model.family} {what}, connector {connector}, "
        f"seed {recipe.seed}, output {recipe.output_dir}",
        *(_stage_text(i, s) for i, s in enumerate(recipe.stages)),
    ]
    return "\n".join(lines)
