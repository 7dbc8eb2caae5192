"""``radixpert model export``: a bundle as a folder that plain transformers (and vLLM/SGLang) loads.

    export_for_serving("runs/x/final", "export/x")
    # then, in any process with transformers only:
    model = AutoModelForImageTextToText.from_pretrained("export/x")   # HCF: trust_remote_code=True
    processor = AutoProcessor.from_pretrained("export/x")
    export_for_serving("runs/x/final", "export/x-lora", adapter_only=True)   # vLLM --lora-modules

The full export writes the model with its LoRA adapter merged (safetensors), its config, a
``generation_config.json`` (bos/eos/pad from the tokenizer, greedy), and the transformers
processor that reproduces the bundle's ``RadProcessor``: LlavaProcessor (LlavaImageProcessor:
pad to square, resize, normalise), MllamaProcessor or LlavaOnevisionProcessor, with a Jinja chat
template that renders exactly the RadProcessor's prompt. A RadProcessor that uses its
checkpoint's own image processor or chat template ("native") exports those as they are.

HCF models carry their code: ``hcf_modeling.py`` is copied in as ``modeling_radixpert_hcf.py``
and named by ``auto_map`` in ``config.json`` (load with ``trust_remote_code=True``). RadScribe,
radixpert's own encoder-decoder, carries its model and processor code likewise
(``radscribe_export``). Which of the three a bundle gets is the family registry's
``Family.export``.

The adapter-only export writes peft's layout (``adapter_config.json``,
``adapter_model.safetensors``) whose ``base_model_name_or_path`` is ``base`` or the recipe's
pretrained checkpoint. Images: for a square image the letterbox is a plain resize, so the
pixels agree with the RadProcessor's (to float precision at the tower's size; within one grey
level when resized, as transformers resizes 8-bit images in 8 bits); a non-square image is
padded with the mean colour (LlavaImageProcessor) instead of black, and Mllama tiles large
images (docs/models.md, "Export for serving").
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from radixpert.errors import UsageError
from radixpert.io import atomic_dir
from radixpert.models import hcf_modeling
from radixpert.models.bundle import ADAPTER_DIR, RECIPE_FILE, load_bundle, read_manifest
from radixpert.models.families import connector_of, family_of, get_family
from radixpert.models.processor import IMAGE_PLACEHOLDER, VICUNA_SYSTEM, RadProcessor
from radixpert.models.radscribe_export import write_radscribe

logger = logging.getLogger(__name__)

HCF_MODULE_FILE = "modeling_radixpert_hcf.py"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_HCF_CLASSES = {
    hcf_modeling.LLAVA_HCF_MODEL_TYPE: ("HCFLlavaConfig", "HCFLlavaForConditionalGeneration"),
    hcf_modeling.MLLAMA_HCF_MODEL_TYPE: ("HCFMllamaConfig", "HCFMllamaForConditionalGeneration"),
}


def export_for_serving(
    bundle: str | Path, out: str | Path, adapter_only: bool = False, base: str | None = None
) -> Path:
    """Writes a serving folder for a bundle (see the module docstring), atomically.

    Args:
        bundle: A folder written by ``save_bundle``.
        out: The folder to write; replaced if it exists.
        adapter_only: Write only the LoRA adapter, in peft's layout.
        base: Adapter-only: the ``base_model_name_or_path`` to record (a folder or hub id holding
            the bundle's base weights); default: the recipe's ``model.pretrained``.

    Returns:
        ``out``.

    Raises:
        UsageError: For a model whose family and connector have no serving format (the
            registry's ``Family.export``), an adapter-only export of a bundle without a
            separate adapter, or one whose base cannot be named.
    """
    bundle, out = Path(bundle), Path(out)
    manifest = read_manifest(bundle)
    if adapter_only:
        return _export_adapter(bundle, out, manifest, base)
    model, processor = load_bundle(bundle)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    family, connector = family_of(model), connector_of(model)
    how = get_family(family).export.get(connector or "")
    if how is None:
        raise UsageError(
            f"{bundle}: a {family} model with connector {connector!r} has no serving format"
        )
    with atomic_dir(out) as tmp:
        if how == "radscribe-remote-code":
            write_radscribe(model, processor, tmp)
        else:
            _open_clip_tower_as_vit(model)
            hf_processor = hf_processor_for(model, processor)
            model.generation_config = generation_config_for(processor)
            model.save_pretrained(tmp)  # safetensors
            hf_processor.save_pretrained(tmp)
            if how == "hcf-remote-code":
                _add_hcf_code(tmp, model.config.model_type)
        if (bundle / RECIPE_FILE).is_file():
            shutil.copy2(bundle / RECIPE_FILE, tmp / RECIPE_FILE)
    logger.info("exported %s (%s) for serving to %s", bundle, manifest["family"], out)
    return out


def _open_clip_tower_as_vit(model: Any) -> None:
    """An open_clip (BiomedCLIP) tower becomes transformers' ``ViTModel``, in place.

    LLaVA-Rad trains BiomedCLIP's timm ViT as radixpert's ``OpenClipVisionModel``, which plain
    transformers does not know; the same weights as a ``ViTModel`` (``to_transformers_vit``)
    give the same hidden states, so the exported Llava needs neither open_clip nor remote code.
    """
    from radixpert.models.open_clip_tower import OpenClipVisionModel, to_transformers_vit

    inner = getattr(model, "model", None)
    tower = getattr(inner, "vision_tower", None)
    if not isinstance(tower, OpenClipVisionModel):
        return
    try:
        vit = to_transformers_vit(tower)
    except ValueError as e:
        raise UsageError(f"cannot export the open_clip image tower: {e}") from None
    inner.vision_tower = vit
    model.config.vision_config = vit.config
    logger.info("open_clip tower %s exported as transformers' ViTModel",
                tower.config.open_clip_name)  # fmt: skip


def _add_hcf_code(folder: Path, model_type: str) -> None:
    """Copies the HCF module in and names it in ``config.json``'s ``auto_map``."""
    shutil.copy2(Path(hcf_modeling.__file__), folder / HCF_MODULE_FILE)
    config_class, model_class = _HCF_CLASSES[model_type]
    module = HCF_MODULE_FILE.removesuffix(".py")
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["auto_map"] = {
        "AutoConfig": f"{module}.{config_class}",
        "AutoModelForImageTextToText": f"{module}.{model_class}",
    }
    config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _export_adapter(bundle: Path, out: Path, manifest: dict[str, Any], base: str | None) -> Path:
    adapter = bundle / ADAPTER_DIR
    if manifest.get("adapters") != "separate" or not adapter.is_dir():
        raise UsageError(
            f"{bundle}: no separate LoRA adapter (adapters={manifest.get('adapters')!r}); "
            "export the whole model instead (without --adapter-only)"
        )
    recipe = _read_recipe(bundle)
    if base is None:
        full = _trained_in_full(recipe)
        if full:
            raise UsageError(
                f"{bundle}: the recipe trained {', '.join(full)} in full, so those weights are in "
                "the bundle's base, not in the adapter or the pretrained checkpoint; export the "
                "whole model, or pass --base with a model folder that holds them"
            )
        pretrained = (recipe.get("model") or {}).get("pretrained")
        if not isinstance(pretrained, str):
            raise UsageError(
                f"{bundle}/{RECIPE_FILE}: no model.pretrained to name as the adapter's base; "
                "pass --base (a model folder or hub id)"
            )
        base = pretrained
    with atomic_dir(out) as tmp:
        for name in ADAPTER_FILES:
            if not (adapter / name).is_file():
                raise UsageError(f"{adapter / name}: missing from the bundle's adapter")
            shutil.copy2(adapter / name, tmp / name)
        config_file = tmp / ADAPTER_FILES[0]
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = base
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    logger.info("exported the LoRA adapter of %s (base %s) to %s", bundle, base, out)
    return out


def _read_recipe(bundle: Path) -> dict[str, Any]:
    path = bundle / RECIPE_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _trained_in_full(recipe: dict[str, Any]) -> list[str]:
    """Components that some stage of the recipe trains in full (mode ``"full"``)."""
    found: list[str] = []
    for stage in recipe.get("stages") or []:
        for component, spec in (stage.get("trainability") or {}).items():
            if isinstance(spec, dict) and spec.get("mode") == "full" and component not in found:
                found.append(component)
    return found


# ---------------------------------------------------------------------- generation config


def _token_id(tokenizer: Any, token: str) -> int | None:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        return None
    return int(token_id)


def generation_config_for(processor: RadProcessor) -> Any:
    """Greedy decoding that stops where the RadProcessor's answers end.

    eos: the tokenizer's eos, plus ``<|eot_id|>`` for the llama3 template (each answer ends
    with it); pad: the tokenizer's pad (else eos); bos: the tokenizer's.
    """
    from transformers import GenerationConfig

    tok = processor.tokenizer
    eos: list[int] = [] if tok.eos_token_id is None else [int(tok.eos_token_id)]
    if processor.config.template == "llama3":
        eot = _token_id(tok, "<|eot_id|>")
        if eot is not None and eot not in eos:
            eos.append(eot)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else None)
    return GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=eos[0] if len(eos) == 1 else (eos or None),
        pad_token_id=pad,
        do_sample=False,
    )


