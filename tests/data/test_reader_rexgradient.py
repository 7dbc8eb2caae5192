"""ReXGradient-160K read from `metadata/{split}_metadata_view_position.json` in the release's
layout with invented content (tests/data/fixtures/rexgradient/README.md: keys, sources, what
each record exercises)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from radixpert.data.prepare import prepare, skips_path
from radixpert.data.readers import SkipLog, rexrank
from radixpert.data.study import Image, Study, read_studies
from radixpert.errors import ReaderError

FIXTURE = Path(__file__).parent / "fixtures" / "rexgradient"
U = "1.2.826.0.1.3680043.8.498."


def _images(patient, accession, study, pairs):
    base = f"deid_png/{patient}/{accession}/studies/{U}{study}/series/"
    return [Image(f"{base}{U}{se}/instances/{U}{i}.png", view) for se, i, view in pairs]


def _study(pid, acc, st, split, pairs, sections, **extra):
    return Study(
        id=f"p{pid}_a{acc}_s{U}{st}",
        dataset="rexgradient",
        split=split,
        patient_id=pid,
        images=_images(pid, acc, st, pairs),
        indication=sections[0],
        comparison=sections[1],
        findings=sections[2],
        impression=sections[3],
        extra={"StudyInstanceUid": f"{U}{st}", "AccessionNumber": acc, **extra},
    )


P1, P2, P3 = "GRDNFXTR00000001", "GRDNFXTR00000002", "GRDNFXTR00000003"
EXPECTED = [
    _study(P1, "GRDNACCN00000011", "11", "train",
           [("111", "1111", "PA"), ("112", "1121", "LATERAL")],
           ("Invented indication: cough.", "Invented comparison: 01/2018.",
            "Invented findings: the lungs are clear.", "Invented impression: no acute disease."),
           PatientSex="F", PatientAge="062Y", StudyDate=20190412, EthnicGroup="Invented"),
    # POSTERO_ANTERIOR and a null view; Comparison "None" and bare NaN Findings are empty.
    _study(P1, "GRDNACCN00000012", "12", "train", [("121", "1211", "PA"), ("122", "1221", "")],
           ("Invented indication: follow-up.", "", "", "Invented impression: stable."),
           PatientSex="F", PatientAge="063Y", StudyDate=20200107),
    # 3 images, 2 views: no view can be paired by position.
    _study(P2, "GRDNACCN00000021", "21", "train",
           [("211", "2111", ""), ("211", "2112", ""), ("212", "2121", "")],
           ("Invented indication: line placement.", "", "Invented findings: tube in place.",
            "Invented impression: tube in place."),
           PatientSex="M", PatientAge="002D", StudyDate=20210330),
    # 1 image, 2 views.
    _study(P3, "GRDNACCN00000031", "31", "validate", [("311", "3111", "")],
           ("Invented indication: chest pain.", "", "Invented findings: normal heart size.",
            "Invented impression: normal."),
           PatientSex="U", PatientAge="045Y", StudyDate=20181201),
    # AP (KUB) is an abdominal film; N/A and UNKNOWN are unknown; no Indication key; NaN
    # Impression.
    _study(P3, "GRDNACCN00000032", "32", "validate",
           [("321", "3211", "OTHER"), ("322", "3221", ""), ("323", "3231", "")],
           ("", "Invented comparison: 12/01/2018.",
            "Invented findings: nasogastric tube tip in the stomach.", ""),
           PatientSex="U", PatientAge="045Y", StudyDate=20181202),
    _study(P2, "GRDNACCN00000041", "41", "test",
           [("411", "4111", "OBLIQUE"), ("412", "4121", "LL")],
           ("Invented indication: fever.", "Invented comparison: 03/30/2021.",
            "Invented findings: no consolidation.", "Invented impression: no pneumonia."),
           PatientSex="M", PatientAge="007M", StudyDate=20211015),
]  # fmt: skip

SKIPS = {
    "study": {"no image path": 1},
    "view": {"view list length differs from image list": 2},
}


def _read(root=FIXTURE, **options):
    log = SkipLog()
    return list(log.studies(rexrank.read_rexgradient(root, **options))), log


def test_fixture_reads_to_the_expected_studies():
    studies, log = _read()
    assert studies == EXPECTED
    assert log.to_dict()["skipped"] == SKIPS
    places = log.examples[("view", "view list length differs from image list")]
    assert "GRDNACCN00000021" in places[0] and "3 images, 2 views" in places[0]
    assert "valid_metadata_view_position.json" in places[1] and "1 images, 2 views" in places[1]
    (empty,) = log.examples[("study", "no image path")]
    assert "test_metadata_view_position.json record pGRDNFXTR00000002_aGRDNACCN00000042" in empty


def test_image_paths_resolve_from_metadata_to_the_unpacked_deid_png_folder():
    studies, _ = _read()
    paths = [i.path for s in studies for i in s.images]
    assert all(p.startswith("deid_png/GRDNFXTR") and p.endswith(".png") for p in paths)
    assert not any(".." in p for p in paths)


def test_splits_option_and_missing_files(tmp_path):
    studies, _ = _read(splits=("valid",))
    assert [s.split for s in studies] == ["validate", "validate"]
    with pytest.raises(ReaderError, match=r"no \{split\}_metadata_view_position\.json"):
        _read(tmp_path)


def test_a_record_without_image_paths_or_patient_is_an_error(tmp_path):
    root = tmp_path / "ReXGradient-160K"
    shutil.copytree(FIXTURE, root)
    path = root / "metadata" / "test_metadata_view_position.json"
    obj = json.loads(path.read_text())
    del next(iter(obj.values()))["PatientID"]
    path.write_text(json.dumps(obj))
    with pytest.raises(ReaderError, match=r"record pGRDNFXTR00000002_.*missing field 'PatientID'"):
        _read(root)


def test_prepare_writes_the_studies_and_the_skip_counts(tmp_path):
    out = tmp_path / "rexgradient.jsonl"
    n = prepare("rexgradient", FIXTURE, out, check_images=False)
    assert n == len(EXPECTED)
    assert list(read_studies(out)) == EXPECTED
    report = json.loads(skips_path(out).read_text())
    assert report["skipped"] == SKIPS and report["studies_written"] == n


def test_prepare_counts_images_missing_under_root(tmp_path):
    root = tmp_path / "ReXGradient-160K"
    shutil.copytree(FIXTURE, root)
    first = EXPECTED[0].images[0].path
    (root / first).parent.mkdir(parents=True)
    (root / first).write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "rexgradient.jsonl"
    prepare("rexgradient", root, out, splits=("train",))
    studies = list(read_studies(out))
    assert [i.path for s in studies for i in s.images] == [first]
