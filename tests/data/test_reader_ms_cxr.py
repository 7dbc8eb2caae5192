"""MS-CXR v1.0.0 (no `split` column) and v1.1.0 (with one), read to the same studies.

Columns as PhysioNet's MS-CXR ships them (shared/reference/datasets.md §8): v1.1.0
`dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split`; v1.0.0 the
same without `split` (public loaders of v1.0.0 take the split from MIMIC-CXR-JPG's
`mimic-cxr-2.0.0-split.csv.gz`, e.g. PromptMRG-style `MSCXRProcessor` with
`create_study_to_split_mapping`). Rows invented; paths and ids in MIMIC-CXR-JPG's layout.
The static fixture (tests/data/fixtures/ms-cxr/, sources in its README.md) holds both
versions as PhysioNet lays them out (`0.1/`, `1.1.0/` with the COCO json).
"""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

from radixpert.data.readers import SkipLog, ms_cxr
from radixpert.data.study import Box, Image, Study

V0 = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
P1 = "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
P2 = "files/p11/p11000011/s51111111/0b5b3a4f-1c2d3e4f-5a6b7c8d-9e0f1a2b-3c4d5e6f.jpg"
ROWS = [
    f"02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,Pneumonia,left lower lobe opacity,{P1},"
    "100,200,300,400,2000,1000",
    f"0b5b3a4f-1c2d3e4f-5a6b7c8d-9e0f1a2b-3c4d5e6f,Cardiomegaly,enlarged heart,{P2},"
    "10,10,20,20,100,100",
]

FIXTURE = Path(__file__).parent / "fixtures" / "ms-cxr"
SPLIT_FILE = "../mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv"  # relative to the 0.1/ root

A = "3f9a2c71-0b8e4d55-91c2e7a4-6d03b8f1-a25e7c90"
B = "a7c41e09-52d3f8b6-0e9a17c4-b86f2d30-19e5ca47"
C = "d2e8b7f4-6a1c0935-c7f4e2a8-0b3d9165-e84a2f7c"
D = "5b1e93ac-d47f2086-3ac95e1b-7f20d4c8-96ab03e5"


def _expected(version: str, splits: dict[str, str]) -> list[Study]:
    """The studies a person reads off the fixture: one per image, a box per CSV row (x, y the
    top-left corner, w, h the size, over image_width x image_height)."""
    source = f"MS_CXR_Local_Alignment_v{version}.csv"

    def study(dicom_id, subject, study_id, boxes):
        path = f"files/p{subject[:2]}/p{subject}/s{study_id}/{dicom_id}.jpg"
        return Study(
            id=f"ms-cxr-{dicom_id}",
            dataset="ms-cxr",
            split=splits[dicom_id],
            patient_id=subject,
            images=[Image(path, "FRONTAL")],
            boxes=boxes,
            extra={"dicom_id": dicom_id, "clipped_boxes": 0, "source_file": source},
        )

    return [
        study(A, "10417853", "55102938", [
            Box("Pneumonia", 402 / 2544, 1710 / 3056, (402 + 620) / 2544, (1710 + 580) / 3056,
                phrase="Patchy opacity in the right lower lobe concerning for pneumonia"),
            Box("Atelectasis", 1490 / 2544, 2204 / 3056, (1490 + 688) / 2544,
                (2204 + 310) / 3056, phrase="Linear opacity at the left base, likely atelectasis"),
        ]),
        study(B, "11283604", "57740215", [  # one phrase, two boxes; a second phrase
            Box("Pleural Effusion", 212 / 2539, 2211 / 3050, (212 + 540) / 2539,
                (2211 + 402) / 3050, phrase="Small bilateral pleural effusions"),
            Box("Pleural Effusion", 1788 / 2539, 2190 / 3050, (1788 + 560) / 2539,
                (2190 + 430) / 3050, phrase="Small bilateral pleural effusions"),
            Box("Cardiomegaly", 803 / 2539, 1380 / 3050, (803 + 1190) / 2539,
                (1380 + 905) / 3050, phrase="Moderate enlargement of the cardiac silhouette"),
        ]),
        study(C, "12950117", "58316604", [  # on the top border: y1 = 0, not clipped
            Box("Pneumothorax", 380 / 2544, 0.0, (380 + 610) / 2544, 512 / 3056,
                phrase="Small right apical pneumothorax"),
        ]),
        study(D, "14026589", "50892731", [
            Box("Consolidation", 1105 / 2048, 1460 / 2500, (1105 + 520) / 2048,
                (1460 + 610) / 2500, phrase="Left retrocardiac consolidation"),
        ]),
    ]  # fmt: skip


def _v0(root):
    (root / "MS_CXR_Local_Alignment_v1.0.0.csv").write_text(V0 + "\n".join(ROWS) + "\n")


