"""Chest ImaGenome: scene graphs (zipped or extracted) to region boxes with phrases.

Fixture keys as in shared/reference/datasets.md §9 (scene-graph JSON `objects[]` with
`original_*` coordinates, `attributes[]` with `phrases` and `category|yes/no|label` strings,
split CSVs with an unnamed index column).
"""

from __future__ import annotations

import json
import zipfile

import pytest

from radixpert.data.readers import SkipLog, imagenome
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


def test_missing_scene_graph_gold_images_and_dcm_paths(tmp_path):
    # As the release ships it: `path` names the DICOM, a split row may lack its scene graph,
    # and splits/images_to_avoid.csv lists the gold-standard images to keep out.
    root = make(tmp_path)
    splits = root / "silver_dataset" / "splits"
    (splits / "train.csv").write_text(
        ",subject_id,study_id,dicom_id,path,ViewPosition\n"
        "0,10000032,50414267,d1,files/p10/p10000032/s50414267/d1.dcm,PA\n"
        "1,10000032,50414267,zz,files/p10/p10000032/s50414267/zz.dcm,AP\n"
        "2,10000033,50414268,g1,files/p10/p10000033/s50414268/g1.dcm,AP\n"
    )
    (splits / "images_to_avoid.csv").write_text("dicom_id,study_id,subject_id\ng1,50414268,1\n")
    log = SkipLog()
    (s,) = log.studies(imagenome.read(root, splits=("train",)))
    assert s.images[0].path == "files/p10/p10000032/s50414267/d1.jpg"
    assert s.dataset == "imagenome"  # the name leakage checks know (splits.PATIENT_SOURCES)
    assert log.counts == {
        ("study", "no scene graph"): 1,
        ("study", "gold-standard image (images_to_avoid.csv)"): 1,
    }
    kept = list(SkipLog().studies(imagenome.read(root, splits=("train",), avoid=False,
                                                 image_suffix=".dcm")))  # fmt: skip
    assert [k.images[0].path.rsplit("/", 1)[1] for k in kept] == ["d1.dcm"]
    with pytest.raises(ReaderError, match=r"train\.csv:3: record skipped: no scene graph"):
        list(SkipLog(strict=True).studies(imagenome.read(root, splits=("train",))))
