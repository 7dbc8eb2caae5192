"""Model directories: what train hands to infer (ARCHITECTURE.md, "train -> infer").

A bundle is one directory holding everything needed to run a model exactly as trained::

    save_bundle(model, processor, "runs/x/final", recipe=recipe, training_log=log)
    model, processor = load_bundle("runs/x/final")
    export_merged("runs/x/final", "export/x")   # adapters merged, plain transformers layout

Layout (top level is a transformers model directory, so a merged llava bundle with the ``mlp``
connector loads with ``LlavaForConditionalGeneration.from_pretrained`` as is)::

    config.json, model.safetensors      base weights (adapters merged in, or without them)
    adapter/                            peft LoRA adapter (only with adapters="separate")
    radixpert_processor.json, tokenizer files      the RadProcessor
    recipe.json, training_log.jsonl     how the model was made (when given)
    radixpert_bundle.json               manifest: family, connector, adapters, versions

Every write goes to a temporary sibling directory first, which is renamed into place only
when complete, so a crash never leaves a half-written bundle at ``path``.

Families (``radixpert_bundle.json`` "family", "connector"): ``llava`` (``mlp``/``hcf``, loaded
by ``load_llava``), ``mllama`` (``linear``/``hcf``, by ``load_mllama``), ``llava_onevision``
(``mlp``, by transformers' ``LlavaOnevisionForConditionalGeneration``) and ``radscribe`` (the
image backbone; ``radscribe_config.json`` + ``model.safetensors`` from
``RadScribe.save_pretrained``, its processor with a second tokenizer in
``decoder_tokenizer/``). LoRA adapters are kept separate or merged for every family.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from radixpert.io import atomic_dir
from radixpert.models.processor import RadProcessor
from radixpert.vocab import FAMILIES

logger = logging.getLogger(__name__)

MANIFEST_FILE = "radixpert_bundle.json"
RECIPE_FILE = "recipe.json"
TRAINING_LOG_FILE = "training_log.jsonl"
ADAPTER_DIR = "adapter"
FORMAT = "radixpert.bundle"
FORMAT_VERSION = 1

Adapters = Literal["separate", "merged"]
_VERSIONED = ("radixpert", "torch", "transformers", "peft", "safetensors", "tokenizers")


def _is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _describe(model: Any) -> tuple[str, str | None]:
    """(family, connector) of a model, unwrapping peft (``families.family_of``/``connector_of``).

    Raises:
        ValueError: For a model of no radixpert family.
    """
    from radixpert.models.families import connector_of, family_of

    return family_of(model), connector_of(model)


def _save_separate(model: Any, family: str, tmp: Path) -> None:
    """Base weights (without LoRA) at ``tmp`` and the adapter in ``tmp/adapter``."""
    if family == "radscribe":
        # RadScribe.save_pretrained takes no state dict: save an unloaded (LoRA-free) copy.
        copy.deepcopy(model).unload().save_pretrained(tmp)
    else:
        base = model.get_base_model()
        base.save_pretrained(tmp, state_dict=_base_state_dict(model))
    model.save_pretrained(tmp / ADAPTER_DIR)


def _load_base(family: str, path: Path, **kwargs: Any) -> Any:
    """The family's base model from a bundle directory (``families.load_saved``)."""
    from radixpert.models.families import load_saved

    return load_saved(family, path, **kwargs)


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    """Installed version of each package (None where it is not installed)."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _versions() -> dict[str, str | None]:
    return package_versions(_VERSIONED)


def _base_state_dict(peft_model: Any) -> dict[str, Any]:
    """The base model's weights under a peft wrapper, LoRA weights left out, original names."""
    state = peft_model.get_base_model().state_dict()
    out = {}
    for name, tensor in state.items():
        if ".lora_" in name:
            continue
        out[name.replace(".base_layer.", ".")] = tensor
    return out


