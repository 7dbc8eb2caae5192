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
from radixpert.data.readers import ms_cxr
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


# ReXGradient-160K: tests/data/test_reader_rexgradient.py (real-layout fixture).


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


# ROCO v2: tests/data/test_reader_roco.py (real rows of the release).


def test_prepare_cli_writes_studies(tmp_path, capsys):
    folder = tmp_path / "iu"
    folder.mkdir()
    (folder / "ReXRank_IUXray_test.json").write_text(json.dumps(REXRANK))
    out = tmp_path / "out.parquet"
    argv = ["data", "prepare", "rexrank", "--root", str(folder), "--out", str(out)]
    assert main([*argv, "--no-check-images"]) == 0  # the JSON's images are not written here
    assert [s.id for s in read_studies(out)] == ["CXR2279_IM-0865"]
    assert "rexrank: 1 studies" in capsys.readouterr().err
