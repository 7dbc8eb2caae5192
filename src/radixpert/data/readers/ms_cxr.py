"""MS-CXR (phrase–box pairs on MIMIC-CXR images) as PhysioNet ships it.

`MS_CXR_Local_Alignment_v1.0.0.csv` / `…v1.1.0.csv` with columns `dicom_id, category_name,
label_text, path, x, y, w, h, image_width, image_height, split` (`x, y` the top-left corner and
`w, h` the size, in original pixels; several rows with the same dicom_id and phrase are several
boxes; shared/reference/datasets.md §8). One Study per image, its boxes normalised to 0–1 with
the phrase and the finding; `path` stays relative to the MIMIC-CXR-JPG root.

    radixpert data prepare ms-cxr --root ms-cxr/1.1.0 --out ms_cxr.jsonl
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from radixpert.data.readers import iter_csv
from radixpert.data.study import Box, Image, Study
from radixpert.errors import ReaderError

COLUMNS = ("dicom_id", "category_name", "label_text", "path", "x", "y", "w", "h",
           "image_width", "image_height", "split")  # fmt: skip
_SUBJECT = re.compile(r"/p(\d{8})/")


def _csv(root: Path) -> Path:
    found = sorted(root.glob("MS_CXR_Local_Alignment_v*.csv"))
    if not found:
        raise ReaderError(f"{root}: no MS_CXR_Local_Alignment_v*.csv")
    return found[-1]  # the newest version shipped in the folder


def read(root: Path, *, csv_file: str | None = None) -> Iterator[Study]:
    """Studies (one per image) with their phrase-grounding boxes."""
    root = Path(root)
    path = root / csv_file if csv_file else _csv(root)
    by_image: dict[str, list[tuple[int, dict[str, str]]]] = {}
    for line, row in iter_csv(path, COLUMNS):
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
            if row["path"] != first["path"] or row["split"] != first["split"]:
                raise ReaderError(
                    f"{where}: dicom_id {dicom_id} has another path or split than its first row"
                )
            raw = (x / width, y / height, (x + w) / width, (y + h) / height)
            box = tuple(min(1.0, max(0.0, v)) for v in raw)
            clipped += box != raw  # a box past the border is clipped, and counted
            boxes.append(Box(row["category_name"], *box, phrase=row["label_text"].strip()))
        m = _SUBJECT.search("/" + first["path"])
        yield Study(
            id=f"ms-cxr-{dicom_id}",
            dataset="ms-cxr",
            split={"val": "validate"}.get(first["split"], first["split"]),
            patient_id=m.group(1) if m else "",
            images=[Image(first["path"], "")],
            boxes=boxes,
            extra={"dicom_id": dicom_id, "clipped_boxes": clipped, "source_file": path.name},
        ).validate(f"{path}: dicom_id {dicom_id}")
