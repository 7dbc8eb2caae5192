"""ROCO v2 read from real rows of the release's test split plus invented train rows
(tests/data/fixtures/roco-v2/README.md: the rows, their source, what each exercises)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from radixpert.data.prepare import prepare, skips_path
from radixpert.data.readers import SkipLog, roco
from radixpert.data.study import Image, Study, read_studies
from radixpert.errors import ReaderError

FIXTURE = Path(__file__).parent / "fixtures" / "roco-v2"
T = "ROCOv2_2023_test_"


def _study(sid, split, view, findings, modality, cuis, names, manual):
    folder = split if split != "validate" else "valid"
    return Study(
        id=sid,
        dataset="roco-v2",
        split=split,
        images=[Image(f"{folder}/{sid}.jpg", view)],
        findings=findings,
        modality=modality,
        extra={"cuis": cuis, "concepts": names, "manual_cuis": manual},
    )


EXPECTED = [
    _study("ROCOv2_2023_train_900002", "train", "", "Invented caption: sagittal MRI of the knee.",
           "MR", ["C0024485", "C9999999", "C0205129"], ["Magnetic Resonance Imaging", "",
           "Sagittal"], ["C0024485", "C9999999"]),
    _study("ROCOv2_2023_train_900003", "train", "",
           "Invented caption: an image with no concept rows.", "", [], [], []),
    _study(T + "000001", "test", "",
           "CT chest axial view showing a huge ascending aortic aneurysm (*).", "CT",
           ["C0040405", "C0856747"], ["X-Ray Computed Tomography", "Aneurysm, Ascending Aorta"],
           ["C0040405"]),
    _study(T + "000003", "test", "", "Digitally subtracted angiogram demonstrates active "
           "extravasation of the superior rectal artery into the ileal-conduit (blue arrow)",
           "XA", ["C0002978"], ["angiogram"], ["C0002978"]),
    _study(T + "000009", "test", "", "Early sagittal T2-weighted MRI.", "MR", ["C0024485"],
           ["Magnetic Resonance Imaging"], ["C0024485"]),
    _study(T + "000011", "test", "", "Transverse US image of the left ovary demonstrates the "
           "\u201cstring of pearls\u201d sign.", "US", ["C0041618", "C0227874"],
           ["Ultrasonography", "Structure of left ovary"], ["C0041618"]),
    _study(T + "000015", "test", "PA", "Chest radiography shows aneurysm as protruding mass.",
           "XR", ["C1306645", "C0817096", "C1996865", "C0002940"],
           ["Plain x-ray", "Chest", "Postero-Anterior", "Aneurysm"],
           ["C1306645", "C0817096", "C1996865"]),
    _study(T + "000021", "test", "", "Computed tomography of the head showing large "
           "intraparenchymal hemorrhage of the left anterior temporal lobe and left inferior "
           "frontal lobe (arrows) with surrounding edema and mass effect.", "CT",
           ["C0040405", "C0019080", "C0039485", "C0016733", "C0013604", "C0013609"],
           ["X-Ray Computed Tomography", "Hemorrhage", "Temporal Lobe", "frontal lobe", "Edema",
            "Localized Edema"], ["C0040405"]),
    _study(T + "000023", "test", "LATERAL",
           "Ankle X-ray (lateral view). No abnormality found on plain X-ray.", "XR",
           ["C1306645", "C0023216", "C0205129"], ["Plain x-ray", "Lower Extremity", "Sagittal"],
           ["C1306645", "C0023216", "C0205129"]),
    _study(T + "000028", "test", "", "The whole body F18-FDG PET/CT tomography scan (July 31, "
           "2009) showing multiple enlarged lymph nodes on left supraclavicular area. "
           "F18-FDG-PET/CT = Fluorine 18 fluorodeoxyglucose- Positron emission "
           "tomography/computed tomography.", "CT",
           ["C0040405", "C0034606", "C0497156", "C1699633"],
           ["X-Ray Computed Tomography", "Radionuclide Imaging", "Lymphadenopathy",
            "PET/CT scan"], []),
    _study(T + "000029", "test", "",
           "Disappearance of FDG accumulation during the subsequent patient follow-up.", "PT",
           ["C0032743"], ["Positron-Emission Tomography"], ["C0032743"]),
    _study(T + "000030", "test", "AP", "The typical chest X-ray finding of a patient with "
           "coronavirus disease 2019 infection showing bilateral infiltration.", "XR",
           ["C1306645", "C0817096", "C1999039", "C0009450", "C0332448"],
           ["Plain x-ray", "Chest", "Anterior-Posterior", "Communicable Diseases",
            "Infiltration"], ["C1306645", "C0817096", "C1999039"]),
    _study(T + "000056", "test", "", "A CT scan of the chest. The scan shows a small "
           "sub-pleural nodule-like consolidation (white arrow).", "CT",
           ["C0040405", "C0028259"], ["X-Ray Computed Tomography", "Nodule"], ["C0040405"]),
]  # fmt: skip

SKIPS = {
    "study": {"empty caption": 1},
    "label": {"concept not in cui_mapping.csv": 1},
}


def _read(root=FIXTURE, **options):
    log = SkipLog()
    return list(log.studies(roco.read(root, **options))), log


def test_fixture_reads_to_the_expected_studies():
    studies, log = _read()
    assert studies == EXPECTED
    assert log.to_dict()["skipped"] == SKIPS
    # where: the file and line of the row
    (empty,) = log.examples[("study", "empty caption")]
    assert "train_captions.csv: line 2" in empty and "ROCOv2_2023_train_900001" in empty
    (unknown,) = log.examples[("label", "concept not in cui_mapping.csv")]
    assert "train_captions.csv: line 3" in unknown and "C9999999" in unknown


def test_views_come_only_from_the_manual_x_ray_directionality_concepts():
    studies = {s.id: s for s in _read()[0]}
    assert [studies[T + n].images[0].view for n in ("000015", "000030", "000023")] == [
        "PA",
        "AP",
        "LATERAL",
    ]
    # An MRI whose automatic concepts say "Sagittal" (a plane, not a projection): no view.
    assert studies["ROCOv2_2023_train_900002"].images[0].view == ""


def test_split_choice_and_missing_split_files():
    studies, _ = _read(splits=("test",))
    assert {s.split for s in studies} == {"test"} and len(studies) == 11
    # No valid_captions.csv here: the split is absent, not an error, unless nothing is found.
    with pytest.raises(ReaderError, match=r"no \{split\}_captions\.csv for splits valid"):
        _read(splits=("valid",))


def test_a_valid_split_row_is_split_validate(tmp_path):
    root = tmp_path / "ROCOv2"
    shutil.copytree(FIXTURE, root)
    (root / "valid_captions.csv").write_text("ID,Caption\nROCOv2_2023_valid_900001,Invented.\n")
    studies, _ = _read(root, splits=("valid",))
    assert [(s.split, s.images[0].path) for s in studies] == [
        ("validate", "valid/ROCOv2_2023_valid_900001.jpg")
    ]


def test_broken_files_are_errors(tmp_path):
    root = tmp_path / "ROCOv2"
    shutil.copytree(FIXTURE, root)
    (root / "test_concepts_manual.csv").write_text("ID,Concepts\nx,y\n")
    with pytest.raises(ReaderError, match=r"test_concepts_manual\.csv: missing column\(s\) 'CUIs'"):
        _read(root)


def test_prepare_writes_the_studies_and_the_skip_counts(tmp_path):
    out = tmp_path / "roco.jsonl"
    n = prepare("roco-v2", FIXTURE, out, check_images=False)
    assert n == len(EXPECTED)
    assert list(read_studies(out)) == EXPECTED
    report = json.loads(skips_path(out).read_text())
    assert report["skipped"] == SKIPS and report["studies_written"] == n
