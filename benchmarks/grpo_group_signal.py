"""Does a grpo group carry a signal for each finding? Sampled reports of a model, per finding.

For each phantom of a split, samples ``--group`` reports at ``--temperature`` (as the grpo
stage does: ``infer.generate.generate_batch`` with sampling) and reads each with the
rule-based labeler. Prints per finding the share of sampled reports that name it when the
phantom has it and when it does not, and the share of groups that name it at least once:
a reward for a finding can only teach the model to see it where the first share is well above
the second (docs/benchmarks.md, the demo). Usage::

    python benchmarks/grpo_group_signal.py --bundle runs/demo/model/05-msa3/bundle \\
        --data runs/demo/data/phantoms/studies.jsonl --n 200
"""

from __future__ import annotations

import argparse
import collections
import random
from pathlib import Path


def main() -> None:
    import torch

    from radixpert.data.phantoms import FINDINGS
    from radixpert.data.study import read_studies
    from radixpert.demo.scoring import predicted_findings
    from radixpert.infer.generate import generate_batch, prompt_turns
    from radixpert.instruct.conversation import images_and_turns
    from radixpert.instruct.tasks import ReportTask
    from radixpert.models.bundle import load_bundle

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", required=True, help="a model folder (stage bundle)")
    ap.add_argument("--data", required=True, help="phantoms' studies.jsonl")
    ap.add_argument("--split", default="validate")
    ap.add_argument("--n", type=int, default=200, help="phantoms (default 200)")
    ap.add_argument("--group", type=int, default=8, help="reports per phantom (default 8)")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    data = Path(args.data)
    studies = [s for s in read_studies(data) if s.split == args.split][: args.n]
    model, processor = load_bundle(args.bundle)
    model.eval()
    task = ReportTask("findings")
    torch.manual_seed(args.seed)
    present, named, groups = collections.Counter(), collections.Counter(), collections.Counter()
    absent, named_absent = collections.Counter(), collections.Counter()
    used = 0
    for study in studies:
        conversations = task.build(study, random.Random(study.id))
        if not conversations:  # no findings section to write
            continue
        used += 1
        paths, turns = images_and_turns(conversations[0])
        image = [str(data.parent / path) for path in paths]
        texts = generate_batch(
            model, processor, [image] * args.group, [prompt_turns(turns)] * args.group,
            max_new_tokens=args.max_new_tokens, do_sample=True,
            temperature=args.temperature, top_p=1.0,
        )  # fmt: skip
        found = [set(predicted_findings(t)) for t in texts]
        for finding in FINDINGS:
            k = sum(finding in f for f in found)
            if study.labels.get(finding) == 1:
                present[finding] += 1
                named[finding] += k
                groups[finding] += k > 0
            else:
                absent[finding] += 1
                named_absent[finding] += k
    print(f"{used} phantoms ({args.split}), {args.group} reports each, T={args.temperature}")
    print(
        "| finding | phantoms with it | named when present | named when absent | groups naming it |"
    )
    print("| --- | ---: | ---: | ---: | ---: |")
    for finding in FINDINGS:
        g, n_abs = args.group, max(1, absent[finding])
        if present[finding]:
            print(
                f"| {finding} | {present[finding]} | {named[finding] / (g * present[finding]):.3f} "
                f"| {named_absent[finding] / (g * n_abs):.3f} | "
                f"{groups[finding] / present[finding]:.2f} |"
            )


if __name__ == "__main__":
    main()
