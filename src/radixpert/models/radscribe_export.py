"""A RadScribe bundle as a folder that plain transformers loads with ``trust_remote_code``.

    export_radscribe(Path("runs/x/final"), Path("export/x"))
    # then, in any process with transformers (and timm for DenseNet) only:
    model = AutoModelForImageTextToText.from_pretrained("export/x", trust_remote_code=True)
    processor = AutoProcessor.from_pretrained("export/x", trust_remote_code=True)
    inputs = processor(images=[radiograph], text=["Indication: cough."])
    report = processor.decode(model.generate(**inputs)[0])

What the folder holds: ``model.safetensors`` and ``config.json`` of
``RadScribeForConditionalGeneration`` (LoRA merged; ``id2label``: the 14 observations of the
label branch), ``generation_config.json`` (greedy, the decoder's start/eos/pad ids, 64 new
tokens as ``RadScribe.generate``), the processor (``processor_config.json`` with the image
settings, the joint tokenizer at the top, the decoder tokenizer in ``decoder_tokenizer/``,
``chat_template.jinja``) and the two modules they need, copied from radixpert:
``modeling_radixpert_radscribe.py`` (``radscribe_modeling``: the model itself, the one copy
radixpert trains) and ``processing_radixpert_radscribe.py`` (``radscribe_processing``), named
by ``auto_map``. Neither imports radixpert.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from radixpert.errors import UsageError
from radixpert.models import radscribe_modeling, radscribe_processing
from radixpert.models.bundle import load_bundle
from radixpert.models.processor import RadProcessor
from radixpert.vocab import OBSERVATIONS

logger = logging.getLogger(__name__)

MODELING_FILE = "modeling_radixpert_radscribe.py"
PROCESSING_FILE = "processing_radixpert_radscribe.py"
MAX_NEW_TOKENS = 64  # RadScribe.generate's default
_MODEL_CLASS = "RadScribeForConditionalGeneration"


def auto_map() -> dict[str, str]:
    """``config.json``'s ``auto_map``: the model classes and the processor."""
    modeling = MODELING_FILE.removesuffix(".py")
    model = f"{modeling}.{_MODEL_CLASS}"
    return {
        "AutoConfig": f"{modeling}.RadScribeConfig",
        "AutoModel": model,
        "AutoModelForImageTextToText": model,
        "AutoProcessor": f"{PROCESSING_FILE.removesuffix('.py')}.RadScribeProcessor",
    }


def generation_config_for(model: radscribe_modeling.RadScribe) -> Any:
    """Greedy decoding that gives ``RadScribe.generate``'s tokens: the decoder's start, eos
    and pad ids (after eos a sequence is padded), ``MAX_NEW_TOKENS`` new tokens."""
    from transformers import GenerationConfig

    t5 = model.t5.config
    return GenerationConfig(
        decoder_start_token_id=int(t5.decoder_start_token_id),
        eos_token_id=None if t5.eos_token_id is None else t5.eos_token_id,
        pad_token_id=None if t5.pad_token_id is None else int(t5.pad_token_id),
        do_sample=False,
        num_beams=1,
        max_new_tokens=MAX_NEW_TOKENS,
    )


def hf_processor_for(processor: RadProcessor) -> Any:
    """The ``RadScribeProcessor`` equivalent to a RadScribe ``RadProcessor``.

    Raises:
        UsageError: For a RadProcessor of another family or with a native image transform.
    """
    cfg = processor.config
    if cfg.family != "radscribe" or processor.decoder_tokenizer is None:
        raise UsageError(f"not a RadScribe processor (family {cfg.family!r})")
    if cfg.image_transform != "letterbox":
        raise UsageError(
            f"a RadScribe processor letterboxes; image_transform {cfg.image_transform!r} has no "
            "RadScribe export"
        )
    images = radscribe_processing.RadScribeImageProcessor(
        image_size=cfg.image_size,
        image_mean=cfg.image_mean,
        image_std=cfg.image_std,
        channels=cfg.channels,
        resample=cfg.resample,
    )
    return radscribe_processing.RadScribeProcessor(
        images,
        processor.tokenizer,
        processor.decoder_tokenizer,
        max_length=cfg.max_length,
        image_token=cfg.image_token,
    )


def _add_auto_map(path: Path, entries: dict[str, str], key: str | None = None) -> None:
    """Adds ``entries`` to the ``auto_map`` of a JSON file (of its ``key`` object if given)."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    target = payload if key is None else payload.get(key)
    if not isinstance(target, dict):
        raise UsageError(f"{path}: no {key!r} object to name the remote code in")
    target.setdefault("auto_map", {}).update(entries)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def export_radscribe(bundle: Path, tmp: Path) -> None:
    """Writes the serving folder of a RadScribe bundle (see the module docstring) into ``tmp``.

    Args:
        bundle: A folder written by ``save_bundle`` for a RadScribe model.
        tmp: The (existing, empty) folder to write into; the caller makes it atomic.

    Raises:
        UsageError: When the bundle's model is not a RadScribe, or its processor not a
            letterbox RadScribe processor.
    """
    bundle = Path(bundle)
    model, processor = load_bundle(bundle)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if not isinstance(model, radscribe_modeling.RadScribe):
        raise UsageError(f"{bundle}: not a RadScribe bundle ({type(model).__name__})")
    write_radscribe(model, processor, Path(tmp))
    logger.info("exported RadScribe bundle %s (%s) to %s", bundle, model.image_backbone, tmp)


def write_radscribe(
    model: radscribe_modeling.RadScribe, processor: RadProcessor, tmp: Path
) -> None:
    """Writes a (merged) RadScribe and its processor as the serving folder, into ``tmp``."""
    hf_processor = hf_processor_for(processor)
    wrapped = radscribe_modeling.RadScribeForConditionalGeneration.from_radscribe(
        model.eval(), id2label=dict(enumerate(OBSERVATIONS))
    )
    wrapped.generation_config = generation_config_for(model)
    wrapped.save_pretrained(tmp)  # safetensors, config.json, generation_config.json
    hf_processor.save_pretrained(tmp)
    shutil.copy2(Path(radscribe_modeling.__file__), tmp / MODELING_FILE)
    shutil.copy2(Path(radscribe_processing.__file__), tmp / PROCESSING_FILE)
    _add_auto_map(tmp / "config.json", auto_map())
    processing = PROCESSING_FILE.removesuffix(".py")
    _add_auto_map(tmp / "processor_config.json",
                  {"AutoProcessor": f"{processing}.RadScribeProcessor"})  # fmt: skip
    _add_auto_map(
        tmp / "processor_config.json",
        {"AutoImageProcessor": f"{processing}.RadScribeImageProcessor"},
        key="image_processor",
    )


__all__ = [
    "MODELING_FILE",
    "PROCESSING_FILE",
    "auto_map",
    "export_radscribe",
    "generation_config_for",
    "hf_processor_for",
    "write_radscribe",
]
