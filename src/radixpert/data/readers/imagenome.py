"""Chest ImaGenome 1.0.0 (silver dataset): anatomical regions with boxes, from scene graphs.

Layout (shared/reference/datasets.md §9): `silver_dataset/scene_graph.zip` (or its extracted
folder `silver_dataset/scene_graph/`) holding `<dicom_id>_SceneGraph.json`, and
`silver_dataset/splits/{train,valid,test}.csv` (unnamed index, `subject_id, study_id, dicom_id,
path, ViewPosition`). One Study per image: a box per anatomical region (`bbox_name`), from
`original_x1..original_y2` over `original_width/height`, clipped to the image (boxes can exceed
it; the number clipped is counted in `extra`; a box of zero area or wholly outside the image is
a counted box skip), with the report phrases of that region on one line; the region's positive
findings (`category|yes|label` attributes) go to `extra["region_findings"]`, and the regions
flagged `nlp|yes|abnormal` to `extra["abnormal_regions"]`.

As the release ships it: the split CSVs' `path` names MIMIC-CXR's DICOM
(`files/p10/p10000032/s50414267/<dicom_id>.dcm`); the study's image is read from MIMIC-CXR-JPG,
so the path is given the `.jpg` suffix (`image_suffix=`) and lies under `--root` when that is
the MIMIC-CXR-JPG folder holding `silver_dataset/` (or `silver=` names it). The images of the
gold standard (`silver_dataset/splits/images_to_avoid.csv`, by `dicom_id`), which the
publishers ask to keep out of training, are left out of every split and counted (`avoid=false`
keeps them). A split row whose scene graph is missing is a counted skip (the release lacks a
few; RadVLM and rgrg drop them too). Views are normalised. Sources: tests/data/fixtures/imagenome/.

    radixpert data prepare imagenome --root chest-imagenome/1.0.0 --out imagenome.jsonl
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from radixpert.data.readers import Skip, iter_csv
from radixpert.data.study import Box, Image, Study
from radixpert.data.views import normalise_view
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

    def get(self, dicom_id: str) -> tuple[dict[str, Any], str] | None:
        """The scene graph and where it was read; None when the release has none."""
        if self.zip is not None:
            name = self.members.get(dicom_id)
            if name is None:
                return None
            where = f"{self.where}:{name}"
            raw = self.zip.read(name)
        else:
            path = self.folder / f"{dicom_id}_SceneGraph.json"
            if not path.is_file():
                return None
            where, raw = str(path), path.read_bytes()
        try:
            return json.loads(raw), where
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ReaderError(f"{where}: not valid JSON ({e})") from None


def _region_boxes(
    graph: dict[str, Any], where: str
) -> tuple[list[Box], int, dict[str, list[str]], list[str], list[Skip]]:
    phrases: dict[str, list[str]] = {}
    findings: dict[str, list[str]] = {}
    abnormal: set[str] = set()
    for att in graph.get("attributes") or []:
        name = att.get("bbox_name", "")
        # Phrases are report text with its line breaks ("...right lower\n lung ..."): one line.
        phrases.setdefault(name, []).extend(" ".join(p.split()) for p in att.get("phrases") or [])
        for group in att.get("attributes") or []:
            for item in group if isinstance(group, list) else [group]:
                parts = str(item).split("|")
                if len(parts) != 3 or parts[1] != "yes":
                    continue
                if parts[0] == "nlp":  # nlp|yes|normal / nlp|yes|abnormal: a flag, not a finding
                    if parts[2] == "abnormal":
                        abnormal.add(name)
                else:
                    findings.setdefault(name, []).append(parts[2])
    boxes, clipped, skips = [], 0, []
    for k, obj in enumerate(graph.get("objects") or []):
        name = obj.get("bbox_name", "")
        try:
            w, h = float(obj["original_width"]), float(obj["original_height"])
            raw = (
                float(obj["original_x1"]) / w,
                float(obj["original_y1"]) / h,
                float(obj["original_x2"]) / w,
                float(obj["original_y2"]) / h,
            )
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
            skips.append(Skip("bad box fields", f"{where}: objects[{k}]", repr(e), part="box"))
            continue
        box = tuple(min(1.0, max(0.0, v)) for v in raw)
        if box[2] <= box[0] or box[3] <= box[1]:
            # The silver boxes include some of zero area or wholly outside the image (rgrg's
            # create_dataset.py drops them as "faulty"); what is left after clipping is no box.
            detail = f"{name}: original_x1..y2 {obj['original_x1']}, {obj['original_y1']}, "
            detail += f"{obj['original_x2']}, {obj['original_y2']} on {w:g}x{h:g}"
            skips.append(Skip("box outside the image or of zero area", f"{where}: objects[{k}]",
                              detail, part="box"))  # fmt: skip
            continue
        clipped += box != raw
        boxes.append(Box(name, *box, phrase=" ".join(dict.fromkeys(phrases.get(name, [])))))
    region_findings = {k: sorted(set(v)) for k, v in findings.items()}
    return boxes, clipped, region_findings, sorted(abnormal), skips


def read(
    root: Path,
    *,
    splits: tuple[str, ...] = ("train", "valid", "test"),
    silver: str = "silver_dataset",
    avoid: bool = True,
    image_suffix: str = ".jpg",
) -> Iterator[Study | Skip]:
    """Studies (one per image in the split files) with their anatomical-region boxes.

    Args:
        splits: The split files to read (`train`, `valid`, `test`).
        silver: The silver dataset's folder, relative to `root`.
        avoid: Leave out the gold-standard images of `splits/images_to_avoid.csv`.
        image_suffix: The suffix image paths get in place of `.dcm` (`.jpg`: MIMIC-CXR-JPG;
            `.dcm` keeps MIMIC-CXR's DICOM).
    """
    folder = Path(root) / silver
    graphs = _SceneGraphs(folder)
    cols = ("subject_id", "study_id", "dicom_id", "path", "ViewPosition")
    avoided: set[str] = set()
    avoid_file = folder / "splits" / "images_to_avoid.csv"
    if avoid and avoid_file.is_file():
        avoided = {r["dicom_id"].strip() for _, r in iter_csv(avoid_file, ("dicom_id",))}
    for split in splits:
        path = folder / "splits" / f"{split}.csv"
        for line, row in iter_csv(path, cols):
            where = f"{path}:{line}"
            dicom_id = row["dicom_id"].strip()
            if dicom_id in avoided:
                yield Skip("gold-standard image (images_to_avoid.csv)", where, dicom_id)
                continue
            found = graphs.get(dicom_id)
            if found is None:
                yield Skip("no scene graph", where, f"{dicom_id}_SceneGraph.json")
                continue
            graph, graph_where = found
            boxes, clipped, region_findings, abnormal, skips = _region_boxes(graph, graph_where)
            yield from skips
            image = row["path"].strip().lstrip("/")
            if image.endswith(".dcm"):
                image = image[: -len(".dcm")] + image_suffix
            view = normalise_view(row["ViewPosition"])
            if view is None:
                yield Skip("not a view", where, repr(row["ViewPosition"]), part="view")
                view = ""
            yield Study(
                id=f"imagenome-{dicom_id}",
                dataset="imagenome",
                split=SPLITS.get(split, split),
                patient_id=row["subject_id"].strip(),
                images=[Image(image, view)],
                indication=str(graph.get("reason_for_exam") or "").strip(),
                boxes=boxes,
                extra={
                    "study_id": row["study_id"],
                    "dicom_id": dicom_id,
                    "clipped_boxes": clipped,
                    "region_findings": region_findings,
                    "abnormal_regions": abnormal,
                },
            ).validate(where)