def test_v1_0_0_takes_the_split_from_mimic_cxr(tmp_path):
    _v0(tmp_path)
    with gzip.open(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", "wt") as f:
        f.write("dicom_id,study_id,subject_id,split\n")
        f.write("02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,50414267,10000032,train\n")
        f.write("0b5b3a4f-1c2d3e4f-5a6b7c8d-9e0f1a2b-3c4d5e6f,51111111,11000011,validate\n")
    log = SkipLog()
    a, b = log.studies(ms_cxr.read(tmp_path))
    assert (a.split, a.patient_id, a.images[0].path) == ("train", "10000032", P1)
    assert a.images[0].view == "FRONTAL"
    assert (a.boxes[0].x1, a.boxes[0].y2) == (0.05, 0.6)
    assert b.split == "validate" and log.total == 0


def test_v1_0_0_without_a_split_file_is_read_with_the_split_counted(tmp_path):
    _v0(tmp_path)
    log = SkipLog()
    studies = list(log.studies(ms_cxr.read(tmp_path)))
    assert [s.split for s in studies] == ["", ""]
    assert log.counts == {("field", "split not given"): 2}
    assert "give mimic_split=" in log.examples[("field", "split not given")][0]


def test_v1_1_0_and_v1_0_0_give_the_same_boxes(tmp_path):
    v0, v1 = tmp_path / "v0", tmp_path / "v1"
    v0.mkdir(), v1.mkdir()
    _v0(v0)
    (v1 / "MS_CXR_Local_Alignment_v1.1.0.csv").write_text(
        V0.strip() + ",split\n" + "\n".join(r + ",test" for r in ROWS) + "\n"
    )
    old = list(SkipLog().studies(ms_cxr.read(v0)))
    new = list(SkipLog(strict=True).studies(ms_cxr.read(v1)))
    assert [s.boxes for s in old] == [s.boxes for s in new]
    assert [s.split for s in new] == ["test", "test"]


# --- the static fixture: PhysioNet's layout of 0.1 (v1.0.0 CSV) and 1.1.0 (CSV + COCO json) ---


def test_fixture_v1_1_0_reads_to_these_studies():
    log = SkipLog()
    studies = list(log.studies(ms_cxr.read(FIXTURE / "1.1.0")))  # the .json beside it is unread
    splits = {A: "train", B: "validate", C: "train", D: "test"}  # `val` -> MIMIC's `validate`
    assert studies == _expected("1.1.0", splits)
    assert log.to_dict() == {"skipped": {}, "examples": {}}


def test_fixture_v1_0_0_takes_mimic_cxr_jpg_splits_and_counts_an_image_without_one():
    log = SkipLog()
    studies = list(log.studies(ms_cxr.read(FIXTURE / "0.1", mimic_split=SPLIT_FILE)))
    # D is not in the split file: read with split "" (placed later by patient), and counted.
    splits = {A: "train", B: "validate", C: "test", D: ""}
    assert studies == _expected("1.0.0", splits)
    report = log.to_dict()
    assert report["skipped"] == {"field": {"split not given": 1}}
    (example,) = report["examples"]["field"]["split not given"]
    assert example.endswith(
        f"MS_CXR_Local_Alignment_v1.0.0.csv: line 8: field left out: split not given "
        f"(dicom_id {D} not in mimic-cxr-2.0.0-split.csv)"
    )


def test_fixture_v1_0_0_finds_the_gzipped_split_file_in_its_root(tmp_path):
    shutil.copy(FIXTURE / "0.1" / "MS_CXR_Local_Alignment_v1.0.0.csv", tmp_path)
    with gzip.open(tmp_path / "mimic-cxr-2.0.0-split.csv.gz", "wb") as f:
        f.write((FIXTURE / "mimic-cxr-jpg" / "mimic-cxr-2.0.0-split.csv").read_bytes())
    log = SkipLog()
    studies = list(log.studies(ms_cxr.read(tmp_path)))
    assert [s.split for s in studies] == ["train", "validate", "test", ""]
    assert log.to_dict()["skipped"] == {"field": {"split not given": 1}}
    # Without any split file every study is read, each split counted.
    (tmp_path / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    log = SkipLog()
    assert [s.split for s in log.studies(ms_cxr.read(tmp_path))] == ["", "", "", ""]
    assert log.to_dict()["skipped"] == {"field": {"split not given": 4}}


def test_fixture_both_versions_agree_but_for_the_split():
    old = list(SkipLog().studies(ms_cxr.read(FIXTURE / "0.1")))
    new = list(SkipLog().studies(ms_cxr.read(FIXTURE / "1.1.0")))
    assert [(s.id, s.patient_id, s.images, s.boxes) for s in old] == [
        (s.id, s.patient_id, s.images, s.boxes) for s in new
    ]


def test_fixture_coco_json_holds_the_csv_rows():
    # v1.1.0's COCO json (images[].path, annotations[].bbox = [x, y, w, h] in pixels with
    # width/height, label_text, split, category_id -> categories[].name) carries what the CSV
    # does; the reader reads the CSV.
    coco = json.loads((FIXTURE / "1.1.0" / "MS_CXR_Local_Alignment_v1.1.0.json").read_text())
    paths = {im["id"]: im["path"] for im in coco["images"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    from_json = [
        (paths[a["image_id"]], names[a["category_id"]], a["label_text"], *a["bbox"],
         a["width"], a["height"], a["split"])
        for a in coco["annotations"]
    ]  # fmt: skip
    with (FIXTURE / "1.1.0" / "MS_CXR_Local_Alignment_v1.1.0.csv").open(newline="") as f:
        from_csv = [
            (r["path"], r["category_name"], r["label_text"],
             *(int(r[k]) for k in ("x", "y", "w", "h", "image_width", "image_height")),
             r["split"])
            for r in csv.DictReader(f)
        ]  # fmt: skip
    assert from_json == from_csv
    assert sorted(names.values()) == [
        "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity",
        "Pleural Effusion", "Pneumonia", "Pneumothorax",
    ]  # fmt: skip
