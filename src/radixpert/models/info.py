"""`radixpert model info NAME`: the component table and the ablation table of a model.

Named sizes are built on the meta device (no memory, no weights), so the 11B model's table
prints in a second on a laptop. The ablation table follows the Radixpert paper's layout:
base / + LoRA / + HCF / + gate, with total and trainable parameters. LoRA counts are exact
(rank × (in + out) for every targeted projection of the language model); HCF counts come
from building the connector itself on the meta device.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from radixpert import vocab
from radixpert.errors import UnknownName
from radixpert.models.connectors import HCF
from radixpert.models.sizes import SIZES, build_meta
from radixpert.models.trainability import DEFAULT_LORA_TARGETS, parameter_report


def component_prefixes(model: nn.Module) -> Mapping[str, Any]:
    """The component prefixes of a model's family (``families.components_of``)."""
    from radixpert.models.families import components_of

    return components_of(model)


TINY_NAMES: tuple[str, ...] = tuple(n for n, s in vocab.SIZES.items() if not s.published)
"""The tiny and demo sizes: random weights, built by the family's own builder."""


def _tiny(name: str) -> nn.Module | None:
    """A tiny model of a family, built with random weights by the family's own builder."""
    import importlib

    if name not in TINY_NAMES:
        return None
    size = vocab.SIZES[name]
    module, fn = size.builder.split(":")
    return getattr(importlib.import_module(f"radixpert.models.{module}"), fn)(**size.options)


def _from_config(path: Path | str) -> nn.Module:
    """A model built on the meta device from a saved config.json, a folder holding one, or a
    Hugging Face id in the local cache (only its config is read)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from radixpert.models import llava, mllama

    llava.register_auto_classes()
    mllama.register_auto_classes()
    if isinstance(path, Path) and path.is_file():
        path = path.parent
    cfg = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(cfg)


def _cached_config(name: str) -> nn.Module | None:
    """The model of hub id ``name`` on the meta device if its config is in the cache."""
    if name.count("/") != 1:
        return None
    try:
        return _from_config(name)
    except OSError:
        return None


def lora_parameters(model: nn.Module, rank: int, targets: tuple[str, ...]) -> int:
    """Exact LoRA parameter count on the language model's targeted linear layers."""
    n = 0
    for name, mod in model.named_modules():
        if (
            ".language_model." in f".{name}."
            and isinstance(mod, nn.Linear)
            and name.rsplit(".", 1)[-1] in targets
        ):
            n += rank * (mod.in_features + mod.out_features)
    return n


def hcf_parameters(model: nn.Module, levels: int = 3) -> tuple[int, int]:
    """(all HCF parameters, of which the gate's) for this model's widths."""
    cfg = model.config
    text_hidden = cfg.text_config.hidden_size
    # Each HCF level takes one depth of the vision tower, of the tower's width (for Mllama,
    # one of the layer groups its vision model concatenates into the cross-attention states).
    vision_hidden = cfg.vision_config.hidden_size
    with torch.device("meta"):
        hcf = HCF(vision_hidden, text_hidden, levels=levels)
    total = sum(p.numel() for p in hcf.parameters())
    gate = sum(p.numel() for n, p in hcf.named_parameters() if "gate" in n)
    return total, gate


def ablation_rows(
    model: nn.Module, rank: int = 64, targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
) -> list[dict[str, Any]]:
    base = sum(p.numel() for p in model.parameters())
    lora = lora_parameters(model, rank, targets)
    connector = getattr(getattr(model, "model", None), "multi_modal_projector", None)
    if isinstance(connector, HCF):  # the model already fuses with HCF: count the real one
        hcf = sum(p.numel() for p in connector.parameters())
        gate = sum(p.numel() for n, p in connector.named_parameters() if "gate" in n)
        base -= hcf
    else:
        hcf, gate = hcf_parameters(model)
    rows = [("base (frozen)", base, 0), (f"+ LoRA r{rank}", base + lora, lora),
            ("+ HCF (equal weights)", base + lora + hcf - gate, lora + hcf - gate),
            ("+ gate", base + lora + hcf, lora + hcf)]  # fmt: skip
    return [
        {"configuration": c, "total": t, "trainable": tr, "percent": 100.0 * tr / t}
        for c, t, tr in rows
    ]


def model_info(name: str, rank: int = 64) -> str:
    """The text `radixpert model info` prints for a named size, a tiny family or a config."""
    if name in SIZES:
        model, how = build_meta(name), "built on the meta device: no weights"
    elif (tiny := _tiny(name)) is not None:
        model, how = tiny, "tiny, random weights"
    elif Path(name).exists():
        model, how = _from_config(Path(name)), "from its config, on the meta device"
    elif (model := _cached_config(name)) is not None:
        how = "from its config in the local hub cache, on the meta device"
    else:
        raise UnknownName(
            f"unknown model {name!r}: give a named size ({', '.join(SIZES)}), a "
            f"tiny family ({', '.join(TINY_NAMES)}), a config.json / model folder, a Hugging "
            "Face id in the local cache, or a recipe (`radixpert model info msa_lora`)"
        )
    rows = parameter_report(model, component_prefixes(model))
    total = rows[-1]["total"]
    lines = [f"{name} ({type(model).__name__}, {how})", "",
             f"{'component':<16} {'parameters':>15} {'share':>8}"]  # fmt: skip
    lines += [
        f"{r['component']:<16} {r['total']:>15,} {100 * r['total'] / total:>7.2f}%" for r in rows
    ]
    if not hasattr(model, "config"):
        lines += ["", "(ablation table: for the families with a decoder language model)"]
        return "\n".join(lines)
    lines += ["", f"{'configuration':<24} {'total':>15} {'trainable':>14} {'%':>8}"]
    for r in ablation_rows(model, rank):
        lines.append(
            f"{r['configuration']:<24} {r['total']:>15,} {r['trainable']:>14,} "
            f"{r['percent']:>7.3f}%"
        )
    return "\n".join(lines)
