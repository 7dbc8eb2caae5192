"""Chest ImaGenome 1.0.0 (silver dataset): anatomical regions with boxes, from scene graphs.

Layout (shared/reference/datasets.md §9): `silver_dataset/scene_graph.zip` (or its extracted
folder `silver_dataset/scene_graph/`) holding `<dicom_id>_SceneGraph.json`, and
`silver_dataset/splits/{train,valid,test}.csv` (unnamed index, `subject_id, study_id, dicom_id,
path, ViewPosition`). One Study per image: a box per anatomical region (`bbox_name`), from
`original_x1..original_y2` over `original_width/height`, clipped to the image (boxes can exceed
it; the number clipped is counted in `extra`), with the report phrases of that region; the
region's positive findings (`category|yes|label` attributes) go to `extra["region_findings"]`.

    radixpert data prepare imagenome --root chest-imagenome/1.0.0 --out imagenome.jsonl
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from radixpert.data.readers import iter_csv
from radixpert.data.study import Box, Image, Study
from radixpert.errors import ReaderError

SPLITS = {"train": "train", "valid": "validate", "test": "test"}


class _SceneGraphs:
    """Scene graphs by dicom_id from the zip (streamed member by member) or the folder."""

    def __init__(self, silver: Path) -> None:
        self.folder = silver / "scene_graph"
        self.zip: zipfile.ZipFile | None = None
        self.members: dict[str, str] = {}
        zpath = silver / "scene_graph.zip"
        if zpath.is_file():
            try:
                self.zip = zipfile.ZipFile(zpath)
            except zipfile.BadZipFile as e:
                raise ReaderError(f"{zpath}: not a zip file ({e})") from None
            self.where = str(zpath)
            for name in self.zip.namelist():
                if name.endswith("_SceneGraph.json"):
                    self.members[Path(name).name[: -len("_SceneGraph.json")]] = name
        elif self.folder.is_dir():
            self.where = str(self.folder)
        else:
            raise ReaderError(f"{silver}: neither scene_graph.zip nor scene_graph/")

    def get(self, dicom_id: str) -> tuple[dict[str, Any], str]:
        if self.zip is not None:
            name = self.members.get(dicom_id)
            if name is None:
                raise ReaderError(f"{self.where}: no {dicom_id}_SceneGraph.json")
            where = f"{self.where}:{name}"
            raw = self.zip.read(name)
        else:
            path = self.folder / f"{dicom_id}_SceneGraph.json"
            if not path.is_file():
                raise ReaderError(f"{path}: no such file")
            where, raw = str(path), path.read_bytes()
        try:
            return json.loads(raw), where
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ReaderError(f"{where}: not valid JSON ({e})") from None


def _region_boxes(graph: dict[str, Any], where: str) -> tuple[list[Box], int, dict]:
    phrases: dict[str, list[str]] = {}
    findings: dict[str, list[str]] = {}
    for att in graph.get("attributes") or []:
        name = att.get("bbox_name", "")
        phrases.setdefault(name, []).extend(p.strip() for p in att.get("phrases") or [])
        for group in att.get("attributes") or []:
            for item in group if isinstance(group, list) else [group]:
                parts = str(item).split("|")
                if len(parts) == 3 and parts[1] == "yes":
                    findings.setdefault(name, []).append(parts[2])
    boxes, clipped = [], 0
    for k, obj in enumerate(graph.get("objects") or []):
        try:
            w, h = float(obj["original_width"]), float(obj["original_height"])
            raw = (
                float(obj["original_x1"]) / w,
                float(obj["original_y1"]) / h,
                float(obj["original_x2"]) / w,
                float(obj["original_y2"]) / h,
            )
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            raise ReaderError(f"{where}: objects[{k}]: bad box fields ({e!r})") from None
        box = tuple(min(1.0, max(0.0, v)) for v in raw)
        clipped += box != raw
        name = obj.get("bbox_name", "")
        boxes.append(Box(name, *box, phrase=" ".join(dict.fromkeys(phrases.get(name, [])))))
    return boxes, clipped, {k: sorted(set(v)) for k, v in findings.items()}


def read(root: Path, *, splits: tuple[str, ...] = ("train", "valid", "test")) -> Iterator[Study]:
    """Studies (one per image in the split files) with their anatomical-region boxes."""
    silver = Path(root) / "silver_dataset"
    graphs = _SceneGraphs(silver)
    cols = ("subject_id", "study_id", "dicom_id", "path", "ViewPosition")
    for split in splits:
        path = silver / "splits" / f"{split}.csv"
        for line, row in iter_csv(path, cols):
            graph, where = graphs.get(row["dicom_id"])
            boxes, clipped, region_findings = _region_boxes(graph, where)
            yield Study(
                id=f"imagenome-{row['dicom_id']}",
                dataset="chest-imagenome",
                split=SPLITS.get(split, split),
                patient_id=row["subject_id"],
                images=[Image(row["path"], row["ViewPosition"])],
                indication=str(graph.get("reason_for_exam") or "").strip(),
                boxes=boxes,
                extra={
                    "study_id": row["study_id"],
                    "clipped_boxes": clipped,
                    "region_findings": region_findings,
                },
            ).validate(f"{path}: line {line}")
