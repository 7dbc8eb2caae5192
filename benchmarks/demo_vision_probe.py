"""How fast a small vision tower learns the phantom findings, by image size, patch and shape.

Trains a random-init CLIP vision tower (the demo's tower shape by default: 64 px phantoms,
patch 16, width 64, 4 layers) with a linear head on the six phantom findings (binary
cross-entropy, AdamW, one-cycle schedule) and reports per-finding and micro F1 on the
held-out phantoms (validate + test splits), the seconds taken and the image tokens per image.
This is the upper bound of what the demo's language model can read from the image in that
time, and the evidence for the demo's tower sizing (docs/benchmarks.md).

    python benchmarks/demo_vision_probe.py --phantoms 1100 --steps 2000 --patch 8 16
    python benchmarks/demo_vision_probe.py --phantoms 4000 --size 64 96 128 --threads 1

Every combination of the list-valued options (--size, --patch, --width, --layers, --lr,
--steps, --batch, --pool) is one probe run, for each phantom drawing (--size x --min-px x
--contrast: `generate_phantom`'s opt-in conspicuity options); phantoms are drawn once per
drawing and can be cached with --cache DIR.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch


def _load(
    n: int, size: int, min_px: float = 0.0, contrast: float = 1.0, cache: Path | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Pixels (normalised, 3 channels), the six labels and the train mask of `n` phantoms.

    The pixels are those `generate_phantoms(n, folder, size=size)` writes (PNG is lossless),
    drawn in memory; the split is the same id hash. Returns the drawing seconds too.
    """
    from radixpert.data.phantoms import FINDINGS, _split, generate_phantom, phantom_seed

    tag = f"phantoms-n{n}-s{size}-px{min_px:g}-c{contrast:g}.npz"
    if cache is not None and (cache / tag).is_file():
        z = np.load(cache / tag)
        pixels, labels, train, seconds = z["pixels"], z["labels"], z["train"], float(z["seconds"])
    else:
        kwargs = {"min_px": min_px, "contrast": contrast} if (min_px, contrast) != (0, 1) else {}
        start = time.perf_counter()
        pixels = np.empty((n, size, size), np.uint8)
        labels = np.zeros((n, len(FINDINGS)), np.float32)
        train = np.zeros(n, bool)
        for i in range(n):
            pixels[i], truth = generate_phantom(phantom_seed(0, i), size, **kwargs)
            labels[i] = [float(truth.labels.get(f) == 1) for f in FINDINGS]
            train[i] = _split(0, f"phantom-{i:06d}") == "train"
        seconds = time.perf_counter() - start
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(cache / tag, pixels=pixels, labels=labels, train=train, seconds=seconds)
    x = torch.from_numpy(pixels.astype(np.float32) / 255)[:, None]
    x = ((x - 0.5) / 0.25).repeat(1, 3, 1, 1)
    return x, torch.from_numpy(labels), torch.from_numpy(train), seconds


def _pool(hidden: torch.Tensor, pool: str) -> torch.Tensor:
    # mean: all tokens averaged (a small finding is diluted); max: per-channel max over the
    # patch tokens (closer to a language model that attends to any one token).
    if pool == "mean":
        return hidden.mean(1)
    if pool == "max":
        return hidden[:, 1:].amax(1)
    return hidden[:, 0]  # cls


def probe(
    x: torch.Tensor,
    y: torch.Tensor,
    train: torch.Tensor,
    patch: int,
    steps: int,
    width: int = 64,
    layers: int = 4,
    lr: float = 1e-3,
    batch: int = 32,
    pool: str = "mean",
) -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from radixpert.data.phantoms import FINDINGS

    torch.manual_seed(0)
    size = x.shape[-1]
    config = CLIPVisionConfig(
        image_size=size,
        patch_size=patch,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * width,
    )
    tower, head = CLIPVisionModel(config), torch.nn.Linear(width, len(FINDINGS))
    params = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    xt, yt = x[train], y[train]
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        pick = torch.randint(0, len(xt), (batch,), generator=generator)
        logits = head(_pool(tower(pixel_values=xt[pick]).last_hidden_state, pool))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    tower.eval()
    with torch.no_grad():
        held = x[~train]
        out = [
            head(_pool(tower(pixel_values=held[i : i + 256]).last_hidden_state, pool))
            for i in range(0, len(held), 256)
        ]
        predicted = (torch.cat(out) > 0).float()
    truth = y[~train]
    tp = (predicted * truth).sum(0)
    fp = (predicted * (1 - truth)).sum(0)
    fn = ((1 - predicted) * truth).sum(0)
    per = (2 * tp / (2 * tp + fp + fn).clamp(min=1)).tolist()
    micro = float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()))
    return {
        "size": size,
        "patch": patch,
        "tokens": (size // patch) ** 2,
        "width": width,
        "layers": layers,
        "lr": lr,
        "steps": steps,
        "batch": batch,
        "pool": pool,
        "seconds": seconds,
        "micro_f1": micro,
        **dict(zip(FINDINGS, per)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=1100)
    ap.add_argument("--size", type=int, nargs="+", default=[64], help="phantom and tower px")
    ap.add_argument("--patch", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--width", type=int, nargs="+", default=[64], help="tower hidden size")
    ap.add_argument("--layers", type=int, nargs="+", default=[4], help="tower layers")
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-3], help="peak learning rate")
    ap.add_argument("--steps", type=int, nargs="+", default=[2000])
    ap.add_argument("--batch", type=int, nargs="+", default=[32])
    ap.add_argument("--pool", nargs="+", default=["mean"], choices=("mean", "max", "cls"))
    ap.add_argument(
        "--min-px", type=float, nargs="+", default=[0.0], help="generate_phantom(min_px=...)"
    )
    ap.add_argument(
        "--contrast", type=float, nargs="+", default=[1.0], help="generate_phantom(contrast=...)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", type=Path, default=None, help="folder to cache drawn phantoms")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for size, min_px, contrast in itertools.product(args.size, args.min_px, args.contrast):
        consp = f"min_px {min_px:g}, contrast {contrast:g}"
        x, y, train, drawn = _load(args.phantoms, size, min_px, contrast, args.cache)
        held = y[~train]
        print(
            f"size {size}, {consp}: {int(train.sum())} training and "
            f"{int((~train).sum())} held-out phantoms (positives "
            + ", ".join(str(int(v)) for v in held.sum(0))
            + f"), drawn in {drawn:.1f} s",
            flush=True,
        )
        for patch, width, layers, lr, steps, batch, pool in itertools.product(
            args.patch, args.width, args.layers, args.lr, args.steps, args.batch, args.pool
        ):
            row = probe(x, y, train, patch, steps, width, layers, lr, batch, pool)
            cells = ", ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
            )
            print(f"{consp}: {cells}", flush=True)


if __name__ == "__main__":
    main()
