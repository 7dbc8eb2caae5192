"""PadChest-GR: grounded report sentences (English and Spanish) with boxes.

⚠ Layout as read by RadVLM's PadChest-GR loader (the publisher's own documentation was not
available here): a folder with `grounded_reports_<date>.json` (a list of
`{"ImageID", "findings": [{"sentence_en", "sentence_es", "boxes": [[x1, y1, x2, y2], ...],
"labels": [...]}, ...]}`), `master_table.csv` (`ImageID`, `split` ∈ train / validation / test,
`PatientID` when present) and the images in `images_grounding/<ImageID>`. Boxes are taken as
0–1 coordinates when every value is ≤ 1, else as pixels of the image (its size read from the
file header); both cases are recorded in `extra["box_units"]`.

One Study per image: the grounded English sentences form the findings, each box keeps its
sentence as phrase and the sentence's first label (or "finding"); the Spanish sentences are
kept in `extra`.

    radixpert data prepare padchest-gr --root PadChest_GR --out padchest_gr.jsonl
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from radixpert.data.readers import iter_csv
from radixpert.data.study import Box, Image, Study
from radixpert.errors import ReaderError


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image as PILImage

    if not path.is_file():
        raise ReaderError(f"{path}: image not found (needed to normalise pixel boxes)")
    try:
        with PILImage.open(path) as im:
            return im.size
    except OSError as e:
        raise ReaderError(f"{path}: cannot read the image header ({e})") from None


def read(root: Path, *, reports_file: str | None = None) -> Iterator[Study]:
    """Studies (one per grounded image) with their sentence boxes."""
    root = Path(root)
    if reports_file:
        path = root / reports_file
    else:
        found = sorted(root.glob("grounded_reports_*.json"))
        if not found:
            raise ReaderError(f"{root}: no grounded_reports_*.json")
        path = found[-1]
    table = root / "master_table.csv"
    meta = {row["ImageID"]: row for _, row in iter_csv(table, ("ImageID", "split"))}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReaderError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(entries, list):
        raise ReaderError(f"{path}: expected a list of image entries")
    for k, entry in enumerate(entries):
        where = f"{path}: entry {k}"
        image_id = entry.get("ImageID") if isinstance(entry, dict) else None
        if not image_id:
            raise ReaderError(f"{where}: no 'ImageID'")
        if image_id not in meta:
            raise ReaderError(f"{where}: ImageID {image_id!r} is not in {table}")
        row = meta[image_id]
        image_rel = f"images_grounding/{image_id}"
        sentences_en, sentences_es, boxes, units = [], [], [], "normalised"
        size: tuple[int, int] | None = None
        for j, finding in enumerate(entry.get("findings") or []):
            en = str(finding.get("sentence_en") or "").strip()
            sentences_en.append(en)
            sentences_es.append(str(finding.get("sentence_es") or "").strip())
            labels = finding.get("labels") or []
            label = str(labels[0]) if labels else "finding"
            for b in finding.get("boxes") or []:
                if not isinstance(b, (list, tuple)) or len(b) != 4:
                    raise ReaderError(f"{where}: findings[{j}]: a box must be 4 numbers")
                x1, y1, x2, y2 = (float(v) for v in b)
                if max(x1, y1, x2, y2) > 1.0:
                    size = size or _image_size(root / image_rel)
                    x1, x2, y1, y2 = x1 / size[0], x2 / size[0], y1 / size[1], y2 / size[1]
                    units = "pixels"
                boxes.append(
                    Box(label, *(min(1.0, max(0.0, v)) for v in (x1, y1, x2, y2)), phrase=en)
                )
        split = row["split"].strip()
        yield Study(
            id=f"padchest-gr-{Path(image_id).stem}",
            dataset="padchest-gr",
            split={"validation": "validate", "valid": "validate"}.get(split, split),
            patient_id=(row.get("PatientID") or "").strip(),
            images=[Image(image_rel, (row.get("Projection") or "").strip())],
            findings=" ".join(s for s in sentences_en if s),
            boxes=boxes,
            extra={"image_id": image_id, "sentences_es": sentences_es, "box_units": units},
        ).validate(where)
