"""MS-CXR v1.0.0 (no `split` column) and v1.1.0 (with one), read to the same studies.

Columns as PhysioNet's MS-CXR ships them (shared/reference/datasets.md §8): v1.1.0
`dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split`; v1.0.0 the
same without `split` (public loaders of v1.0.0 take the split from MIMIC-CXR-JPG's
`mimic-cxr-2.0.0-split.csv.gz`, e.g. PromptMRG-style `MSCXRProcessor` with
`create_study_to_split_mapping`). Rows invented; paths and ids in MIMIC-CXR-JPG's layout.
"""

from __future__ import annotations

import gzip

from radixpert.data.readers import SkipLog, ms_cxr

V0 = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height\n"
P1 = "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
P2 = "files/p11/p11000011/s51111111/0b5b3a4f-1c2d3e4f-5a6b7c8d-9e0f1a2b-3c4d5e6f.jpg"
ROWS = [
    f"02aa804e-bde0afdd-112c0b34-7bc16630-4e384014,Pneumonia,left lower lobe opacity,{P1},"
    "100,200,300,400,2000,1000",
    f"0b5b3a4f-1c2d3e4f-5a6b7c8d-9e0f1a2b-3c4d5e6f,Cardiomegaly,enlarged heart,{P2},"
    "10,10,20,20,100,100",
]


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
