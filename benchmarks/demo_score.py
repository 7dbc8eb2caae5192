"""Scores any model folder on the demo's held-out phantoms, as ``radixpert demo`` scores its own.

For ablations (docs/benchmarks.md): a stage bundle of a demo run (e.g. the model before the
reinforcement stage, ``DIR/model/05-msa3/bundle``) or of a variant trained with ``radixpert
train demo``, generated and scored exactly as the demo does (findings F1 per finding,
grounding mAP@0.5, laterality, BLEU-4 / ROUGE-L / CIDEr-D). Predictions go to
``DIR/predictions/NAME.json`` (kept: a rerun only scores), the scores to stdout as JSON::

    python benchmarks/demo_score.py --demo runs/demo --name pre_rl \\
        --bundle runs/demo/model/05-msa3/bundle
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    from radixpert.demo import pipeline

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="a finished `radixpert demo --out` folder")
    ap.add_argument("--bundle", required=True, help="the model folder to score")
    ap.add_argument("--name", required=True, help="its name (predictions/NAME.json)")
    args = ap.parse_args()
    out = Path(args.demo)
    if args.name in ("model", "control"):
        ap.error("--name: model and control are the demo's own predictions; choose another")
    studies = pipeline._phantoms(out, pipeline.DEFAULT_PHANTOMS)
    predictions = pipeline._predict(out, args.name, Path(args.bundle), studies)
    print(json.dumps(pipeline._finite(pipeline._score(predictions, studies)), indent=1))


if __name__ == "__main__":
    main()