# ---------------------------------------------------------------------- chat template


def _literal(text: str) -> str:
    """A Jinja string literal for ``text`` (JSON's escapes are Jinja's)."""
    return json.dumps(text, ensure_ascii=True)


def chat_template_for(processor: RadProcessor) -> str:
    """The Jinja chat template that renders the RadProcessor's prompt.

    Messages are ``{"role": "system"|"user"|"assistant", "content": str | [parts]}``; an
    ``{"type": "image"}`` part renders as the image token and a newline (what the RadProcessor
    puts before a prompt given images without placeholders); ``<image>`` inside text is the
    image token too. A first system message replaces the processor's system prompt. A native
    RadProcessor's template is the checkpoint's own, returned as it is.
    """
    cfg = processor.config
    if cfg.template == "native":
        return cfg.chat_template
    image = _literal(cfg.image_token)
    content = (
        "{%- macro render(content) -%}"
        "{%- if content is string -%}"
        f"{{{{ content | replace({_literal(IMAGE_PLACEHOLDER)}, {image}) }}}}"
        "{%- else -%}{%- for part in content -%}"
        f"{{%- if part.type == 'image' -%}}{{{{ {_literal(cfg.image_token + chr(10))} }}}}"
        "{%- elif part.type == 'text' -%}"
        f"{{{{ part.text | replace({_literal(IMAGE_PLACEHOLDER)}, {image}) }}}}"
        "{%- else -%}{{ raise_exception('unsupported content part ' ~ part.type) }}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
    )
    check = (
        "{%- for message in messages -%}"
        "{%- if message.role == 'system' and not loop.first -%}"
        "{{ raise_exception('a system message must come first') }}"
        "{%- elif message.role not in ('system', 'user', 'assistant') -%}"
        "{{ raise_exception('unknown role ' ~ message.role) }}{%- endif -%}{%- endfor -%}"
    )
    if cfg.template == "vicuna":
        default = cfg.system if cfg.system is not None else VICUNA_SYSTEM
        bos = processor.tokenizer.bos_token if processor.tokenizer.bos_token_id is not None else ""
        eos = processor.tokenizer.eos_token or "</s>"
        body = (
            f"{{{{- {_literal(bos)} -}}}}"
            "{%- if messages and messages[0].role == 'system' -%}"
            "{%- set system = render(messages[0].content) -%}"
            f"{{%- else -%}}{{%- set system = {_literal(default)} -%}}{{%- endif -%}}"
            "{%- if system -%}{{ system ~ ' ' }}{%- endif -%}"
            "{%- for message in messages -%}"
            "{%- if message.role == 'user' -%}{{ 'USER: ' ~ render(message.content) }}"
            "{%- elif message.role == 'assistant' -%}"
            f"{{{{ ' ASSISTANT: ' ~ render(message.content) ~ {_literal(eos)} }}}}"
            "{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{ ' ASSISTANT:' }}{%- endif -%}"
        )
    else:
        default = cfg.system or ""

        def header(role: str) -> str:
            return f"<|start_header_id|>{role}<|end_header_id|>\n\n"

        body = (
            "<|begin_of_text|>"
            "{%- if messages and messages[0].role == 'system' -%}"
            "{%- set system = render(messages[0].content) -%}"
            f"{{%- else -%}}{{%- set system = {_literal(default)} -%}}{{%- endif -%}}"
            f"{{%- if system -%}}{{{{ {_literal(header('system'))} }}}}"
            "{{ system }}<|eot_id|>{%- endif -%}"
            "{%- for message in messages -%}"
            "{%- if message.role == 'user' -%}"
            f"{{{{ {_literal(header('user'))} }}}}{{{{ render(message.content) }}}}<|eot_id|>"
            "{%- elif message.role == 'assistant' -%}"
            f"{{{{ {_literal(header('assistant'))} }}}}{{{{ render(message.content) }}}}"
            "<|eot_id|>{%- endif -%}{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ {_literal(header('assistant'))} }}}}"
            "{%- endif -%}"
        )
    return content + check + body


