"""Build the example shipped in src/radixpert/examples/ from the IU-Xray development reports.

    python scripts/make_example.py ../shared/data/iu_xray_reports/indiana_reports_dev.csv

References: findings + impression of the first 100 studies that have both.
Candidates: a nearest-neighbour retrieval baseline, not a trained model — for each study,
the report of the other development study whose MeSH coding is most similar (Jaccard of
the MeSH terms, ties broken by the smaller uid). It gives realistic, imperfect reports.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

N = 100


def mesh_terms(row: dict[str, str]) -> frozenset[str]:
    return frozenset(t.split("/")[0].strip().lower() for t in row["MeSH"].split(";") if t.strip())


def main(src: str) -> None:
    rows = [r for r in csv.DictReader(open(src, encoding="utf-8"))
            if r["findings"].strip() and r["impression"].strip()]
    chosen, pool = rows[:N], rows
    out = Path(__file__).resolve().parents[1] / "src" / "radixpert" / "examples"
    refs = [{"id": f"iu-{r['uid']}", "findings": r["findings"], "impression": r["impression"]}
            for r in chosen]
    cands = {}
    for r in chosen:
        a = mesh_terms(r)
        best = max((o for o in pool if o["uid"] != r["uid"]),
                   key=lambda o: (len(a & mesh_terms(o)) / len(a | mesh_terms(o)),
                                  -int(o["uid"])))
        cands[f"iu-{r['uid']}"] = f"{best['findings']} {best['impression']}"
    (out / "references.json").write_text(json.dumps(refs, indent=1) + "\n", encoding="utf-8")
    (out / "candidates.json").write_text(json.dumps(cands, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
