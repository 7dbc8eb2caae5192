"""CheXpert Plus: the report CSV with section columns, images, and CheXbert label files.

Layout (tests/data/fixtures/chexpert-plus/README.md has the sources):

    df_chexpert_plus_240401.csv   one row per image: path_to_image, path_to_dcm,
                                  frontal_lateral, ap_pa, deid_patient_id,
                                  patient_report_date_order, report, section_* (14 columns),
                                  age, sex, race, ..., split (train / valid)
    chexbert_labels/impression_fixed.json, findings_fixed.json
                                  JSON Lines: path_to_image + the 14 observations,
                                  1.0 / 0.0 / -1.0 / null, labelled from that section
    PNG/train/patient42142/study5/view1_frontal.png, ...

`path_to_image` names CheXpert's JPG (`train/patient42142/study5/view1_frontal.jpg`), the same
path as in CheXpert's own release; the PNG release holds it as `PNG/<path>.png` (ReXrank's
CheXpert Plus images are laid out so too). `image_dir` and `image_ext` choose: `image_dir=""
image_ext=.jpg` reads the images of a CheXpert-v1.0 folder instead.

Rows are grouped into studies by `<split>/<patient>/<study>` of `path_to_image`, wherever the
rows of a study lie in the file (two passes over the CSV; only the image paths and views of the
studies not yet written are held in memory). The report sections come from the section columns
(a missing section is an empty cell, or `nan` / `None` in pandas-written copies: ""), the
indication from the clinical-history (else history) column. Views as CheXpert's: `ap_pa` AP / PA
for frontals (`FRONTAL` without one), LL / RL / `LATERAL` for laterals. The patient id is the
`patient<N>` folder of `path_to_image`, the id CheXpert's own CSVs use, so that `splits`
finds a patient of both datasets as one; `deid_patient_id` is kept in `extra`.

    radixpert data prepare chexpert-plus --root chexpert_plus -o chexpert_plus.jsonl
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from radixpert.data.readers import Skip, iter_csv
from radixpert.data.readers.chexpert import chexpert_view
from radixpert.data.splits import normalise_split
from radixpert.data.study import Image, Study
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

DATASET = "chexpert-plus"
REQUIRED = ("path_to_image", "frontal_lateral", "ap_pa", "deid_patient_id", "report",
            "section_findings", "section_impression", "split")  # fmt: skip
LABEL_FILES = {
    "impression": "chexbert_labels/impression_fixed.json",
    "findings": "chexbert_labels/findings_fixed.json",
}
_MISSING = ("", "nan", "none", "null")
Labels = tuple[int | None, ...]  # in OBSERVATIONS order


def _labels(path: Path) -> dict[str, Labels]:
    """path_to_image -> labels, from a CheXbert JSON Lines file."""
    if not path.is_file():
        raise ReaderError(
            f"{path}: no such file (CheXpert Plus's chexbert_labels/; labels=none reads the "
            "studies without labels)"
        )
    out: dict[str, Labels] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)  # also takes the bare NaN pandas writes
            except json.JSONDecodeError as e:
                raise ReaderError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("path_to_image"), str):
                raise ReaderError(f"{path}: line {n}: expected an object with 'path_to_image'")
            values = []
            for o in OBSERVATIONS:
                v = rec.get(o)
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    values.append(None)
                elif v in (1, 0, -1) and not isinstance(v, bool):
                    values.append(int(v))
                else:
                    raise ReaderError(
                        f"{path}: line {n}: {o!r} = {v!r}, expected 1.0, 0.0, -1.0 or null"
                    )
            out.setdefault(rec["path_to_image"], tuple(values))
    return out


def _parts(path_to_image: str, where: str) -> tuple[str, str, str]:
    parts = PurePosixPath(path_to_image.strip()).parts
    if len(parts) != 4 or not parts[1].startswith("patient") or not parts[2].startswith("study"):
        raise ReaderError(
            f"{where}: path_to_image {path_to_image!r} is not "
            "<split>/patient<N>/study<M>/view<K>_<frontal|lateral>.jpg"
        )
    return parts[0], parts[1], parts[2]


def _cell(row: dict[str, str], column: str) -> str:
    """The cell's text, "" for pandas' stand-ins for nothing."""
    text = (row.get(column) or "").strip()
    return "" if text.lower() in _MISSING else text


def _section(row: dict[str, str], column: str) -> str:
    """A section's text on one line: the report is hard-wrapped at about 65 characters and
    padded with blank lines (`\n \n`), as MIMIC-CXR's sections are read."""
    return " ".join(_cell(row, column).split())