def save_bundle(
    model: Any,
    processor: RadProcessor,
    path: str | Path,
    recipe: dict[str, Any] | None = None,
    training_log: list[dict[str, Any]] | None = None,
    adapters: Adapters = "separate",
) -> Path:
    """Writes a model directory (see the module docstring), atomically.

    Args:
        model: A llava, mllama (plain or HCF), llava-onevision or RadScribe model, or a
            ``peft.PeftModel`` around one (from ``apply_trainability``).
        processor: Its ``RadProcessor``.
        path: The bundle directory; replaced if it exists.
        recipe: The training recipe (written as ``recipe.json``).
        training_log: One dict per logged step (written as ``training_log.jsonl``).
        adapters: ``"separate"`` keeps a LoRA adapter in ``adapter/`` beside the base weights;
            ``"merged"`` folds it into the weights (on a copy: ``model`` is left unchanged).
            Without adapters both write the plain weights.

    Returns:
        The bundle path.

    Raises:
        ValueError: For an unknown ``adapters`` value or an unsupported model family.
    """
    if adapters not in ("separate", "merged"):
        raise ValueError(f"adapters must be 'separate' or 'merged', got {adapters!r}")
    family, connector = _describe(model)
    path = Path(path)
    has_adapter = _is_peft(model)
    with atomic_dir(path) as tmp:
        if has_adapter and adapters == "separate":
            _save_separate(model, family, tmp)
        elif has_adapter:
            copy.deepcopy(model).merge_and_unload().save_pretrained(tmp)
        else:
            model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if recipe is not None:
            (tmp / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
        if training_log is not None:
            lines = "".join(json.dumps(row) + "\n" for row in training_log)
            (tmp / TRAINING_LOG_FILE).write_text(lines, encoding="utf-8")
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "family": family,
            "connector": connector,
            "adapters": (adapters if has_adapter else "none"),
            "model_class": type(model.get_base_model() if has_adapter else model).__name__,
            "versions": _versions(),
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    logger.info("saved %s bundle (%s, adapters=%s) to %s", family, connector, adapters, path)
    return path


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The ``radixpert_bundle.json`` of a bundle.

    Raises:
        FileNotFoundError: If ``path`` is not a bundle.
        ValueError: If the bundle's format is not one this version reads.
    """
    manifest = json.loads((Path(path) / MANIFEST_FILE).read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')} "
            f"is not {FORMAT!r} v{FORMAT_VERSION}"
        )
    return manifest


def load_bundle(path: str | Path, **kwargs: Any) -> tuple[Any, RadProcessor]:
    """Loads ``(model, processor)`` from a bundle, in eval mode.

    Args:
        path: A directory written by ``save_bundle``.
        **kwargs: Passed to the model's ``from_pretrained`` (e.g. ``dtype``).

    Returns:
        The model (a ``peft.PeftModel`` when the adapter was saved separately) and its
        processor.

    Raises:
        ValueError: For an unknown family or format.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if manifest["family"] not in FAMILIES:
        raise ValueError(f"{path}: unsupported family {manifest['family']!r}")
    model = _load_base(manifest["family"], path, **kwargs)
    if manifest["adapters"] == "separate":
        from peft import PeftModel

        from radixpert.models.trainability import peft_quietly

        with peft_quietly():
            model = PeftModel.from_pretrained(model, path / ADAPTER_DIR)
    model.eval()
    processor = RadProcessor.from_pretrained(path)
    if processor.config.family != "radscribe":
        from radixpert.models.families import connector_of

        # Bundles written before processors returned prompt_mask: an HCF model needs it.
        processor.config.prompt_mask = connector_of(model) == "hcf"
    return model, processor


def export_merged(path_in: str | Path, path_out: str | Path) -> Path:
    """Writes a bundle with its adapter merged: a plain transformers model directory.

    Recipe, training log and processor are carried over. For llava's ``mlp`` connector the
    result loads with ``LlavaForConditionalGeneration.from_pretrained`` (plain mllama and
    llava-onevision likewise with their transformers classes).

    Returns:
        ``path_out``.
    """
    path_in = Path(path_in)
    model, processor = load_bundle(path_in)
    if _is_peft(model):
        model = model.merge_and_unload()
    recipe_file = path_in / RECIPE_FILE
    log_file = path_in / TRAINING_LOG_FILE
    recipe = json.loads(recipe_file.read_text(encoding="utf-8")) if recipe_file.exists() else None
    log = None
    if log_file.exists():
        lines = log_file.read_text(encoding="utf-8").splitlines()
        log = [json.loads(line) for line in lines if line.strip()]
    return save_bundle(model, processor, path_out, recipe, log, adapters="merged")


__all__ = [
    "ADAPTER_DIR",
    "MANIFEST_FILE",
    "RECIPE_FILE",
    "TRAINING_LOG_FILE",
    "export_merged",
    "load_bundle",
    "read_manifest",
    "save_bundle",
]
