"""CheXpert Plus: the report CSV with section columns, images, and CheXbert label files.

Layout (shared/reference/datasets.md §2): `df_chexpert_plus_240401.csv` (one row per image:
`path_to_image, frontal_lateral, ap_pa, deid_patient_id, report, section_*, split`, ...),
images under `PNG/` (⚠ the CSV names them `.jpg`; `image_ext` chooses what the Study records),
labels `chexbert_labels/findings_fixed.json` (JSON Lines: `path_to_image` + the 14 names,
1.0 / 0.0 / -1.0 / null). Rows are grouped into studies by `<split>/<patient>/<study>` of
`path_to_image`; the report sections come from the section columns, indication from the
clinical-history (else history) column; pandas' `nan` in a text cell is empty text. Views are
normalised (`ap_pa` AP / PA, else `frontal_lateral`). The patient id is the `patient<N>` folder of
`path_to_image`, the id CheXpert's own CSVs use, so that leakage is checked across the two
(`deid_patient_id` is kept in `extra`).

    radixpert data prepare chexpert-plus --root chexpert_plus --out chexpert_plus.jsonl
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

from radixpert.data.readers import Skip, iter_csv
from radixpert.data.study import Image, Study
from radixpert.data.views import normalise_view
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

REQUIRED = ("path_to_image", "frontal_lateral", "ap_pa", "deid_patient_id", "report",
            "section_findings", "section_impression", "split")  # fmt: skip


def _labels(path: Path) -> dict[str, dict[str, int | None]]:
    """path_to_image -> labels, from the CheXbert JSON Lines file (if shipped)."""
    out: dict[str, dict[str, int | None]] = {}
    if not path.is_file():
        return out
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ReaderError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
            labels: dict[str, int | None] = {}
            for o in OBSERVATIONS:
                v = rec.get(o)
                if (
                    v is not None
                    and not (isinstance(v, float) and math.isnan(v))
                    and v not in (1, 0, -1)
                ):
                    raise ReaderError(
                        f"{path}: line {n}: {o!r} = {v!r}, expected 1.0, 0.0, -1.0 or null"
                    )
                labels[o] = None if v is None or v != v else int(v)
            out[rec.get("path_to_image", "")] = labels
    return out


def _study_key(path_to_image: str, where: str) -> str:
    parts = path_to_image.split("/")
    if len(parts) < 4:
        raise ReaderError(
            f"{where}: path_to_image {path_to_image!r} is not <split>/<patient>/<study>/<view>"
        )
    return "/".join(parts[:3])


def _cell(row: dict[str, str], column: str) -> str:
    text = (row.get(column) or "").strip()
    return "" if text.lower() in ("nan", "none") else text


def _view(row: dict[str, str]) -> str | None:
    ap_pa = normalise_view(row["ap_pa"])
    if ap_pa:
        return ap_pa
    return normalise_view(row["frontal_lateral"])


def read(
    root: Path,
    *,
    csv_file: str = "df_chexpert_plus_240401.csv",
    labels_file: str = "chexbert_labels/findings_fixed.json",
    image_ext: str = ".png",
) -> Iterator[Study | Skip]:
    """Studies grouped from the per-image rows (rows of one study are adjacent in the CSV).

    Args:
        csv_file: The report CSV under `root`.
        labels_file: The CheXbert labels (JSON Lines) under `root`; absent: no labels.
        image_ext: The suffix image paths get (`.png`: the PNG release under `PNG/`).
    """
    root = Path(root)
    path = root / csv_file
    labels = _labels(root / labels_file)
    current: Study | None = None
    key = ""
    seen: set[str] = set()
    for line, row in iter_csv(path, REQUIRED):
        where = f"{path}: line {line}"
        k = _study_key(row["path_to_image"], where)
        image_path = "PNG/" + str(Path(row["path_to_image"]).with_suffix(image_ext))
        view = _view(row)
        if view is None:
            yield Skip("not a view", where, f"{row['ap_pa']!r} / {row['frontal_lateral']!r}",
                       part="view")  # fmt: skip
            view = ""
        if current is not None and k == key:
            current.images.append(Image(image_path, view))
            continue
        if current is not None:
            yield current.validate()
        if k in seen:
            raise ReaderError(
                f"{where}: rows of study {k!r} are not adjacent; sort the CSV by path_to_image"
            )
        seen.add(k)
        key = k
        lab = labels.get(row["path_to_image"], {})
        current = Study(
            id=f"chexpert-plus-{k.replace('/', '-')}",
            dataset="chexpert-plus",
            split={"valid": "validate"}.get(row["split"], row["split"]),
            patient_id=k.split("/")[1],
            images=[Image(image_path, view)],
            indication=(_cell(row, "section_clinical_history") or _cell(row, "section_history")),
            comparison=_cell(row, "section_comparison"),
            findings=_cell(row, "section_findings"),
            impression=_cell(row, "section_impression"),
            labels=lab,
            extra={"report": row["report"], "deid_patient_id": row["deid_patient_id"]},
        )  # fmt: skip
    if current is not None:
        yield current.validate()
