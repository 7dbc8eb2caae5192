"""CheXpert Plus read from its real layout (tests/data/fixtures/chexpert-plus/README.md): real
ReXrank sections of three valid studies in the report CSV's 27 columns, rows of a study apart,
hard-wrapped sections, `nan` cells, CheXbert labels per image, and the patient shared with
CheXpert."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from radixpert.data.readers import SkipLog, chexpert, chexpert_plus
from radixpert.data.splits import patient_key
from radixpert.data.study import Image
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

FIXTURE = Path(__file__).parent / "fixtures" / "chexpert-plus"


def labels(**given: int) -> dict[str, int | None]:
    return {o: given.get(o.replace(" ", "_")) for o in OBSERVATIONS}


def test_the_release_layout_reads_to_its_studies():
    log = SkipLog()
    got = {s.id: s for s in log.studies(chexpert_plus.read(FIXTURE))}
    assert list(got) == [
        "chexpert-plus-valid-patient64589-study1", "chexpert-plus-valid-patient64620-study1",
        "chexpert-plus-valid-patient64595-study1", "chexpert-plus-train-patient42142-study5",
        "chexpert-plus-train-patient42142-study4", "chexpert-plus-train-patient42142-study3",
    ]  # fmt: skip
    s = got["chexpert-plus-valid-patient64589-study1"]
    assert (s.dataset, s.split, s.patient_id) == ("chexpert-plus", "validate", "patient64589")
    assert s.images == [
        Image("PNG/valid/patient64589/study1/view1_frontal.png", "AP"),
        Image("PNG/valid/patient64589/study1/view2_lateral.png", "LATERAL"),
    ]
    assert s.indication == "66 years Female with generalized weakness"
    assert s.comparison == "None."
    assert s.findings == (
        "Frontal and lateral views of the chest demonstrate low lung volumes. There is diffuse "
        "prominence of the interstitium with indistinct pulmonary vascular markings, further "
        "increased from the prior exam."
    )
    assert s.impression == (
        "1.INCREASED PROMINENCE OF THE INTERSTITIAL MARKINGS, WHICH MAY REFLECT EDEMA OR INFECTION."
    )
    assert s.labels == labels(Lung_Opacity=1, Edema=-1, Pneumonia=-1)
    assert s.extra["age"] == 67 and s.extra["sex"] == "Female"
    assert s.extra["deid_patient_id"] == "invented-0001"
    assert s.extra["report"].startswith("NARRATIVE:\nCHEST RADIOGRAPH")
    s = got["chexpert-plus-valid-patient64620-study1"]
    assert (s.findings, s.indication) == ("", "")  # empty cells (NaN in ReXrank's copy)
    assert s.labels == labels(Atelectasis=1, Pneumothorax=0, Pleural_Effusion=1,
                              Support_Devices=1)  # fmt: skip
    # study5's lateral is rows away from its frontal; study4's lateral has ap_pa "nan"
    assert [i.view for i in got["chexpert-plus-train-patient42142-study5"].images] == [
        "AP", "LATERAL"]  # fmt: skip
    s = got["chexpert-plus-train-patient42142-study4"]
    assert [i.view for i in s.images] == ["PA", "LATERAL"] and s.labels == {}
    s = got["chexpert-plus-train-patient42142-study3"]
    assert (s.images[0].view, s.findings, s.indication, s.labels) == ("", "", "", {})
    assert log.counts == {
        ("view", "no view"): 1,  # a lateral whose ap_pa says AP
        ("label", "CheXbert labels differ between the images of one study"): 1,  # study4
        ("label", "no CheXbert labels for the study"): 1,  # study3
    }


def test_label_files_and_image_layout_options(tmp_path):
    log = SkipLog()
    got = {s.id: s for s in log.studies(chexpert_plus.read(FIXTURE, labels="findings"))}
    # the publisher README's example record, and a pandas-written NaN
    assert got["chexpert-plus-train-patient42142-study5"].labels == labels(No_Finding=1)
    assert got["chexpert-plus-valid-patient64589-study1"].labels == labels(Lung_Opacity=1,
                                                                           Edema=1)  # fmt: skip
    assert log.counts[("label", "no CheXbert labels for the study")] == 4
    plain = SkipLog()
    got = list(plain.studies(chexpert_plus.read(FIXTURE, labels="none", image_dir="",
                                                image_ext=".jpg")))  # fmt: skip
    assert all(s.labels == {} for s in got)
    assert got[0].images[0].path == "valid/patient64589/study1/view1_frontal.jpg"
    assert plain.counts == {("view", "no view"): 1}
    root = tmp_path / "plus"
    shutil.copytree(FIXTURE, root)
    (root / "chexbert_labels" / "impression_fixed.json").unlink()
    with pytest.raises(ReaderError, match=r"impression_fixed\.json: no such file .*labels=none"):
        list(chexpert_plus.read(root))


def test_the_patient_is_the_one_chexpert_names(tmp_path):
    """patient64589 of CheXpert's valid.csv (Female, 67, AP + lateral) is CheXpert Plus's."""
    plus = next(s for s in SkipLog().studies(chexpert_plus.read(FIXTURE)) if "64589" in s.id)
    root = tmp_path / "CheXpert-v1.0-small"
    shutil.copytree(Path(__file__).parent / "fixtures" / "chexpert" / "CheXpert-v1.0-small", root)
    (root / "train").mkdir()
    (root / "valid").mkdir()
    original = next(
        s for s in SkipLog().studies(chexpert.read(root)) if s.patient_id == "patient64589"
    )
    assert patient_key(plus) == patient_key(original) == ("chexpert", "patient64589")
    assert (original.extra["sex"], original.extra["age"]) == (plus.extra["sex"], plus.extra["age"])


def test_duplicate_rows_and_broken_files(tmp_path):
    root = tmp_path / "plus"
    shutil.copytree(FIXTURE, root)
    path = root / "df_chexpert_plus_240401.csv"
    rows = list(csv.reader(path.open(newline="")))
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([*rows, rows[1]])  # a row twice
    log = SkipLog()
    got = list(log.studies(chexpert_plus.read(root)))
    assert len(got[0].images) == 2 and log.counts[("image", "image listed twice")] == 1
    labels_file = root / "chexbert_labels" / "impression_fixed.json"
    labels_file.write_text('{"path_to_image": "x.jpg", "Edema": 2.0}\n')
    with pytest.raises(ReaderError, match=r"impression_fixed\.json: line 1: 'Edema' = 2\.0"):
        list(chexpert_plus.read(root))
    rows[1][0] = "patient1/view1_frontal.jpg"
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    with pytest.raises(ReaderError, match=r"path_to_image 'patient1/view1_frontal\.jpg' is not"):
        list(chexpert_plus.read(root, labels="none"))
