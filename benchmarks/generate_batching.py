"""Batched against one-at-a-time generation: ``radixpert generate``'s engine, same model and inputs.

Builds the demo-size llava (``models.llava.demo_llava``, about 1 M parameters, random weights,
a tokenizer trained on the phantoms' reports) as a bundle, draws N phantom studies, then runs
``infer.batch.run_generate`` on them twice per setting into fresh folders: with
``--batch-size 1`` and with ``--batch-size B`` (length-grouped), the whole command path
(image loading, prompts, the journal fsync'd per batch, the merged file). Prints samples/s,
the speed-up and whether both runs wrote the same text. Usage::

    python benchmarks/generate_batching.py                       # N = 64, B = 32, 48 tokens
    python benchmarks/generate_batching.py --n 128 --batch-sizes 8 32 64 --connector mlp
    python benchmarks/generate_batching.py --threads 1           # one core

Random weights rarely produce the end-of-text token, so every answer runs to
``--max-new-tokens``: both modes do the same number of decoding steps per record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def build(root: Path, n: int, connector: str) -> tuple[Path, Path]:
    import torch

    from radixpert.data.phantoms import generate_phantoms
    from radixpert.instruct.tasks import ReportTask
    from radixpert.models.bundle import save_bundle
    from radixpert.models.llava import demo_llava
    from radixpert.models.processor import RadProcessor
    from radixpert.models.tokenizers import train_tokenizers

    studies = generate_phantoms(n, root / "phantoms", size=64)
    torch.manual_seed(0)
    model = demo_llava(connector).eval()
    prompts = [p.format(what="findings") for p in ReportTask.PROMPTS]
    texts = [s.findings for s in studies] + [s.impression for s in studies] + prompts * 20
    tokenizer, _ = train_tokenizers(model, texts)
    bundle = save_bundle(model, RadProcessor.from_model(model, tokenizer), root / "bundle")
    return bundle, root / "phantoms" / "studies.jsonl"


def timed(bundle: Path, data: Path, out: Path, batch_size: int, tokens: int, cache: str) -> float:
    from radixpert.infer.batch import GenerateSettings, run_generate

    settings = GenerateSettings(max_new_tokens=tokens, batch_size=batch_size, cache=cache)
    t0 = time.perf_counter()
    result = run_generate(bundle, data, out, settings, progress=False)
    seconds = time.perf_counter() - t0
    assert result["generated"] == result["records"], result
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="phantom studies (default 64)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32])
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--connector", default="hcf", choices=["hcf", "mlp"], help="demo: hcf")
    ap.add_argument("--cache", default="dynamic", choices=["dynamic", "static"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), demo llava "
        f"({args.connector}), {args.n} studies, {args.max_new_tokens} new tokens, "
        f"{args.cache} cache"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bundle, data = build(root, args.n, args.connector)
        timed(bundle, data, root / "warmup.json", 4, 4, args.cache)  # imports, allocator
        one = timed(bundle, data, root / "one.json", 1, args.max_new_tokens, args.cache)
        print("| batch size | seconds | samples/s | speed-up | same text as batch 1 |")
        print("| ---: | ---: | ---: | ---: | --- |")
        print(f"| 1 | {one:.1f} | {args.n / one:.2f} | 1.0x | - |")
        reference = json.loads((root / "one.json").read_text())
        for b in args.batch_sizes:
            seconds = timed(bundle, data, root / f"b{b}.json", b, args.max_new_tokens, args.cache)
            got = json.loads((root / f"b{b}.json").read_text())
            same = sum(got[k] == reference[k] for k in reference)
            print(
                f"| {b} | {seconds:.1f} | {args.n / seconds:.2f} | {one / seconds:.1f}x | "
                f"{same}/{len(reference)} |"
            )


if __name__ == "__main__":
    main()
