"""ReXrank / ReXGradient, MS-CXR and ROCO v2 readers on fixtures in their native layouts.

Formats as in shared/reference/datasets.md (§6 ROCO v2, §8 MS-CXR, §10 ReXrank/ReXGradient):
ReXrank's `data/iu_xray/ReXRank_IUXray_test.json` (keys and value shapes as in the
rajpurkarlab/ReXrank repository), MS-CXR's `MS_CXR_Local_Alignment_v1.1.0.csv` column set, and
ROCO v2's `{split}_captions.csv` / `{split}_concepts_manual.csv` / `cui_mapping.csv`.
"""

from __future__ import annotations

import json

import pytest

from radixpert.cli import main
from radixpert.data.readers import SkipLog, ms_cxr, rexrank, roco
from radixpert.data.study import read_studies
from radixpert.errors import ReaderError

REXRANK = {
    "CXR2279_IM-0865": {
        "key_image_path": "CXR2279_IM-0865/0.png",
        "image_path": ["CXR2279_IM-0865/0.png", "CXR2279_IM-0865/1.png"],
        "report": "Findings: Heart size is enlarged. Impression: Cardiomegaly.",
        "section_findings": "Heart size is enlarged.",
        "section_impression": "Cardiomegaly.",
        "split": "val",
        "frontal_lateral": ["Frontal", "Lateral"],
        "context": "Indication: XXXX-year-old female with seizure. Comparison: AP chest XXXX.",
    }
}


# The ReXrank test sets: tests/data/test_reader_rexrank.py (real-layout fixture).


def test_rexgradient(tmp_path):
    meta = tmp_path / "metadata"
    meta.mkdir()
    rec = {
        "ImagePath": ["../deid_png/x/studies/1/series/2/instances/3.png"],
        "ImageViewPosition": ["PA"],
        "Indication": "Cough",
        "Comparison": "None",
        "Findings": "Clear lungs.",
        "Impression": "Normal.",
        "PatientID": "P9",
        "StudyInstanceUid": "1.2",
        "PatientSex": "F",
        "PatientAge": "050Y",
    }
    (meta / "valid_metadata_view_position.json").write_text(json.dumps({"st1": rec}))
    (s,) = list(rexrank.read_rexgradient(tmp_path))
    assert (s.id, s.split, s.patient_id, s.images[0].view) == ("st1", "validate", "P9", "PA")
    with pytest.raises(ReaderError, match=r"no \{split\}_metadata_view_position\.json"):
        list(rexrank.read_rexgradient(tmp_path / "nope"))


MS_CXR_HEADER = "dicom_id,category_name,label_text,path,x,y,w,h,image_width,image_height,split\n"
PATH = "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"


def test_ms_cxr_boxes_normalised_and_grouped(tmp_path):
    rows = [
        f"02aa804e,Pneumonia,left lower lobe opacity,{PATH},100,200,300,400,2000,1000,train",
        f"02aa804e,Pneumonia,left lower lobe opacity,{PATH},1900,900,200,200,2000,1000,train",
        "0b5,Cardiomegaly,enlarged heart,files/p11/p11111111/s5/0b5.jpg,10,10,20,20,100,100,val",
    ]
    (tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv").write_text(MS_CXR_HEADER + "\n".join(rows))
    studies = {s.id: s for s in ms_cxr.read(tmp_path)}
    s = studies["ms-cxr-02aa804e"]
    assert s.patient_id == "10000032" and s.split == "train" and len(s.boxes) == 2
    b = s.boxes[0]
    assert (b.x1, b.y1, b.x2, b.y2) == (0.05, 0.2, 0.2, 0.6)
    assert b.phrase == "left lower lobe opacity" and b.label == "Pneumonia"
    assert s.boxes[1].x2 == 1.0 and s.extra["clipped_boxes"] == 1  # past the border: counted
    assert studies["ms-cxr-0b5"].split == "validate"


def test_ms_cxr_bad_number(tmp_path):
    row = f"d1,Edema,edema,{PATH},a,2,3,4,100,100,train"
    (tmp_path / "MS_CXR_Local_Alignment_v1.1.0.csv").write_text(MS_CXR_HEADER + row)
    with pytest.raises(ReaderError, match=r"v1\.1\.0\.csv: line 2: x, y, w, h"):
        list(ms_cxr.read(tmp_path))


def test_roco_v2(tmp_path):
    (tmp_path / "cui_mapping.csv").write_text(
        "CUI,Canonical name\nC0040405,X-Ray Computed Tomography\nC0024485,"
        "Magnetic Resonance Imaging\nC0817096,Chest\n"
    )
    (tmp_path / "train_captions.csv").write_text(
        'ID,Caption\nROCOv2_2023_train_000001,"Axial CT of the chest, showing a mass."\n'
        "ROCOv2_2023_train_000002,MRI of the brain.\nROCOv2_2023_train_000003,An image.\n"
        "ROCOv2_2023_train_000004,\n"
    )
    (tmp_path / "train_concepts_manual.csv").write_text(
        "ID,CUIs\nROCOv2_2023_train_000001,C0040405;C0817096\nROCOv2_2023_train_000002,"
        "C0024485;C9999999\nROCOv2_2023_train_000003,\n"
    )
    log = SkipLog()
    studies = list(log.studies(roco.read(tmp_path)))
    assert log.counts == {
        ("study", "empty caption"): 1,
        ("label", "concept not in cui_mapping.csv"): 1,
    }
    assert [s.modality for s in studies] == ["CT", "MR", ""]
    assert studies[0].findings == "Axial CT of the chest, showing a mass."
    assert studies[0].images[0].path == "train/ROCOv2_2023_train_000001.jpg"
    assert studies[0].extra["concepts"] == ["X-Ray Computed Tomography", "Chest"]
    with pytest.raises(ReaderError, match=r"no \{split\}_captions\.csv"):
        list(roco.read(tmp_path, splits=("test",)))


def test_prepare_cli_writes_studies(tmp_path, capsys):
    folder = tmp_path / "iu"
    folder.mkdir()
    (folder / "ReXRank_IUXray_test.json").write_text(json.dumps(REXRANK))
    out = tmp_path / "out.parquet"
    argv = ["data", "prepare", "rexrank", "--root", str(folder), "--out", str(out)]
    assert main([*argv, "--no-check-images"]) == 0  # the JSON's images are not written here
    assert [s.id for s in read_studies(out)] == ["CXR2279_IM-0865"]
    assert "rexrank: 1 studies" in capsys.readouterr().err