# ---------------------------------------------------------------------- processor


def hf_processor_for(model: Any, processor: RadProcessor) -> Any:
    """The transformers processor equivalent to ``processor`` for ``model`` (see the module
    docstring). A native RadProcessor's checkpoint image processor (``image_transform``
    ``"native"``) and chat template (``template`` ``"native"``) are used as they are.

    Raises:
        UsageError: For a 1-channel RadProcessor (the transformers image processors make RGB)
            or a model whose image-token count the llava processor cannot express.
    """
    from transformers.image_utils import PILImageResampling

    cfg = processor.config
    native = processor.image_processor if cfg.image_transform == "native" else None
    if native is None and cfg.channels != 3:
        raise UsageError(
            "the transformers image processors feed RGB; this RadProcessor feeds 1 channel "
            f"(channels={cfg.channels}): export it with a 3-channel tower"
        )
    tokenizer = copy.deepcopy(processor.tokenizer)
    template = chat_template_for(processor)
    tokenizer.chat_template = template
    size = cfg.image_size
    image_kwargs = {
        "image_mean": list(cfg.image_mean) * (3 // len(cfg.image_mean)),
        "image_std": list(cfg.image_std) * (3 // len(cfg.image_std)),
        "resample": PILImageResampling[cfg.resample.upper()],
        "do_convert_rgb": True,
    }
    config = model.config
    if cfg.family == "mllama":
        from transformers import MllamaImageProcessor, MllamaProcessor

        images = (
            native
            if native is not None
            else MllamaImageProcessor(
                size={"height": size, "width": size},
                max_image_tiles=cfg.max_num_tiles,
                **image_kwargs,
            )
        )
        return MllamaProcessor(images, tokenizer, chat_template=template)
    if cfg.family == "llava_onevision":
        from transformers import (
            LlavaOnevisionImageProcessor,
            LlavaOnevisionProcessor,
            LlavaOnevisionVideoProcessor,
        )

        grid = cfg.grid_pinpoint or [size, size]
        images = (
            native
            if native is not None
            else LlavaOnevisionImageProcessor(
                size={"height": size, "width": size},
                image_grid_pinpoints=[list(grid)],
                **image_kwargs,
            )
        )
        patch = config.vision_config.patch_size
        return LlavaOnevisionProcessor(
            image_processor=images,
            tokenizer=tokenizer,
            # Videos are not a radixpert input; the processor needs one, set like the images.
            video_processor=LlavaOnevisionVideoProcessor(
                size={"height": size, "width": size}, **image_kwargs
            ),
            num_image_tokens=(size // patch) ** 2,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            chat_template=template,
            image_token=cfg.image_token,
            vision_aspect_ratio=config.vision_aspect_ratio,
        )
    from transformers import LlavaImageProcessor, LlavaProcessor

    images = (
        native
        if native is not None
        else LlavaImageProcessor(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            do_pad=True,
            **image_kwargs,
        )
    )
    patch = config.vision_config.patch_size
    strategy = config.vision_feature_select_strategy
    extra = cfg.image_seq_length - (size // patch) ** 2 + (1 if strategy == "default" else 0)
    if extra < 0:
        raise UsageError(
            f"image_seq_length {cfg.image_seq_length} is fewer than the {(size // patch) ** 2} "
            "patches LlavaProcessor counts"
        )
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy=strategy,
        chat_template=template,
        image_token=cfg.image_token,
        num_additional_image_tokens=extra,
    )


__all__ = [
    "ADAPTER_FILES",
    "HCF_MODULE_FILE",
    "chat_template_for",
    "export_for_serving",
    "generation_config_for",
    "hf_processor_for",
]
