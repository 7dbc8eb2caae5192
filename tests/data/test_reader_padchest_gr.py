"""PadChest-GR: the BIMCV release layout (tests/data/fixtures/padchest-gr/, sources in its
README.md): grounded_reports_*.json, master_table.csv.zip, Padchest_GR_files/PadChest_GR/."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image as PILImage

from radixpert.data.prepare import prepare
from radixpert.data.readers import SkipLog, padchest_gr
from radixpert.errors import ReaderError

FIXTURE = Path(__file__).parent / "fixtures" / "padchest-gr"
A = "47352104961734019623815738251048293617"
B = "118274015339164029918340751624980431572"
C = "30591826470113852062741958304721183465"
A_IMAGE = "216840111366964013686042548532013234155808361_02-086-107.png"


def release(tmp_path: Path, master: str = "zip") -> Path:
    """The fixture under ``tmp_path``, with the master table zipped (as shipped), unzipped, or
    unzipped into a folder of the same name (as an unzip on Windows leaves it)."""
    root = tmp_path / "BIMCV-Padchest-GR"
    root.mkdir(parents=True)
    shutil.copy(FIXTURE / "grounded_reports_20240819.json", root)
    if master == "zip":
        shutil.copy(FIXTURE / "master_table.csv.zip", root)
    else:
        with zipfile.ZipFile(FIXTURE / "master_table.csv.zip") as z:
            text = z.read("master_table.csv")
        target = root / "master_table.csv"
        if master == "folder":
            target.mkdir()
            target = target / "master_table.csv"
        target.write_bytes(text)
    return root


def read_all(root: Path, **options):
    log = SkipLog()
    return {s.id: s for s in log.studies(padchest_gr.read(root, **options))}, log


@pytest.mark.parametrize("master", ["zip", "plain", "folder"])
def test_release_reads_to_studies(tmp_path, master):
    studies, log = read_all(release(tmp_path, master))
    assert list(studies) == [f"padchest-gr-{s}" for s in (A, B, C)]
    a = studies[f"padchest-gr-{A}"]
    assert (a.dataset, a.split, a.patient_id, a.language) == (
        "padchest-gr", "validate", "61239384913846502293648105426148297150", "en")  # fmt: skip
    assert [(i.path, i.view) for i in a.images] == [
        (f"Padchest_GR_files/PadChest_GR/{A_IMAGE}", "FRONTAL")
    ]
    assert a.findings == "Cardiomegaly. Right pleural effusion. No pneumothorax is observed."
    assert [(b.label, b.phrase, b.x1) for b in a.boxes] == [
        ("cardiomegaly", "Cardiomegaly.", 0.312),
        ("pleural effusion", "Right pleural effusion.", 0.07),
        ("pleural effusion", "Right pleural effusion.", 0.11)]  # fmt: skip
    assert a.extra["box_set"] == ["boxes"] * 3
    assert [(e["sentence"], e["x1"]) for e in a.extra["extra_boxes"]] == [(0, 0.298)]
    assert a.extra["padchest_labels"] == ["cardiomegaly", "pleural effusion"]
    assert a.extra["label_groups"] == ["cardiomegaly", "pleural effusion"]
    third = a.extra["sentences"][2]
    assert (third["abnormal"], third["labels"], third["boxes"], third["es"]) == (
        False, [], 0, "No se observa neumotórax.")  # fmt: skip
    assert a.extra["sentences"][1]["progression"] == "Stable"
    assert (a.extra["patient_sex"], a.extra["patient_age"]) == ("M", "81")
    b = studies[f"padchest-gr-{B}"]
    assert b.split == "train" and b.extra["previous_study_id"] is not None
    # The border box is clamped into the image; the one reaching x2 = 1.4 is left out.
    assert [(x.label, x.y1, x.y2) for x in b.boxes if x.label == "kyphosis"] == [
        ("kyphosis", 0.0, 1.0)
    ]
    c = studies[f"padchest-gr-{C}"]
    assert (c.split, c.boxes, c.extra["label_groups"]) == ("test", [], [])
    assert log.to_dict()["skipped"] == {
        "box": {"box outside the image (0-1 coordinates)": 1},
        "study": {"study not in master_table": 1},
    }


def test_second_box_set_and_spanish(tmp_path):
    studies, _ = read_all(release(tmp_path), extra_boxes=True, language="es")
    a = studies[f"padchest-gr-{A}"]
    assert a.language == "es"
    assert a.findings == "Cardiomegalia. Derrame pleural derecho. No se observa neumotórax."
    assert a.extra["box_set"] == ["boxes", "extra_boxes", "boxes", "boxes"]
    assert [b.phrase for b in a.boxes][:2] == ["Cardiomegalia.", "Cardiomegalia."]


def test_image_folder_is_found(tmp_path):
    root = release(tmp_path)
    (root / "images_grounding").mkdir()  # RadVLM's layout
    PILImage.new("L", (8, 8)).save(root / "images_grounding" / A_IMAGE)
    studies, _ = read_all(root)
    assert studies[f"padchest-gr-{A}"].images[0].path == f"images_grounding/{A_IMAGE}"
    studies, _ = read_all(root, images="elsewhere/")
    assert studies[f"padchest-gr-{A}"].images[0].path == f"elsewhere/{A_IMAGE}"


def test_disagreeing_records_are_counted(tmp_path):
    root = release(tmp_path)
    path = root / "grounded_reports_20240819.json"
    records = json.loads(path.read_text())
    records[1]["ImageID"] = "another.png"
    records.append(records[0])
    records.append({"findings": []})
    records[0]["findings"].append("not an object")
    path.write_text(json.dumps(records))
    studies, log = read_all(root)
    assert list(studies) == [f"padchest-gr-{A}", f"padchest-gr-{C}"]
    assert log.to_dict()["skipped"]["study"] == {
        "ImageID differs from master_table": 1,
        "record without StudyID or ImageID": 1,
        "study listed twice": 1,
        "study not in master_table": 1,
    }
    assert log.to_dict()["skipped"]["field"] == {"finding is not an object": 1}


def test_missing_files_are_named(tmp_path):
    root = release(tmp_path)
    (root / "master_table.csv.zip").unlink()
    with pytest.raises(ReaderError, match=r"no master_table.csv or master_table.csv.zip"):
        list(padchest_gr.read(root))
    with pytest.raises(ReaderError, match=r"no grounded_reports_\*.json"):
        list(padchest_gr.read(tmp_path))
    with pytest.raises(ReaderError, match=r"language='fr'"):
        list(padchest_gr.read(release(tmp_path / "x"), language="fr"))


def test_prepare_writes_the_grounded_studies(tmp_path):
    out = tmp_path / "gr.jsonl"
    n = prepare("padchest-gr", release(tmp_path), out, check_images=False, extra_boxes=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"padchest-gr-{s}" for s in (A, B, C)]
    assert len(rows[0]["boxes"]) == 4
    skips = json.loads(out.with_name("gr.skips.json").read_text())
    assert skips["skipped"]["study"] == {"study not in master_table": 1}
    assert n == 3
