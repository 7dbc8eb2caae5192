"""PadChest: the label CSV with Spanish reports, projections and label lists.

Layout (shared/reference/datasets.md §5): `PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`
(or `.csv.gz`; ⚠ the README omits the date, so any `PADCHEST_chest_x_ray_images_labels*.csv*`
is accepted), one row per image with `ImageID, ImageDir, StudyID, PatientID, Projection,
Report, Labels, Localizations, ...`; images are 16-bit PNGs at `<ImageDir>/<ImageID>`.
`Report` is Spanish, stemmed and tokenised; `Labels` a Python-list string
(`['pacemaker', 'chronic changes']`), read with `ast.literal_eval` (never `eval`).

Rows are grouped by StudyID. The report stays Spanish (`language="es"`) unless a translator is
given: `translate="module:function"` names a local function `str -> str` (no outside service
is called by default). Labels: PadChest lists findings that are present; those that map to a
CheXpert observation are 1, `normal` gives No Finding 1, everything else stays None (PadChest
does not state negatives). Projections `EXCLUDE` and `UNK` are kept with their view name;
filter views later with `radixpert.data.images.is_frontal`.

    radixpert data prepare padchest --root padchest --out padchest.jsonl
"""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from radixpert.data.readers import iter_csv
from radixpert.data.study import Image, Study
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

REQUIRED = ("ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Report", "Labels")

# PadChest label (lower case) -> CheXpert observation. Devices all map to Support Devices.
TO_CHEXPERT = {
    "normal": "No Finding",
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax",
    "atelectasis": "Atelectasis",
    "laminar atelectasis": "Atelectasis",
    "consolidation": "Consolidation",
    "pneumonia": "Pneumonia",
    "nodule": "Lung Lesion",
    "multiple nodules": "Lung Lesion",
    "mass": "Lung Lesion",
    "pulmonary mass": "Lung Lesion",
    "pulmonary edema": "Edema",
    "infiltrates": "Lung Opacity",
    "interstitial pattern": "Lung Opacity",
    "alveolar pattern": "Lung Opacity",
    "rib fracture": "Fracture",
    "clavicle fracture": "Fracture",
    "vertebral fracture": "Fracture",
    "humeral fracture": "Fracture",
    "pleural thickening": "Pleural Other",
    "apical pleural thickening": "Pleural Other",
    "mediastinal enlargement": "Enlarged Cardiomediastinum",
    "pacemaker": "Support Devices",
    "dual chamber device": "Support Devices",
    "single chamber device": "Support Devices",
    "nsg tube": "Support Devices",
    "endotracheal tube": "Support Devices",
    "central venous catheter": "Support Devices",
    "central venous catheter via jugular vein": "Support Devices",
    "central venous catheter via subclavian vein": "Support Devices",
    "tracheostomy tube": "Support Devices",
    "chest drain tube": "Support Devices",
    "electrical device": "Support Devices",
}


def _label_list(value: str, where: str) -> list[str]:
    if not value.strip():
        return []
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise ReaderError(f"{where}: column 'Labels' = {value[:60]!r} is not a list") from None
    if not isinstance(parsed, list):
        raise ReaderError(f"{where}: column 'Labels' is not a list")
    return [str(x).strip() for x in parsed if str(x).strip()]


def _translator(spec: str | None) -> Callable[[str], str] | None:
    if not spec:
        return None
    module, _, attr = spec.partition(":")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise ReaderError(f"translate={spec!r}: no function {attr!r} in {module!r}")
    return fn


def read(
    root: Path, *, csv_file: str | None = None, translate: str | None = None
) -> Iterator[Study]:
    """Studies grouped by StudyID (labels are the union over the study's images)."""
    root = Path(root)
    if csv_file:
        path = root / csv_file
    else:
        found = sorted(root.glob("PADCHEST_chest_x_ray_images_labels*.csv*"))
        if not found:
            raise ReaderError(f"{root}: no PADCHEST_chest_x_ray_images_labels*.csv(.gz)")
        path = found[-1]
    tr = _translator(translate)
    studies: dict[str, dict] = {}
    images: dict[str, list[Image]] = defaultdict(list)
    for line, row in iter_csv(path, REQUIRED):
        where = f"{path}: line {line}"
        sid = row["StudyID"].strip()
        if not sid:
            raise ReaderError(f"{where}: empty StudyID")
        images[sid].append(
            Image(f"{row['ImageDir'].strip()}/{row['ImageID'].strip()}", row["Projection"].strip())
        )
        rec = studies.setdefault(
            sid,
            {
                "patient": row["PatientID"].strip(),
                "labels": set(),
                "report": row["Report"].strip(),
                "line": line,
            },
        )
        rec["labels"].update(x.lower() for x in _label_list(row["Labels"], where))
    for sid, rec in studies.items():
        labels: dict[str, int | None] = {o: None for o in OBSERVATIONS}
        for name in rec["labels"]:
            if name in TO_CHEXPERT:
                labels[TO_CHEXPERT[name]] = 1
        if any(v == 1 for o, v in labels.items() if o not in ("No Finding", "Support Devices")):
            labels["No Finding"] = None
        report = rec["report"]
        text = tr(report) if tr and report else report
        yield Study(
            id=f"padchest-{sid}",
            dataset="padchest",
            patient_id=rec["patient"],
            images=images[sid],
            findings=text,
            labels=labels if rec["labels"] else {},
            language="en" if tr else "es",
            report_source="translated" if tr and report else "original",
            extra={"padchest_labels": sorted(rec["labels"]), "report_es": report},
        ).validate(f"{path}: StudyID {sid} (first line {rec['line']})")
