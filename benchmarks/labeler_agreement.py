"""Agreement of radixpert's rule-based CheXpert-style labeler with human MeSH coding (IU X-ray).

Usage:
    python benchmarks/labeler_agreement.py PATH/TO/indiana_reports_dev.csv [--errors OBS]

The IU X-ray (Open-I) reports come with findings coded by human indexers as MeSH terms
(``Cardiomegaly/mild;Pleural Effusion/right``; ``normal`` when nothing was found). This
script maps the MeSH terms that correspond reliably to a CheXpert observation, labels
findings + impression with `radixpert.evaluate.clinical.chexpert_rules`, counts a positive
or uncertain label as "present" (No Finding: only a positive label), and prints
per-observation precision, recall, F1 and support as a markdown table.

MeSH codes only what is present, so "absent" below means "not coded"; terms qualified
``borderline`` are left out, and an observation whose only codes in a report are borderline
is not scored for that report. Reports marked ``No Indexing`` are skipped.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from radixpert.evaluate.clinical.chexpert_rules import OBSERVATIONS, label_reports

# MeSH sites (second part of a term) that are not lung parenchyma: an "Opacity/ribs" is not a
# Lung Opacity.
NON_LUNG_SITES = {
    "ribs",
    "costophrenic angle",
    "pleura",
    "thorax",
    "mediastinum",
    "sulcus",
    "heart",
    "pleural sinus",
    "supracardiac",
    "sternum",
    "breast",
    "cardiophrenic angle",
    "posterior",
    "anterior",
}

DIRECT = {
    "Cardiomegaly": "Cardiomegaly",
    "Pulmonary Edema": "Edema",
    "Pulmonary Congestion": "Edema",
    "Heart Failure": "Edema",
    "Consolidation": "Consolidation",
    "Pneumonia": "Pneumonia",
    "Pulmonary Atelectasis": "Atelectasis",
    "Pneumothorax": "Pneumothorax",
    "Pleural Effusion": "Pleural Effusion",
    "Fractures, Bone": "Fracture",
    "Infiltrate": "Lung Opacity",
    "Airspace Disease": "Lung Opacity",
    "Lung Diseases, Interstitial": "Lung Opacity",
    "Catheters, Indwelling": "Support Devices",
    "Tube, Inserted": "Support Devices",
    "Implanted Medical Device": "Support Devices",
    "Medical Device": "Support Devices",
    "Stents": "Support Devices",
}


def map_term(term: str) -> list[str]:
    """CheXpert observations that one MeSH term (``Main/qualifier/...``) codes as present."""
    parts = [p.strip() for p in term.split("/")]
    main, quals = parts[0], [q.lower() for q in parts[1:]]
    site = quals[0] if quals else ""
    if main == "Hydropneumothorax":
        return ["Pneumothorax", "Pleural Effusion"]
    if main in DIRECT:
        return [DIRECT[main]]
    if main == "Cardiac Shadow" and "enlarged" in quals:
        return ["Cardiomegaly"]
    if main == "Mediastinum" and {"prominent", "enlarged", "widened"} & set(quals):
        return ["Enlarged Cardiomediastinum"] if "lymph nodes" not in quals else []
    if main in ("Opacity", "Density") and site not in NON_LUNG_SITES:
        return ["Lung Opacity"]
    if main == "Cicatrix" and site == "lung":
        return ["Lung Opacity"]  # CheXpert counts scarring as Lung Opacity
    if main == "Markings" and "interstitial" in quals:
        return ["Lung Opacity"]
    if main in ("Nodule", "Mass") and site in ("lung", ""):
        return ["Lung Lesion"]
    if main == "Thickening" and site == "pleura":
        return ["Pleural Other"]
    return []


def truth_of(mesh: str) -> tuple[set[str], set[str]] | None:
    """(observations coded present, observations to leave unscored) for one MeSH cell."""
    mesh = mesh.strip()
    if not mesh or mesh == "No Indexing":
        return None
    if mesh.lower() == "normal":
        return {"No Finding"}, set()
    present: set[str] = set()
    borderline: set[str] = set()
    n_firm = 0
    for term in mesh.split(";"):
        if not term.strip():
            continue
        is_borderline = "borderline" in term.lower()
        n_firm += not is_borderline
        (borderline if is_borderline else present).update(map_term(term))
    skip = borderline - present
    if n_firm == 0:
        skip.add("No Finding")  # only borderline codes: neither normal nor abnormal for sure
    return present, skip


def predicted(obs: str, value: int | None, unc_present: bool = True) -> bool:
    """Whether a label counts as "present" (No Finding: only when positive)."""
    if obs == "No Finding" or not unc_present:
        return value == 1
    return value in (1, -1)


def counts(
    obs: str,
    truths: list[tuple[set[str], set[str]]],
    labels: list[dict[str, int | None]],
    unc_present: bool,
) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one observation."""
    tp = fp = fn = 0
    for (present, skip), lab in zip(truths, labels):
        if obs in skip:
            continue
        pred = predicted(obs, lab[obs], unc_present)
        gold = obs in present
        tp += pred and gold
        fp += pred and not gold
        fn += gold and not pred
    return tp, fp, fn


def prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """Precision, recall and F1 (0 where undefined)."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def report_text(row: dict[str, str]) -> str:
    parts = [row.get("findings", "") or "", row.get("impression", "") or ""]
    return " ".join(p.strip() for p in parts if p and p.strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("csv", type=Path, help="indiana_reports_dev.csv (uid, MeSH, findings, ...)")
    ap.add_argument("--errors", metavar="OBS", help="print disagreements for one observation")
    args = ap.parse_args(argv)

    with args.csv.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    kept, truths, texts = [], [], []
    for row in rows:
        truth = truth_of(row.get("MeSH", ""))
        text = report_text(row)
        if truth is None or not text:
            continue
        kept.append(row)
        truths.append(truth)
        texts.append(text)

    t0 = time.perf_counter()
    labels = label_reports(texts)
    took = time.perf_counter() - t0

    scored = [o for o in OBSERVATIONS if any(o in p for p, _ in truths)]
    lines = [
        "| observation | support | P | R | F1 | P (unc. absent) | R (unc. absent) "
        "| F1 (unc. absent) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    totals = {True: [0, 0, 0], False: [0, 0, 0]}  # uncertain counts as present? -> tp, fp, fn
    for obs in scored:
        cells = []
        support = 0
        for unc_present in (True, False):
            tp, fp, fn = counts(obs, truths, labels, unc_present)
            support = tp + fn
            cells.extend(prf(tp, fp, fn))
            if obs != "No Finding":
                for k, v in enumerate((tp, fp, fn)):
                    totals[unc_present][k] += v
        lines.append(f"| {obs} | {support} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    cells = [c for u in (True, False) for c in prf(*totals[u])]
    support = totals[True][0] + totals[True][2]
    lines.append(
        f"| micro (all but No Finding) | {support} | "
        + " | ".join(f"{c:.3f}" for c in cells)
        + " |"
    )
    print(f"{len(texts)} reports scored ({len(rows) - len(texts)} skipped: No Indexing or empty)")
    print(f"labelled in {took:.3f} s ({len(texts) / took:.0f} reports/s)\n")
    print("\n".join(lines))

    if args.errors:
        obs = args.errors
        print(f"\n## disagreements for {obs}\n")
        for row, (present, skip), lab, text in zip(kept, truths, labels, texts):
            if obs in skip:
                continue
            value = lab[obs]
            pred = predicted(obs, value)
            gold = obs in present
            if pred != gold:
                kind = "FP" if pred else "FN"
                print(f"{kind} uid={row['uid']} label={value} MeSH={row['MeSH']}\n    {text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
