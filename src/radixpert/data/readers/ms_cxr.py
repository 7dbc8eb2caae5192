"""MS-CXR (phrase–box pairs on MIMIC-CXR images) as PhysioNet ships it.

`MS_CXR_Local_Alignment_v1.0.0.csv` / `…v1.1.0.csv` with columns `dicom_id, category_name,
label_text, path, x, y, w, h, image_width, image_height, split` (`x, y` the top-left corner and
`w, h` the size, in original pixels; several rows with the same dicom_id and phrase are several
boxes; shared/reference/datasets.md §8). One Study per image, its boxes normalised to 0–1 with
the phrase and the finding; `path` stays relative to the MIMIC-CXR-JPG root.

v1.0.0 has no `split` column (v1.1.0 added it). Without one, the split of each image comes
from MIMIC-CXR-JPG's `mimic-cxr-2.0.0-split.csv(.gz)` when `mimic_split=` names it (or it lies
in `--root`), as the public loaders that read v1.0.0 do; otherwise the split is left empty and
each study is counted, so `radixpert data split --with mimic.jsonl` can place it by patient.

    radixpert data prepare ms-cxr --root ms-cxr/1.1.0 --out ms_cxr.jsonl

Layout sources and a fixture of both versions: tests/data/fixtures/ms-cxr/README.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from radixpert.data.readers import Skip, iter_csv
from radixpert.data.study import Box, Image, Study
from radixpert.errors import ReaderError

COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
           "image_width", "image_height")  # fmt: skip
_SPLITS = {"val": "validate", "valid": "validate"}
_SUBJECT = re.compile(r"/p(\d{8})/")


def _csv(root: Path) -> Path:
    found = sorted(root.glob("MS_CXR_Local_Alignment_v*.csv"))
    if not found:
        raise ReaderError(f"{root}: no MS_CXR_Local_Alignment_v*.csv")
    return found[-1]  # the newest version shipped in the folder


def _mimic_splits(root: Path, mimic_split: str | None) -> tuple[dict[str, str], Path | None]:
    if mimic_split:
        path = Path(mimic_split)
        path = path if path.is_absolute() else root / path
    else:
        found = sorted(root.glob("mimic-cxr-2.0.0-split.csv*"))
        if not found:
            return {}, None
        path = found[0]
    rows = iter_csv(path, ("dicom_id", "split"))
    return {r["dicom_id"]: r["split"].strip() for _, r in rows}, path


def read(
    root: Path, *, csv_file: str | None = None, mimic_split: str | None = None
) -> Iterator[Study | Skip]:
    """Studies (one per image) with their phrase-grounding boxes.

    Args:
        csv_file: The alignment CSV under `root` (default: the newest
            `MS_CXR_Local_Alignment_v*.csv`).
        mimic_split: MIMIC-CXR-JPG's `mimic-cxr-2.0.0-split.csv.gz`, for v1.0.0's rows, which
            carry no split (a path, or relative to `root`).
    """
    root = Path(root)
    path = root / csv_file if csv_file else _csv(root)
    by_image: dict[str, list[tuple[int, dict[str, str]]]] = {}
    splits: dict[str, str] | None = None
    split_file = None
    for line, row in iter_csv(path, COLUMNS):
        if "split" not in row and splits is None:
            splits, split_file = _mimic_splits(root, mimic_split)
        by_image.setdefault(row["dicom_id"], []).append((line, row))
    for dicom_id, rows in by_image.items():
        boxes, clipped = [], 0
        first = rows[0][1]
        for line, row in rows:
            where = f"{path}: line {line}"
            try:
                x, y, w, h = (float(row[k]) for k in ("x", "y", "w", "h"))
                width, height = float(row["image_width"]), float(row["image_height"])
            except ValueError:
                raise ReaderError(
                    f"{where}: x, y, w, h, image_width, image_height must be numbers"
                ) from None
            if width <= 0 or height <= 0 or w <= 0 or h <= 0:
                raise ReaderError(f"{where}: non-positive box or image size")
            if row["path"] != first["path"] or row.get("split") != first.get("split"):
                raise ReaderError(
                    f"{where}: dicom_id {dicom_id} has another path or split than its first row"
                )
            raw = (x / width, y / height, (x + w) / width, (y + h) / height)
            box = tuple(min(1.0, max(0.0, v)) for v in raw)
            clipped += box != raw  # a box past the border is clipped, and counted
            boxes.append(Box(row["category_name"], *box, phrase=row["label_text"].strip()))
        m = _SUBJECT.search("/" + first["path"])
        split = first.get("split")
        if split is None:
            split = (splits or {}).get(dicom_id, "")
            if not split:
                where = f"{path}: line {rows[0][0]}"
                detail = (f"dicom_id {dicom_id} not in {split_file.name}" if split_file
                          else "no split column; give mimic_split=")  # fmt: skip
                yield Skip("split not given", where, detail, part="field")
        yield Study(
            id=f"ms-cxr-{dicom_id}",
            dataset="ms-cxr",
            split=_SPLITS.get(split, split),
            patient_id=m.group(1) if m else "",
            # MS-CXR annotates frontal images only (PA or AP: the release does not say which).
            images=[Image(first["path"], "FRONTAL")],
            boxes=boxes,
            extra={"dicom_id": dicom_id, "clipped_boxes": clipped, "source_file": path.name},
        ).validate(f"{path}: dicom_id {dicom_id}")