def read(
    root: Path,
    *,
    csv_file: str = "df_chexpert_plus_240401.csv",
    labels: str = "impression",
    image_dir: str = "PNG",
    image_ext: str = ".png",
) -> Iterator[Study | Skip]:
    """Studies grouped from the per-image rows of the report CSV.

    Args:
        csv_file: The report CSV under `root`.
        labels: The CheXbert labels that fill `Study.labels`: `impression`
            (chexbert_labels/impression_fixed.json, the section CheXpert's own labels come
            from), `findings` (findings_fixed.json), or `none`.
        image_dir: The image folder under `root` (`PNG` for the PNG release; "" when the
            images lie at `path_to_image` itself, as in a CheXpert-v1.0 folder).
        image_ext: The suffix the image paths get (`.png` for the PNG release, `.jpg` for
            CheXpert's JPGs).
    """
    root = Path(root)
    path = root / csv_file
    if labels not in (*LABEL_FILES, "none"):
        raise ReaderError(f"labels={labels!r}: expected impression, findings or none")
    table = _labels(root / LABEL_FILES[labels]) if labels != "none" else None
    prefix = PurePosixPath(image_dir)

    # Pass 1: the images and views of every study.
    groups: dict[str, list[tuple[Image, str]]] = {}
    for line, row in iter_csv(path, REQUIRED):
        where = f"{path}: line {line}"
        split, patient, study = _parts(row["path_to_image"], where)
        name = row["path_to_image"].strip()
        images = groups.setdefault(f"{split}/{patient}/{study}", [])
        if any(name == known for _, known in images):
            yield Skip("image listed twice", where, name, part="image")
            continue
        view, problem = chexpert_view(row["frontal_lateral"], row["ap_pa"])
        if problem:
            yield Skip("no view", where, problem, part="view")
        rel = prefix / PurePosixPath(name).with_suffix(image_ext)
        images.append((Image(str(rel), view), name))

    # Pass 2: one Study per study, at its first row (whose report the other rows repeat).
    for line, row in iter_csv(path, REQUIRED):
        where = f"{path}: line {line}"
        split, patient, study = _parts(row["path_to_image"], where)
        key = f"{split}/{patient}/{study}"
        images = groups.pop(key, None)
        if images is None:
            continue  # a later row of a study already written
        study_labels: dict[str, int | None] = {}
        if table is not None:
            found = {table[name] for _, name in images if name in table}
            if len(found) == 1:
                study_labels = dict(zip(OBSERVATIONS, found.pop(), strict=True))
            elif not found:
                yield Skip("no CheXbert labels for the study", where,
                           LABEL_FILES[labels], part="label")  # fmt: skip
            else:
                yield Skip("CheXbert labels differ between the images of one study", where,
                           LABEL_FILES[labels], part="label")  # fmt: skip
        extra: dict[str, Any] = {
            "report": _cell(row, "report"),
            "deid_patient_id": _cell(row, "deid_patient_id"),
        }
        for column in ("patient_report_date_order", "sex"):
            if _cell(row, column):
                extra[column] = _cell(row, column)
        age = _cell(row, "age")  # pandas writes 77.0
        if age:
            try:
                extra["age"] = int(float(age)) if float(age).is_integer() else float(age)
            except ValueError:
                yield Skip("age not a number", where, repr(age), part="field")
        yield Study(
            id=f"chexpert-plus-{split}-{patient}-{study}",
            dataset=DATASET,
            split=normalise_split(_cell(row, "split")),
            patient_id=patient,
            images=[image for image, _ in images],
            indication=_section(row, "section_clinical_history")
            or _section(row, "section_history"),
            comparison=_section(row, "section_comparison"),
            findings=_section(row, "section_findings"),
            impression=_section(row, "section_impression"),
            labels=study_labels,
            extra=extra,
        ).validate(where)
