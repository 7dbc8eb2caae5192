"""Chest ImaGenome: scene graphs (zipped or extracted) to region boxes with phrases.

Fixture keys as in shared/reference/datasets.md §9 (scene-graph JSON `objects[]` with
`original_*` coordinates, `attributes[]` with `phrases` and `category|yes/no|label` strings,
split CSVs with an unnamed index column, `images_to_avoid.csv` without one). The static fixture
(tests/data/fixtures/imagenome/, sources in its README.md) is read to whole Study records below.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from radixpert.data.readers import SkipLog, imagenome
from radixpert.data.study import Box, Image, Study
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
    (splits / "images_to_avoid.csv").write_text(
        "subject_id,study_id,dicom_id,path,ViewPosition\n"
        "10000033,50414268,g1,files/p10/p10000033/s50414268/g1.dcm,AP\n"
    )
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


# --- the static fixture: silver_dataset/ as PhysioNet's Chest ImaGenome 1.0.0 lays it out ---

FIXTURE = Path(__file__).parent / "fixtures" / "imagenome"
G1 = "6c0e4a1f-93b7d2e5-0f8a6c31-d4e9b702-7a35f1c8"
G2 = "b15d7e20-4c8f9a36-e2071bd5-93c6f4a8-0d5e2b71"
GOLD = "e3a9f0c2-7d1b5e48-a6c2f913-58e0d7b4-c19a3f62"
NO_GRAPH = "0f7b3d92-e6a14c58-2d9e0b73-c5f8a161-94b2e07d"
G5 = "8a2e5c07-1f9d3b64-c7e0a528-6b41d9f3-e2c87a05"
G6 = "c4f1a8e3-0b6d2794-5e3ac1f0-a7d9826b-31e0f5c4"


def _study(split, subject, study_id, dicom_id, view, indication, boxes, clipped, findings,
           abnormal):  # fmt: skip
    return Study(
        id=f"imagenome-{dicom_id}",
        dataset="imagenome",
        split=split,
        patient_id=subject,
        # The split CSV names MIMIC-CXR's DICOM; the image read is MIMIC-CXR-JPG's.
        images=[Image(f"files/p{subject[:2]}/p{subject}/s{study_id}/{dicom_id}.jpg", view)],
        indication=indication,
        boxes=boxes,
        extra={"study_id": study_id, "dicom_id": dicom_id, "clipped_boxes": clipped,
               "region_findings": findings, "abnormal_regions": abnormal},
    )  # fmt: skip


EXPECTED = [
    _study("train", "15302218", "52286031", G1, "PA",
           "___F with cough and fever, eval for pneumonia", [
        # the phrase's report line break ("lower\n lung") read as one line
        Box("right lung", 318 / 2544, 402 / 3056, 1230 / 2544, 2301 / 3056,
            phrase="Patchy opacity in the right lower lung may reflect early pneumonia."),
        Box("left lung", 1364 / 2544, 388 / 3056, 2261 / 2544, 2350 / 3056),
        Box("cardiac silhouette", 1002 / 2544, 1395 / 3056, 1890 / 2544, 2118 / 3056,
            phrase="Heart size is normal."),
        Box("right costophrenic angle", 318 / 2544, 2101 / 3056, 548 / 2544, 2331 / 3056),
    ], 0,
        # "left chest wall" has attributes but no box; nlp|yes|... is a flag, not a finding
        {"right lung": ["lung opacity", "pneumonia"], "left chest wall": ["port"]},
        ["right lung"]),
    _study("train", "16744590", "53918467", G2, "AP", "___M s/p fall, eval for acute process", [
        Box("right lung", 0.0, 512 / 3050, 1180 / 2539, 2480 / 3050),  # x1 = -61: clipped
        Box("left lung", 1322 / 2539, 498 / 3050, 1.0, 2455 / 3050,  # x2 = 2620: clipped
            phrase="Left basilar atelectasis."),  # the same phrase twice, once
        # abdomen (below the image) and trachea (x1 == x2): box skips, counted
    ], 2, {"left lung": ["atelectasis"]}, ["left lung"]),
    _study("validate", "19060315", "56214478", G5, "AP",
           "___M with new right IJ line, assess position", [
        Box("right lung", 280 / 2539, 455 / 3050, 1205 / 2539, 2390 / 3050),
        Box("left lung", 1330 / 2539, 440 / 3050, 2290 / 2539, 2410 / 3050),
        Box("svc", 1080 / 2539, 610 / 3050, 1290 / 2539, 1150 / 3050,
            phrase="Right internal jugular line ends in the mid SVC."),
    ], 0, {"svc": ["ij line"]}, []),
    _study("test", "19587702", "57390512", G6, "PA", "", [  # 2 of the 29 regions, no phrases
        Box("right lung", 330 / 2544, 420 / 3056, 1215 / 2544, 2290 / 3056),
        Box("left lung", 1350 / 2544, 405 / 3056, 2240 / 2544, 2330 / 3056),
    ], 0, {}, []),
]  # fmt: skip

SKIPPED = {
    "study": {"gold-standard image (images_to_avoid.csv)": 1, "no scene graph": 1},
    "box": {"box outside the image or of zero area": 2},
}


def _zipped_copy(tmp_path):
    """The fixture with its scene_graph/ folder as the release ships it: scene_graph.zip."""
    silver = tmp_path / "silver_dataset"
    shutil.copytree(FIXTURE / "silver_dataset" / "splits", silver / "splits")
    with zipfile.ZipFile(silver / "scene_graph.zip", "w") as z:
        for f in sorted((FIXTURE / "silver_dataset" / "scene_graph").iterdir()):
            z.write(f, f"scene_graph/{f.name}")
    return tmp_path


@pytest.mark.parametrize("zipped", [False, True])
def test_fixture_reads_to_these_studies(tmp_path, zipped):
    root = _zipped_copy(tmp_path) if zipped else FIXTURE
    log = SkipLog()
    assert list(log.studies(imagenome.read(root))) == EXPECTED
    report = log.to_dict()
    assert report["skipped"] == SKIPPED
    splits = root / "silver_dataset" / "splits"
    assert report["examples"]["study"] == {
        "gold-standard image (images_to_avoid.csv)": [
            f"{splits / 'train.csv'}:4: record skipped: gold-standard image "
            f"(images_to_avoid.csv) ({GOLD})"
        ],
        "no scene graph": [
            f"{splits / 'train.csv'}:5: record skipped: no scene graph ({NO_GRAPH}_SceneGraph.json)"
        ],
    }
    where = (f"{root / 'silver_dataset' / 'scene_graph.zip'}:scene_graph/{G2}_SceneGraph.json"
             if zipped else
             str(root / "silver_dataset" / "scene_graph" / f"{G2}_SceneGraph.json"))  # fmt: skip
    assert report["examples"]["box"]["box outside the image or of zero area"] == [
        f"{where}: objects[2]: box left out: box outside the image or of zero area "
        "(abdomen: original_x1..y2 690, 3101, 1850, 3420 on 2539x3050)",
        f"{where}: objects[3]: box left out: box outside the image or of zero area "
        "(trachea: original_x1..y2 1240, 210, 1240, 905 on 2539x3050)",
    ]


def test_fixture_gold_image_kept_with_avoid_false_and_one_split_at_a_time():
    log = SkipLog()
    kept = list(log.studies(imagenome.read(FIXTURE, splits=("train",), avoid=False)))
    assert kept == EXPECTED[:2]
    # The gold image is no longer avoided; the fixture holds no scene graph for it.
    assert log.to_dict()["skipped"]["study"] == {"no scene graph": 2}
    (valid,) = SkipLog(strict=True).studies(imagenome.read(FIXTURE, splits=("valid",)))
    assert valid == EXPECTED[2]
