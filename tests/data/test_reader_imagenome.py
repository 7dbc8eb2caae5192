"""Chest ImaGenome: scene graphs (zipped or extracted) to region boxes with phrases.

Fixture keys as in shared/reference/datasets.md §9 (scene-graph JSON `objects[]` with
`original_*` coordinates, `attributes[]` with `phrases` and `category|yes/no|label` strings,
split CSVs with an unnamed index column).
"""

from __future__ import annotations

import json
import zipfile

import pytest

from radixpert.data.readers import imagenome
from radixpert.errors import ReaderError

GRAPH = {
    "image_id": "d1", "viewpoint": "PA", "patient_id": 10000032, "study_id": 50414267,
    "reason_for_exam": "___M with cough", "objects": [
        {"object_id": "d1_right lung", "bbox_name": "right lung", "name": "Right Lung",
         "original_x1": 200, "original_y1": 300, "original_x2": 1200, "original_y2": 2100,
         "original_width": 2500, "original_height": 3000},
        {"object_id": "d1_left lung", "bbox_name": "left lung", "name": "Left Lung",
         "original_x1": 1300, "original_y1": 280, "original_x2": 2600, "original_y2": 2050,
         "original_width": 2500, "original_height": 3000},
    ],
    "attributes": [
        {"bbox_name": "right lung", "name": "Right Lung",
         "phrases": ["Right lower lobe opacity."],
         "attributes": [["anatomicalfinding|yes|lung opacity",
                         "anatomicalfinding|no|pneumothorax"]]},
    ],
}  # fmt: skip


def make(root, zipped=True):
    silver = root / "silver_dataset"
    (silver / "splits").mkdir(parents=True)
    (silver / "splits" / "train.csv").write_text(
        ",subject_id,study_id,dicom_id,path,ViewPosition\n"
        "0,10000032,50414267,d1,files/p10/p10000032/s50414267/d1.jpg,PA\n"
    )
    data = json.dumps(GRAPH)
    if zipped:
        with zipfile.ZipFile(silver / "scene_graph.zip", "w") as z:
            z.writestr("scene_graph/d1_SceneGraph.json", data)
    else:
        (silver / "scene_graph").mkdir()
        (silver / "scene_graph" / "d1_SceneGraph.json").write_text(data)
    return root


@pytest.mark.parametrize("zipped", [True, False])
def test_region_boxes(tmp_path, zipped):
    (s,) = imagenome.read(make(tmp_path, zipped), splits=("train",))
    assert s.id == "imagenome-d1" and s.patient_id == "10000032" and s.images[0].view == "PA"
    right, left = s.boxes
    assert (right.label, right.x1, right.y1, right.x2, right.y2) == (
        "right lung",
        0.08,
        0.1,
        0.48,
        0.7,
    )
    assert right.phrase == "Right lower lobe opacity."
    assert left.x2 == 1.0 and s.extra["clipped_boxes"] == 1  # past the border: clipped, counted
    assert s.extra["region_findings"] == {"right lung": ["lung opacity"]}
    assert s.indication == "___M with cough"


def test_missing_scene_graph(tmp_path):
    root = make(tmp_path)
    (root / "silver_dataset" / "splits" / "train.csv").write_text(
        ",subject_id,study_id,dicom_id,path,ViewPosition\n0,1,5,zz,files/zz.jpg,AP\n"
    )
    with pytest.raises(ReaderError, match=r"scene_graph\.zip: no zz_SceneGraph\.json"):
        list(imagenome.read(root, splits=("train",)))
