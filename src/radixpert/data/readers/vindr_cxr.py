"""VinDr-CXR as PhysioNet ships it: per-radiologist boxes fused with weighted box fusion.

Layout (shared/reference/datasets.md §7): `annotations/annotations_{train,test}.csv`
(`image_id, rad_id, class_name, x_min, y_min, x_max, y_max`, pixel coordinates of the original
image; `No finding` rows have empty boxes), `annotations/image_labels_{train,test}.csv`
(`image_id, rad_id` + 28 label columns, 0/1; ⚠ `Other disease` in test, `Other diseases` in
train), images `{train,test}/<image_id>.dicom` (read for their Rows/Columns only).

Per image: each radiologist's boxes of one class are fused with weighted box fusion (the
`ensemble-boxes` package: `iou_thr` 0.5 by default) and a fused box keeps the number of
radiologists behind it (`extra["box_support"]`); `min_support` drops boxes fewer radiologists
drew (default 1: keep all). Image labels are a majority vote of the radiologists, mapped to
the CheXpert observations VinDr covers (others stay None; `No Finding` is 1 when the majority
said `No finding`, else None, never 0). Boxes agree with the labels: a box of a finding that
the majority did not label (one radiologist of three drew it) is left out and counted, so a
report that says the finding is absent never comes with its box.

The test set is the consensus of five radiologists and its CSVs have no `rad_id` column: it is
read as one reader. An image listed without its DICOM file is skipped (counted), since its size
is needed to normalise the boxes. All images are PA (the publisher's description); no patient
id is published (the de-identified DICOMs keep none), so `patient_id` is empty. VinDr ships no
reports: findings and impression are synthesised from the labels and marked
`report_source="synthesised-from-labels"`.

    radixpert data prepare vindr-cxr --root vindr-cxr/1.0.0 --out vindr.jsonl
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from radixpert.data.readers import Skip, iter_csv
from radixpert.data.study import Box, Image, Study
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

# VinDr finding (as in the CSVs) -> CheXpert observation; unmapped ones stay in `extra`.
TO_CHEXPERT = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Infiltration": "Lung Opacity",
    "Lung Opacity": "Lung Opacity",
    "Nodule/Mass": "Lung Lesion",
    "Lung tumor": "Lung Lesion",
    "Pleural effusion": "Pleural Effusion",
    "Pleural thickening": "Pleural Other",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Rib fracture": "Fracture",
    "Clavicle fracture": "Fracture",
    "No finding": "No Finding",
}
COVERED = sorted(set(TO_CHEXPERT.values()))
# The radiologist column: `rad_id` in the files seen; one third-party loader (RadVLM) renames a
# `rad_ID` spelling, so both are read.
RAD_COLUMNS = ("rad_id", "rad_ID")


def _rad(row: dict[str, str]) -> str:
    """The row's radiologist (R1..R17), or "consensus" in the test files, which have none."""
    return next((row[c] for c in RAD_COLUMNS if c in row), "consensus")


