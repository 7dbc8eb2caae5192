"""ReXrank's test sets read from real records in the release's layout
(tests/data/fixtures/rexrank/README.md: the records, their source, their irregularities)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from radixpert.cli import main
from radixpert.data.readers import Skip, SkipLog, rexrank
from radixpert.data.study import Image, read_studies
from radixpert.data.views import is_frontal
from radixpert.errors import ReaderError

FIXTURE = Path(__file__).parent / "fixtures" / "rexrank"


def _read(root=FIXTURE, **options):
    log = SkipLog()
    studies = {s.id: s for s in log.studies(rexrank.read(root, **options))}
    return studies, log


def test_iu_xray_records_with_view_lists_of_another_length_are_kept():
    studies, log = _read()
    s = studies["CXR3030_IM-1405"]
    assert (s.dataset, s.split, s.patient_id) == ("rexrank-iu-xray", "test", "CXR3030")
    assert s.images == [
        Image("iu_xray/images/CXR3030_IM-1405/0.png", "FRONTAL"),
        Image("iu_xray/images/CXR3030_IM-1405/1.png", "LATERAL"),
    ]
    assert (s.indication, s.comparison) == ("Chest pain, dyspnea", "")  # "Comparison: None."
    assert s.findings.startswith("Normal cardiomediastinal silhouette.")
    assert s.impression == "There is no radiographic evidence of acute cardiopulmonary disease."
    # 1, 3 and 4 views for 2 images: no view can be paired by position; the key image is
    # "the frontal image" (data/READMD.md), the other is unknown, and each record is counted.
    assert [i.view for i in studies["CXR3646_IM-1808-0001"].images] == ["FRONTAL", ""]
    assert [i.view for i in studies["CXR1633_IM-0414"].images] == ["FRONTAL", ""]
    assert [i.view for i in studies["CXR3359_IM-1612"].images] == ["", "FRONTAL"]
    assert log.counts[("view", "view list length differs from image list")] == 3
    assert studies["CXR3646_IM-1808-0001"].indication == ""  # context has no Indication:
    assert studies["CXR3646_IM-1808-0001"].comparison == "Chest 2 views. XXXX."
    assert all(len(s.images) == 2 for k, s in studies.items() if k.startswith("CXR"))


def test_mimic_paths_resolve_under_the_files_folder_and_views_are_normalised():
    studies, log = _read()
    s = studies["53492798"]
    assert (s.dataset, s.patient_id, s.split) == ("rexrank-mimic-cxr", "10046166", "test")
    base = "mimic-cxr/files/p10/p10046166/s53492798/"
    assert s.images == [
        Image(base + "18f0fd6d-f513afc9-e4aa8de2-bc5ac0d6-ea3daaff.jpg", "PA"),
        Image(base + "7d5ef12b-34d86e32-207566d6-d5ed6f02-cd868f2c.jpg", "PA"),
        Image(base + "eab11c59-32a5b9b8-b8d335fa-ce06c5fa-5bde0499.jpg", "LL"),
    ]
    assert (s.indication, s.comparison) == ("Invented indication.", "Invented comparison.")
    # "Erect" is not a view: counted per image; the key image is still known to be frontal.
    assert [i.view for i in studies["56805129"].images] == ["FRONTAL", "", ""]
    assert log.counts[("view", "not a view")] == 3
    assert studies["56805129"].extra["age"] == "50-60"
    assert studies["56805129"].extra["gender"] == "M"
    # NaN view on the key image; "Indication:None." is no indication.
    odd = studies["53183707"]
    assert [i.view for i in odd.images] == ["FRONTAL", "LL"]
    assert (odd.indication, odd.comparison) == ("", "Invented comparison.")
    assert "age" not in odd.extra
    assert studies["57977208"].impression == ""  # bare NaN
    # Before, the frontal filter recognised none of the MIMIC images (3,858 in the release).
    mimic = [st for st in studies.values() if st.dataset == "rexrank-mimic-cxr"]
    assert sum(is_frontal(i.view) for st in mimic for i in st.images) == 5


def test_chexpert_plus_python_list_strings_and_nan_fields():
    studies, _ = _read()
    s = studies["patient64595_study1"]
    assert (s.dataset, s.patient_id) == ("rexrank-chexpert-plus", "patient64595")
    assert s.images == [
        Image("chexpert_plus/PNG/valid/patient64595/study1/view1_frontal.png", "PA"),
        Image("chexpert_plus/PNG/valid/patient64595/study1/view2_lateral.png", "LATERAL"),
    ]
    assert s.indication == "Radiation therapy."
    first = studies["patient64620_study1"]
    assert (first.indication, first.comparison, first.findings) == ("", "", "")  # nan, None.
    assert first.impression.startswith("1. SINGLE VIEW OF CHEST DEMONSTRATES")
    assert first.images[0].view == "AP"
    assert studies["patient64680_study1"].indication == "Hepatic failure, line placement."


def test_one_set_a_dataset_name_and_an_image_folder_as_options():
    studies, _ = _read(FIXTURE / "iu_xray", dataset="iu-test", images="png")
    assert {s.dataset for s in studies.values()} == {"iu-test"}
    assert studies["CXR3030_IM-1405"].images[0].path == "png/CXR3030_IM-1405/0.png"
    one, _ = _read(FIXTURE / "mimic-cxr" / "ReXRank_MIMICCXR_test.json")
    assert one["53492798"].images[0].path.startswith("files/p10/p10046166/")


def test_strict_names_the_file_and_record():
    with pytest.raises(ReaderError, match=r"ReXRank_IUXray_test\.json record CXR3646_IM-1808-0001"):
        list(SkipLog(strict=True).studies(rexrank.read(FIXTURE / "iu_xray")))


def test_malformed_records_are_errors_or_counted(tmp_path):
    p = tmp_path / "ReXRank_IUXray_test.json"
    p.write_text(json.dumps({"s1": {"image_path": "['a.png'", "frontal_lateral": []}}))
    with pytest.raises(ReaderError, match=r"record s1: field 'image_path' .* is not a list"):
        list(rexrank.read(p))
    p.write_text(json.dumps({"s1": {"image_path": [], "section_findings": "x"}}))
    assert list(rexrank.read(p)) == [Skip("no image path", f"{p} record s1")]


def test_prepare_prints_and_writes_the_counts(tmp_path, capsys):
    out = tmp_path / "rexrank.jsonl"
    argv = ["data", "prepare", "rexrank", "--root", str(FIXTURE), "-o", str(out)]
    assert main([*argv, "--no-check-images"]) == 0
    assert len(list(read_studies(out))) == 11
    err = capsys.readouterr().err
    assert "3  views left out: not a view" in err
    assert "3  views left out: view list length differs from image list" in err
    skips = json.loads((tmp_path / "rexrank.skips.json").read_text())
    assert skips["skipped"]["view"] == {
        "not a view": 3,
        "view list length differs from image list": 3,
    }


def test_iu_xray_patients_match_the_iu_xray_reader():
    """ReXrank's IU studies are R2Gen's (CXR<n>_IM-...): their patient is the iu-xray reader's
    CXR<n>, so `data check` finds a ReXrank IU test patient in an IU-Xray training split."""
    from radixpert.data.splits import patient_key
    from radixpert.data.study import Study

    studies, _ = _read()
    iu = Study(id="iu-CXR3030_IM-1405", dataset="iu-xray", split="train", patient_id="CXR3030")
    assert patient_key(studies["CXR3030_IM-1405"]) == patient_key(iu) == ("iu-xray", "CXR3030")
