"""Speed of radixpert's BLEU + ROUGE-L + CIDEr-D against pycocoevalcap, whole process each.

Builds N synthetic, realistic chest X-ray report pairs deterministically (a seeded
generator drawing from a built-in list of typical report sentences, with sentence- and
word-level perturbations for the candidate), tokenises them once with radixpert's
"basic" tokeniser and writes the pre-tokenised texts to a temporary directory. Then it
times, as separate Python processes (interpreter start and imports included):

(a) pycocoevalcap ``Bleu(4)``, ``Rouge()`` and ``Cider()`` on that input, and
(b) radixpert ``CorpusBleu``, ``RougeL`` and ``CiderD`` with ``tokenizer="none"``,

checks that every corpus and per-sample number agrees to 1e-6, and prints a markdown
table. Usage::

    python benchmarks/lexical_speed.py                      # N = 1000, 10000, 100000
    python benchmarks/lexical_speed.py --sizes 1000 10000 --max-reference 10000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SENTENCES = [
    "The heart size is normal.",
    "Heart size is within normal limits.",
    "The cardiac silhouette is mildly enlarged.",
    "Moderate cardiomegaly is unchanged from the prior study.",
    "The cardiomediastinal silhouette is within normal limits.",
    "The mediastinal and hilar contours are normal.",
    "The mediastinum is not widened.",
    "Tortuosity of the thoracic aorta is noted.",
    "There is calcification of the aortic knob.",
    "The hilar contours are prominent, likely vascular.",
    "The lungs are clear.",
    "The lungs are well expanded and clear.",
    "There is no focal consolidation, pleural effusion, or pneumothorax.",
    "No focal airspace consolidation is seen.",
    "There is no pneumothorax.",
    "No pleural effusion is identified.",
    "There is a small left pleural effusion.",
    "A small right pleural effusion is present.",
    "Moderate bilateral pleural effusions are slightly increased.",
    "Blunting of the left costophrenic angle may reflect a small effusion or scarring.",
    "There is a trace right pleural effusion.",
    "Patchy opacity at the right lung base may represent atelectasis or pneumonia.",
    "Left basilar opacity likely reflects atelectasis.",
    "Bibasilar atelectasis is present.",
    "There is linear atelectasis in the left lower lobe.",
    "Streaky opacities in the lung bases are consistent with subsegmental atelectasis.",
    "There is a focal consolidation in the right middle lobe concerning for pneumonia.",
    "Airspace opacity in the left upper lobe is concerning for infection.",
    "Multifocal airspace opacities are concerning for multifocal pneumonia.",
    "There is mild pulmonary vascular congestion.",
    "Mild interstitial pulmonary edema is present.",
    "Moderate pulmonary edema has worsened since the prior radiograph.",
    "There is no evidence of pulmonary edema.",
    "The pulmonary vasculature is normal.",
    "Cephalization of the pulmonary vessels suggests elevated venous pressure.",
    "The lungs are hyperinflated, consistent with chronic obstructive pulmonary disease.",
    "Emphysematous changes are noted in the upper lobes.",
    "There is a 1.5 cm nodule in the right upper lobe.",
    "A 2 cm rounded opacity in the left lower lobe may represent a nodule.",
    "A calcified granuloma is seen in the left upper lobe.",
    "Scattered calcified granulomas are consistent with prior granulomatous disease.",
    "Biapical pleural thickening is noted.",
    "There is apical scarring bilaterally.",
    "Reticular opacities at the lung bases suggest chronic interstitial lung disease.",
    "There is a right-sided pneumothorax measuring approximately 2 cm at the apex.",
    "A small left apical pneumothorax is present.",
    "No large pneumothorax is seen.",
    "The right hemidiaphragm is elevated.",
    "There is elevation of the left hemidiaphragm.",
    "The diaphragms are flattened.",
    "Free air under the diaphragm is not seen.",
    "The osseous structures are intact.",
    "No acute osseous abnormality is identified.",
    "Degenerative changes are seen in the thoracic spine.",
    "Multilevel degenerative changes of the thoracic spine are present.",
    "There is an old healed fracture of the right posterior sixth rib.",
    "Acute displaced fractures of the left fifth and sixth ribs are seen.",
    "There is a compression deformity of a lower thoracic vertebral body.",
    "Median sternotomy wires are intact.",
    "The patient is status post coronary artery bypass grafting.",
    "Surgical clips are noted in the right upper quadrant.",
    "Postsurgical changes are noted in the left hemithorax.",
    "A left-sided pacemaker with leads in the right atrium and right ventricle is unchanged.",
    "A dual-chamber pacemaker is in place.",
    "A right internal jugular central venous catheter terminates in the mid SVC.",
    "The left PICC line tip is in the lower superior vena cava.",
    "A right PICC line terminates at the cavoatrial junction.",
    "The endotracheal tube terminates 4 cm above the carina.",
    "The endotracheal tube tip is at the level of the clavicles.",
    "An enteric tube courses below the diaphragm with the tip in the stomach.",
    "A nasogastric tube is seen with its tip in the gastric fundus.",
    "The feeding tube tip is in the duodenum.",
    "A right chest tube is in place without residual pneumothorax.",
    "A left chest tube remains in place.",
    "Monitoring leads overlie the chest.",
    "External monitoring devices project over the chest.",
    "A prosthetic aortic valve is present.",
    "Subcutaneous emphysema is present along the right chest wall.",
    "Soft tissues are unremarkable.",
    "A hiatal hernia is noted.",
    "There is a large hiatal hernia.",
    "Mild thoracolumbar scoliosis is noted.",
    "Compared to the prior study, there is no significant interval change.",
    "In comparison with the study of yesterday, the effusion has increased.",
    "There has been interval improvement of the right basilar opacity.",
    "The right basilar opacity has resolved.",
    "Findings are stable compared to the prior radiograph.",
    "Frontal and lateral views of the chest were obtained.",
    "A single portable AP view of the chest was obtained.",
    "The study is limited by patient rotation.",
    "Low lung volumes accentuate the bronchovascular markings.",
    "Lung volumes are low.",
    "There is crowding of the bronchovascular markings.",
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "No radiographic evidence of pneumonia.",
    "Findings are suggestive of congestive heart failure.",
    "Recommend follow-up chest CT to further evaluate the nodule.",
    "Clinical correlation is recommended.",
    "Findings were discussed with the referring physician.",
    "Stable cardiomegaly without acute cardiopulmonary process.",
    "Interval placement of a right internal jugular catheter.",
]

_SWAPS = {
    "left": "right",
    "right": "left",
    "small": "moderate",
    "moderate": "large",
    "mild": "moderate",
    "no": "a",
    "normal": "enlarged",
    "upper": "lower",
    "lower": "upper",
    "increased": "decreased",
    "unchanged": "improved",
}
_INSERTS = ["mild", "small", "likely", "new", "stable", "possible", "bilateral", "subtle"]


def _report(rng: random.Random) -> list[str]:
    """Whole sentences of one reference report, about 40 to 60 words."""
    target = rng.randint(40, 60)
    out: list[str] = []
    words = misses = 0
    while words < target and misses < 50:
        s = rng.choice(SENTENCES)
        n = len(s.split())
        if words + n > 60:
            misses += 1  # too long for what is left: draw another sentence
            continue
        out.append(s)
        words += n
    return out


def _perturb(sentences: list[str], rng: random.Random) -> list[str]:
    """A candidate: sentences kept, replaced, dropped or reordered; words swapped."""
    out = []
    for s in sentences:
        u = rng.random()
        if u < 0.15:
            continue  # omitted finding
        if u < 0.35:
            s = rng.choice(SENTENCES)  # different finding
        words = s.split()
        new = []
        for w in words:
            v = rng.random()
            if v < 0.04:
                continue
            if v < 0.10 and w.lower() in _SWAPS:
                w = _SWAPS[w.lower()]
            elif v < 0.13:
                new.append(rng.choice(_INSERTS))
            new.append(w)
        out.append(" ".join(new))
    if rng.random() < 0.3:
        out.append(rng.choice(SENTENCES))  # hallucinated extra finding
    if len(out) > 2 and rng.random() < 0.3:
        i = rng.randrange(len(out) - 1)
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def make_pairs(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """N (reference, candidate) report pairs, deterministic for a given seed.

    Args:
        n: number of pairs.
        seed: random seed.

    Returns:
        (references, candidates) as raw report texts.
    """
    rng = random.Random(seed)
    refs, cands = [], []
    for _ in range(n):
        sents = _report(rng)
        refs.append(" ".join(sents))
        cands.append(" ".join(_perturb(sents, rng)))
    return refs, cands


# ----------------------------------------------------------------------------------------
# child processes: each reads pre-tokenised texts and writes all numbers
# ----------------------------------------------------------------------------------------

_COCO_CHILD = """
import json, sys
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
data = json.load(open(sys.argv[1]))
gts = {i: [r] for i, r in enumerate(data["references"])}
res = {i: [c] for i, c in enumerate(data["candidates"])}
bleu, bleu_ps = Bleu(4).compute_score(gts, res, verbose=0)
rouge, rouge_ps = Rouge().compute_score(gts, res)
cider, cider_ps = Cider().compute_score(gts, res)
out = {f"bleu-{k + 1}": [bleu[k], list(bleu_ps[k])] for k in range(4)}
out["rouge-l"] = [float(rouge), [float(x) for x in rouge_ps]]
out["cider-d"] = [float(cider), [float(x) for x in cider_ps]]
json.dump(out, open(sys.argv[2], "w"))
"""

_RADIXPERT_CHILD = """
import json, sys
from radixpert.evaluate.lexical.bleu import CorpusBleu
from radixpert.evaluate.lexical.cider import CiderD
from radixpert.evaluate.lexical.rouge import RougeL
data = json.load(open(sys.argv[1]))
refs, cands = data["references"], data["candidates"]
out = {}
for metric in (CorpusBleu(tokenizer="none"), RougeL(tokenizer="none"), CiderD(tokenizer="none")):
    for r in metric.compute(refs, cands).flatten():
        out[r.name] = [r.aggregate, r.per_sample]
