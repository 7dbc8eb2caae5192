"""Forward + backward step time of each tiny model family, on the CPU.

Batch 2, a 32-token text prompt (plus each family's image tokens), 32 px images; one step is
``zero_grad`` + forward with labels + ``loss.backward()``. Reports the median of ``--steps``
steps after ``--warmup`` warm-up steps, as a markdown table on stdout. Families whose module
is missing (mllama, onevision) are skipped. One torch thread by default: models this small
are dominated by thread synchronisation, and on a shared 2-core machine two threads made a
step 50-100x slower and noisy (a median of 478 ms against 5.4 ms for llava mlp). Usage::

    python benchmarks/model_step.py
    python benchmarks/model_step.py --steps 20 --threads 0
"""

from __future__ import annotations

import argparse
import importlib
import logging
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger("model_step")

BATCH = 2
PROMPT = 32
IGNORE_INDEX = -100


def _text(vocab: int, extra: int = 0) -> torch.Tensor:
    """Random text ids in [3, vocab - 2), clear of special and image tokens."""
    return torch.randint(3, vocab - 2, (BATCH, PROMPT + extra))


def _with_images(text: torch.Tensor, image_token: int, count: int) -> dict[str, torch.Tensor]:
    """``count`` image tokens before the text; labels ignore them."""
    image = torch.full((BATCH, count), image_token, dtype=torch.long)
    ids = torch.cat([image, text], dim=1)
    labels = ids.clone()
    labels[:, :count] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def llava(connector: str) -> tuple[Any, dict[str, Any]]:
    """Tiny llava with the given connector and its inputs."""
    from radixpert.models.llava import TINY_IMAGE_TOKEN, tiny_llava

    model = tiny_llava(connector)
    inputs = _with_images(_text(64), TINY_IMAGE_TOKEN, model.config.image_seq_length)
    inputs["pixel_values"] = torch.randn(BATCH, 3, 32, 32)
    return model, inputs


def encoder_decoder() -> tuple[Any, dict[str, Any]]:
    """Tiny RadScribe (ViT + BERT joint encoder + T5 decoder, label branch on)."""
    from radixpert.models.encoder_decoder import tiny_encoder_decoder

    model = tiny_encoder_decoder()
    ids = _text(64)
    return model, {
        "pixel_values": torch.randn(BATCH, 3, 32, 32),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": _text(64),
    }


def mllama() -> tuple[Any, dict[str, Any]]:
    """Tiny Mllama (cross-attention at 1 and 3), one single-tile image per sample."""
    module = importlib.import_module("radixpert.models.mllama")
    model = module.tiny_mllama()
    tiles = model.config.vision_config.max_num_tiles
    inputs = _with_images(_text(module.TINY_VOCAB), module.TINY_IMAGE_TOKEN, 1)
    length = inputs["input_ids"].shape[1]
    tile_mask = torch.zeros(BATCH, 1, tiles, dtype=torch.long)
    tile_mask[:, :, 0] = 1
    inputs.update(
        pixel_values=torch.randn(BATCH, 1, tiles, 3, 32, 32),
        aspect_ratio_ids=torch.ones(BATCH, 1, dtype=torch.long),
        aspect_ratio_mask=tile_mask,
        cross_attention_mask=tile_mask[:, None].expand(BATCH, length, 1, tiles).clone(),
    )
    return model, inputs


def onevision() -> tuple[Any, dict[str, Any]]:
    """Tiny LLaVA-OneVision (SigLIP + Qwen2), base view + one tile per image."""
    module = importlib.import_module("radixpert.models.onevision")
    model = module.tiny_onevision()
    size = module.TINY_IMAGE_SIZE
    pixels = torch.randn(BATCH, 2, 3, size, size)
    sizes = torch.tensor([[size, size]] * BATCH)
    with torch.no_grad():
        count = module.image_token_count(model, pixels, sizes)[0]
    inputs = _with_images(_text(module.TINY_VOCAB), module.TINY_IMAGE_TOKEN, count)
    inputs.update(pixel_values=pixels, image_sizes=sizes)
    return model, inputs


FAMILIES: dict[str, Callable[[], tuple[Any, dict[str, Any]]]] = {
    "llava (mlp)": lambda: llava("mlp"),
    "llava (hcf)": lambda: llava("hcf"),
    "encoder-decoder (RadScribe)": encoder_decoder,
    "mllama": mllama,
    "onevision": onevision,
}


def step_times(model: Any, inputs: dict[str, Any], steps: int, warmup: int) -> list[float]:
    """Seconds per forward + backward step, warm-up steps excluded."""
    model.train()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    """Measures every available family and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 0 keeps torch's default"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name, build in FAMILIES.items():
        try:
            model, inputs = build()
        except ModuleNotFoundError as err:
            logger.warning("skipping %s: %s", name, err)
            continue
        params = sum(p.numel() for p in model.parameters()) / 1e6
        tokens = inputs["input_ids"].shape[1]
        times = step_times(model, inputs, args.steps, args.warmup)
        rows.append((name, params, tokens, statistics.median(times) * 1e3, min(times) * 1e3))
    print(
        f"CPU {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; batch {BATCH}, {PROMPT}-token prompt; "
        f"median of {args.steps} steps after {args.warmup} warm-up\n"
    )
    print("| family | params (M) | sequence | f+b median (ms) | f+b min (ms) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, params, tokens, median, best in rows:
        print(f"| {name} | {params:.2f} | {tokens} | {median:.1f} | {best:.1f} |")


if __name__ == "__main__":
    main()
