"""`radixpert model info NAME`: the component table and the ablation table of a model.

Named sizes are built on the meta device (no memory, no weights), so the 11B model's table
prints in a second on a laptop. The ablation table follows the Radixpert paper's layout:
base / + LoRA / + HCF / + gate, with total and trainable parameters. LoRA counts are exact
(rank × (in + out) for every targeted projection of the language model); HCF counts come
from building the connector itself on the meta device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from radixpert.models.connectors import HCF
from radixpert.models.sizes import SIZES, build_meta
from radixpert.models.trainability import (
    DEFAULT_LORA_TARGETS,
    LLAVA_COMPONENTS,
    MLLAMA_COMPONENTS,
    ONEVISION_COMPONENTS,
    parameter_report,
)


def _prefixes(model: nn.Module) -> dict[str, Any]:
    return {"mllama": MLLAMA_COMPONENTS, "llava_onevision": ONEVISION_COMPONENTS}.get(
        model.config.model_type, LLAVA_COMPONENTS
    )


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
    if cfg.model_type == "mllama":
        # HCF acts on the cross-attention states, which have the projector's output width.
        vision_hidden = cfg.vision_config.vision_output_dim
    else:
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
    hcf, gate = hcf_parameters(model)
    rows = [("base (frozen)", base, 0), (f"+ LoRA r{rank}", base + lora, lora),
            ("+ HCF (equal weights)", base + lora + hcf - gate, lora + hcf - gate),
            ("+ gate", base + lora + hcf, lora + hcf)]  # fmt: skip
    return [
        {"configuration": c, "total": t, "trainable": tr, "percent": 100.0 * tr / t}
        for c, t, tr in rows
    ]


def model_info(name: str, rank: int = 64) -> str:
    """The text `radixpert model info` prints for a named size."""
    if name not in SIZES:
        raise KeyError(f"unknown model size {name!r}; known: {', '.join(SIZES)}")
    model = build_meta(name)
    rows = parameter_report(model, _prefixes(model))
    total = rows[-1]["total"]
    lines = [f"{name} ({type(model).__name__}, built on the meta device: no weights)", "",
             f"{'component':<16} {'parameters':>15} {'share':>8}"]  # fmt: skip
    lines += [
        f"{r['component']:<16} {r['total']:>15,} {100 * r['total'] / total:>7.2f}%" for r in rows
    ]
    lines += ["", f"{'configuration':<24} {'total':>15} {'trainable':>14} {'%':>8}"]
    for r in ablation_rows(model, rank):
        lines.append(
            f"{r['configuration']:<24} {r['total']:>15,} {r['trainable']:>14,} "
            f"{r['percent']:>7.3f}%"
        )
    return "\n".join(lines)