json.dump(out, open(sys.argv[2], "w"))
"""


def _run(code: str, inp: Path, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(inp), str(out)], check=True)
    return time.perf_counter() - t0


def _max_diff(a: dict, b: dict) -> float:
    worst = 0.0
    for name, (agg, ps) in a.items():
        agg2, ps2 = b[name]
        worst = max(worst, abs(agg - agg2))
        if len(ps) != len(ps2):
            return float("inf")
        worst = max(worst, max((abs(x - y) for x, y in zip(ps, ps2)), default=0.0))
    return worst


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument(
        "--max-reference",
        type=int,
        default=10000,
        help="run pycocoevalcap only up to this N (it is slow)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="take the best of this many runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from radixpert.evaluate.lexical.tokenize import tokenize

    rows = []
    with tempfile.TemporaryDirectory(prefix="radixpert-lexbench-") as tmp:
        for n in args.sizes:
            refs, cands = make_pairs(n, args.seed)
            data = {
                "references": [" ".join(t) for t in tokenize(refs, "basic")],
                "candidates": [" ".join(t) for t in tokenize(cands, "basic")],
            }
            words = sum(len(t.split()) for t in data["references"]) / n
            inp = Path(tmp) / f"pairs_{n}.json"
            inp.write_text(json.dumps(data))
            out_r, out_c = Path(tmp) / f"rx_{n}.json", Path(tmp) / f"coco_{n}.json"
            t_rx = min(_run(_RADIXPERT_CHILD, inp, out_r) for _ in range(args.repeats))
            t_coco = diff = None
            if n <= args.max_reference:
                t_coco = min(_run(_COCO_CHILD, inp, out_c) for _ in range(args.repeats))
                diff = _max_diff(json.loads(out_c.read_text()), json.loads(out_r.read_text()))
                if diff > 1e-6:
                    print(f"MISMATCH at N={n}: max abs difference {diff:g}", file=sys.stderr)
                    return 1
            rows.append((n, words, t_coco, t_rx, diff))
            print(
                f"N={n}: radixpert {t_rx:.2f} s, pycocoevalcap {t_coco or float('nan'):.2f} s",
                file=sys.stderr,
            )

    print(
        "| pairs | words/reference | pycocoevalcap (s) | radixpert (s) | speed-up | max abs diff |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n, words, t_coco, t_rx, diff in rows:
        coco = f"{t_coco:.2f}" if t_coco is not None else "skipped"
        speed = f"{t_coco / t_rx:.1f}x" if t_coco is not None else "-"
        d = f"{diff:.1e}" if diff is not None else "-"
        print(f"| {n:,} | {words:.1f} | {coco} | {t_rx:.2f} | {speed} | {d} |")
    print(
        f"\nPython {sys.version.split()[0]}, {os.cpu_count()} CPU cores visible; "
        "times are whole processes (interpreter start, imports, JSON read, scoring)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
