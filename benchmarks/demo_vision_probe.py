"""How fast a small vision tower learns the phantom findings, by patch size (demo sizing).

Trains a random-init CLIP vision tower (64 px phantoms, the demo's tower shape) with a linear
head on the six phantom findings (binary cross-entropy, AdamW, one-cycle schedule) and reports
per-finding and micro F1 on the held-out phantoms and the seconds taken. This is the upper
bound of what the demo's language model can read from the image in that time, and the
evidence for the demo size's patch 16 (docs/benchmarks.md).

    python benchmarks/demo_vision_probe.py --phantoms 1100 --steps 2000 --patch 8 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _load(n: int, folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from PIL import Image

    from radixpert.data.phantoms import FINDINGS, generate_phantoms

    studies = generate_phantoms(n, folder, size=64)
    pixels = np.stack(
        [np.asarray(Image.open(folder / s.images[0].path), dtype=np.float32) / 255 for s in studies]
    )
    x = ((torch.from_numpy(pixels)[:, None] - 0.5) / 0.25).repeat(1, 3, 1, 1)
    y = torch.tensor([[float(s.labels.get(f) == 1) for f in FINDINGS] for s in studies])
    train = torch.tensor([s.split == "train" for s in studies])
    return x, y, train


def probe(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, patch: int, steps: int) -> dict:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from radixpert.data.phantoms import FINDINGS

    torch.manual_seed(0)
    config = CLIPVisionConfig(
        image_size=64,
        patch_size=patch,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
    )
    tower, head = CLIPVisionModel(config), torch.nn.Linear(64, len(FINDINGS))
    params = [*tower.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-3, total_steps=steps)
    xt, yt = x[train], y[train]
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        batch = torch.randint(0, len(xt), (32,), generator=generator)
        logits = head(tower(pixel_values=xt[batch]).last_hidden_state.mean(1))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    tower.eval()
    with torch.no_grad():
        predicted = (head(tower(pixel_values=x[~train]).last_hidden_state.mean(1)) > 0).float()
    truth = y[~train]
    tp = (predicted * truth).sum(0)
    fp = (predicted * (1 - truth)).sum(0)
    fn = ((1 - predicted) * truth).sum(0)
    per = (2 * tp / (2 * tp + fp + fn).clamp(min=1)).tolist()
    micro = float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()))
    return {"patch": patch, "seconds": seconds, "micro_f1": micro, **dict(zip(FINDINGS, per))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=1100)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--patch", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        x, y, train = _load(args.phantoms, Path(tmp))
    print(f"{int(train.sum())} training and {int((~train).sum())} held-out phantoms")
    for patch in args.patch:
        row = probe(x, y, train, patch, args.steps)
        cells = ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k not in ("patch",))
        print(f"patch {patch}: {cells}")


if __name__ == "__main__":
    main()