def _size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the DICOM header, without reading pixels; None without the file."""
    if not path.is_file():
        return None
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Columns), int(ds.Rows)
    except Exception as e:  # pydicom raises several types for broken files
        raise ReaderError(f"{path}: cannot read DICOM Rows/Columns ({e})") from None


def _fuse(per_rad: dict[str, list[tuple[float, ...]]], iou_thr: float) -> list[tuple]:
    """WBF over radiologists of one class; returns (box, support) pairs."""
    from ensemble_boxes import weighted_boxes_fusion

    rads = sorted(per_rad)
    boxes = [per_rad[r] for r in rads]
    fused, scores, _ = weighted_boxes_fusion(
        boxes, [[1.0] * len(b) for b in boxes], [[0] * len(b) for b in boxes],
        iou_thr=iou_thr, skip_box_thr=0.0,
    )  # fmt: skip
    # a fused box's score is (boxes merged) / (radiologists), i.e. its support share
    out = [(tuple(float(v) for v in b), round(float(s) * len(rads))) for b, s in zip(fused, scores)]
    return sorted(out, key=lambda bs: (-bs[1], bs[0]))  # most support first, then left to right


def read(
    root: Path,
    *,
    splits: tuple[str, ...] = ("train", "test"),
    iou_thr: float = 0.5,
    min_support: int = 1,
    seed: int = 0,
) -> Iterator[Study | Skip]:
    """Studies (one per image) with fused boxes, majority-vote labels and template reports.

    Args:
        splits: Which annotation files to read (`train`, `test`).
        iou_thr: IoU above which boxes of one class from different radiologists are fused.
        min_support: Keep fused boxes drawn by at least this many radiologists.
        seed: Seed of the template reports.
    """
    from radixpert.data.templates import report_from_labels

    root = Path(root)
    iou_thr, min_support = float(iou_thr), int(min_support)
    for split in splits:
        ann = root / "annotations" / f"annotations_{split}.csv"
        lab = root / "annotations" / f"image_labels_{split}.csv"
        boxes: dict[str, dict[str, dict[str, list]]] = defaultdict(lambda: defaultdict(dict))
        for line, row in iter_csv(
            ann, ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")
        ):
            if row["class_name"] == "No finding" or not row["x_min"].strip():
                continue
            try:
                box = tuple(float(row[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
            except ValueError:
                raise ReaderError(f"{ann}: line {line}: box coordinates must be numbers") from None
            per_class = boxes[row["image_id"]][row["class_name"]]
            per_class.setdefault(_rad(row), []).append(box)
        votes: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for line, row in iter_csv(lab, ("image_id",)):
            for name, value in row.items():
                name = "Other diseases" if name == "Other disease" else name  # test vs train
                if name == "image_id" or name in RAD_COLUMNS:
                    continue
                if value.strip() not in ("0", "1", "0.0", "1.0"):
                    raise ReaderError(
                        f"{lab}: line {line}: column {name!r} = {value!r}, expected 0 or 1"
                    )
                votes[row["image_id"]][name].append(int(float(value)))
        for image_id in sorted(set(boxes) - set(votes)):
            yield Skip("boxes of an image without labels", f"{ann} image {image_id}")
        for image_id in sorted(votes):
            path = root / split / f"{image_id}.dicom"
            size = _size(path)
            if size is None:
                yield Skip("image file missing (its size is needed)", f"{lab} image {image_id}",
                           f"{split}/{image_id}.dicom")  # fmt: skip
                continue
            width, height = size
            present = {n for n, v in votes[image_id].items() if 2 * sum(v) > len(v)}
            labels = {o: None for o in OBSERVATIONS}
            for o in COVERED:
                labels[o] = 0
            for name in present:
                if name in TO_CHEXPERT:
                    labels[TO_CHEXPERT[name]] = 1
            # CheXpert: never 0, blank when something is found — also a VinDr finding with no
            # CheXpert observation (Aortic enlargement, Tuberculosis, ...) or no majority at all
            labels["No Finding"] = 1 if present == {"No finding"} else None
            out_boxes, support = [], []
            for cls, per_rad in sorted(boxes.get(image_id, {}).items()):
                if cls not in present:
                    n = sum(len(b) for b in per_rad.values())
                    yield Skip("box of a finding the majority did not label",
                               f"{ann} image {image_id}", f"{cls}: {n} box(es) by "
                               f"{len(per_rad)} of {len(next(iter(votes[image_id].values())))} "
                               "radiologists", part="box")  # fmt: skip
                    continue
                norm = {r: [(b[0] / width, b[1] / height, b[2] / width, b[3] / height)
                            for b in bs] for r, bs in per_rad.items()}  # fmt: skip
                for b, n in _fuse(norm, iou_thr):
                    if n >= min_support:
                        clipped = [min(1.0, max(0.0, v)) for v in b]
                        out_boxes.append(Box(cls, *clipped))
                        support.append(n)
            rng = random.Random(f"{seed}:{image_id}")
            findings, impression = report_from_labels(labels, rng)
            yield Study(
                id=f"vindr-{image_id}",
                dataset="vindr-cxr",
                split=split,
                images=[Image(f"{split}/{image_id}.dicom", "PA")],
                findings=findings,
                impression=impression,
                labels=labels,
                boxes=out_boxes,
                report_source="synthesised-from-labels",
                extra={
                    "image_id": image_id,
                    "box_support": support,
                    "vindr_labels": sorted(present),
                    "radiologists": len(next(iter(votes[image_id].values()), [])),
                },
            ).validate(f"{lab}: image {image_id}")
