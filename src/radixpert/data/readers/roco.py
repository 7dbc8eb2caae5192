"""ROCO v2 (radiology images with captions and UMLS concepts, many modalities).

Layout (shared/reference/datasets.md §6): `{train,valid,test}/<ID>.jpg`,
`{split}_captions.csv` (`ID,Caption`), `{split}_concepts.csv` and `{split}_concepts_manual.csv`
(`ID,CUIs`, `;`-separated; manual rows can be empty), `cui_mapping.csv` (`CUI,Canonical name`);
tests/data/fixtures/roco-v2/README.md cites the files. The caption (stripped: the release has
leading and trailing spaces) becomes the study's findings; the modality comes from the manual
concepts' canonical names in the shipped `cui_mapping.csv` (computed tomography -> CT, magnetic
resonance -> MR, ultrasonography -> US, plain x-ray / radiography -> XR, angiography -> XA,
positron emission -> PT), from the automatic concepts when the manual row is empty, "" when none
names a modality. The manual X-ray directionality concepts are the image's view (`C1996865`
Postero-Anterior -> PA, `C1999039` Anterior-Posterior -> AP, `C0205129` Sagittal -> LATERAL).
A row with an empty caption is skipped, and a concept missing from `cui_mapping.csv` is counted
(its name stays empty), never dropped silently.

    radixpert data prepare roco-v2 --root ROCOv2 --out roco.jsonl
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from radixpert.data.readers import Skip, iter_csv
from radixpert.data.study import Image, Study
from radixpert.errors import ReaderError

SPLITS = {"train": "train", "valid": "validate", "test": "test"}
_MODALITY_WORDS = (
    ("computed tomography", "CT"),
    ("magnetic resonance", "MR"),
    ("ultrasonograph", "US"),
    ("plain x-ray", "XR"),
    ("radiograph", "XR"),
    ("angiogra", "XA"),
    ("positron", "PT"),
)


# The manual directionality concepts (curated for X-ray images only).
_VIEW_CUIS = {"C1996865": "PA", "C1999039": "AP", "C0205129": "LATERAL"}


def modality_of(names: list[str]) -> str:
    low = " | ".join(names).lower()
    return next((code for word, code in _MODALITY_WORDS if word in low), "")


def _concepts(path: Path) -> dict[str, list[str]]:
    if not path.is_file():
        return {}
    return {
        row["ID"]: [c.strip() for c in row["CUIs"].split(";") if c.strip()]
        for _, row in iter_csv(path, ("ID", "CUIs"))
    }


def read(
    root: Path, *, splits: tuple[str, ...] = ("train", "valid", "test")
) -> Iterator[Study | Skip]:
    """Studies (one per image) of the chosen splits; `extra` holds `cuis` (the row of
    `{split}_concepts.csv`), `concepts` (their canonical names) and `manual_cuis`.

    Args:
        splits: The splits whose `{split}_captions.csv` to read (`train`, `valid`, `test`).
    """
    root = Path(root)
    mapping_file = root / "cui_mapping.csv"
    names = ({r["CUI"]: r["Canonical name"] for _, r in iter_csv(mapping_file,
              ("CUI", "Canonical name"))} if mapping_file.is_file() else {})  # fmt: skip
    found = False
    for split in splits:
        captions = root / f"{split}_captions.csv"
        if not captions.is_file():
            continue
        found = True
        manual = _concepts(root / f"{split}_concepts_manual.csv")
        auto = _concepts(root / f"{split}_concepts.csv")
        for line, row in iter_csv(captions, ("ID", "Caption")):
            sid = row["ID"].strip()
            if not sid:
                raise ReaderError(f"{captions}: line {line}: empty ID")
            where = f"{captions}: line {line}"
            if not row["Caption"].strip():
                yield Skip("empty caption", where, sid)
                continue
            hand, cuis = manual.get(sid, []), auto.get(sid, [])
            concept_names = [names.get(c, "") for c in cuis]
            for c in dict.fromkeys(hand + cuis):
                if names and c not in names:
                    yield Skip("concept not in cui_mapping.csv", where, c, part="label")
            modality = modality_of([names.get(c, "") for c in hand]) if hand else ""
            view = next((_VIEW_CUIS[c] for c in hand if c in _VIEW_CUIS), "")
            yield Study(
                id=sid,
                dataset="roco-v2",
                split=SPLITS.get(split, split),
                images=[Image(f"{split}/{sid}.jpg", view)],
                findings=row["Caption"].strip(),
                modality=modality or modality_of(concept_names),
                extra={"cuis": cuis, "concepts": concept_names, "manual_cuis": hand},
            ).validate(f"{captions}: line {line}")
    if not found:
        raise ReaderError(f"{root}: no {{split}}_captions.csv for splits {', '.join(splits)}")
