"""CheXpert read from its real CSV layout (tests/data/fixtures/chexpert/README.md): real
train/valid rows, the full-size release's Path prefix, the CheXlocalize test-set labels, and the
irregular rows (Sex `Unknown`, Age 0, frontal without AP/PA, LL/RL laterals)."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from radixpert.data.readers import SkipLog, chexpert
from radixpert.data.study import Image
from radixpert.data.views import is_frontal
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS
from tests.data import fixtures as fx

FIXTURES = Path(__file__).parent / "fixtures" / "chexpert"


def copy(tree: str, tmp_path: Path) -> Path:
    """The fixture tree under tmp_path, with a tiny JPEG at every image its CSVs name."""
    root = tmp_path / tree
    shutil.copytree(FIXTURES / tree, root)
    jpg = fx.tiny_jpeg()
    for path in root.rglob("*.csv"):
        for row in csv.DictReader(path.open(newline="")):
            rel = re.search(r"(train|valid|test)/.*", row["Path"]).group(0)
            (path.parent / rel).parent.mkdir(parents=True, exist_ok=True)
            (path.parent / rel).write_bytes(jpg)
    return root


def labels(**given: int) -> dict[str, int | None]:
    return {o: given.get(o.replace(" ", "_")) for o in OBSERVATIONS}


ZERO = dict.fromkeys((o.replace(" ", "_") for o in OBSERVATIONS), 0)


def test_real_rows_read_to_the_studies_they_describe(tmp_path):
    root = copy("CheXpert-v1.0-small", tmp_path)
    log = SkipLog()
    got = {s.id: s for s in log.studies(chexpert.read(root))}
    assert list(got) == [
        "chexpert-patient00001-study1", "chexpert-patient00002-study2",
        "chexpert-patient90001-study1", "chexpert-patient90002-study1",
        "chexpert-patient90003-study2", "chexpert-patient90003-study1",
        "chexpert-patient64541-study1", "chexpert-patient64542-study1",
        "chexpert-patient64547-study1", "chexpert-patient64581-study1",
        "chexpert-patient64589-study1",
    ]  # fmt: skip
    s = got["chexpert-patient00001-study1"]
    assert (s.dataset, s.split, s.patient_id) == ("chexpert", "train", "patient00001")
    assert s.images == [Image("train/patient00001/study1/view1_frontal.jpg", "AP")]
    assert s.labels == labels(No_Finding=1, Pneumothorax=0, Support_Devices=1)
    assert s.extra == {"publisher_split": "train", "sex": "Female", "age": 68,
                       "source_file": "train.csv"}  # fmt: skip
    assert s.report_source == "synthesised-from-labels" and s.findings and s.impression
    s = got["chexpert-patient00002-study2"]
    assert s.labels == labels(Cardiomegaly=-1, Lung_Opacity=1, Edema=-1, Consolidation=-1,
                              Atelectasis=-1, Pleural_Effusion=-1, Fracture=1)  # fmt: skip
    # valid.csv: 1.0 / 0.0 only; views in the file's order, not the view number's
    s = got["chexpert-patient64581-study1"]
    assert (s.split, s.labels) == ("validate", labels(**ZERO))
    assert [(Path(i.path).name, i.view) for i in s.images] == [
        ("view1_frontal.jpg", "PA"), ("view3_lateral.jpg", "LATERAL"),
        ("view2_frontal.jpg", "PA")]  # fmt: skip
    assert [i.view for i in got["chexpert-patient64547-study1"].images] == ["PA", "PA", "LATERAL"]
    assert [i.view for i in got["chexpert-patient64589-study1"].images] == ["LATERAL", "AP"]
    assert got["chexpert-patient64541-study1"].labels == labels(
        **{**ZERO, "Enlarged_Cardiomediastinum": 1, "Cardiomegaly": 1, "Lung_Opacity": 1}
    )
    # the irregular rows
    assert "sex" not in got["chexpert-patient90001-study1"].extra  # Sex "Unknown"
    s = got["chexpert-patient90002-study1"]
    assert "age" not in s.extra and s.extra["sex"] == "Male"  # Age 0
    assert [i.view for i in s.images] == ["PA", "LL"]
    assert [i.view for i in got["chexpert-patient90003-study2"].images] == ["FRONTAL", "RL"]
    assert [i.view for i in got["chexpert-patient90003-study1"].images] == ["LATERAL"]
    assert is_frontal("FRONTAL") and not is_frontal("RL")
    assert log.counts == {("field", "sex not Female or Male"): 1,
                          ("field", "age 0 or not a whole number"): 1}  # fmt: skip
    assert all((root / i.path).is_file() for s in got.values() for i in s.images)


def test_root_may_be_the_folder_above(tmp_path):
    copy("CheXpert-v1.0-small", tmp_path)
    inside = list(SkipLog().studies(chexpert.read(tmp_path / "CheXpert-v1.0-small")))
    above = list(SkipLog().studies(chexpert.read(tmp_path)))
    assert [s.id for s in inside] == [s.id for s in above]
    assert [i.path for i in above[0].images] == [
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    ]
    assert all((tmp_path / i.path).is_file() for s in above for i in s.images)


def test_the_full_size_release_prefix(tmp_path):
    root = copy("full", tmp_path) / "CheXpert-v1.0"
    got = list(SkipLog(strict=True).studies(chexpert.read(root, files=["valid.csv"])))
    assert [(s.id, s.split, [i.path for i in s.images]) for s in got] == [
        (f"chexpert-patient{n}-study1", "validate", [f"valid/patient{n}/study1/view1_frontal.jpg"])
        for n in (64541, 64542)
    ]


def test_the_test_set_labels_of_chexlocalize(tmp_path):
    root = copy("chexlocalize", tmp_path) / "CheXpert"
    got = list(SkipLog(strict=True).studies(chexpert.read(root, files=["test_labels.csv"])))
    assert [(s.id, s.split) for s in got] == [
        ("chexpert-patient64741-study1", "test"),
        ("chexpert-patient64742-study1", "test"),
    ]
    assert got[1].images == [
        Image("test/patient64742/study1/view1_frontal.jpg", "FRONTAL"),
        Image("test/patient64742/study1/view2_lateral.jpg", "LATERAL"),
    ]
    assert got[1].labels == labels(**{**ZERO, "No_Finding": 1})
    assert got[0].extra == {"publisher_split": "test", "source_file": "test_labels.csv"}


def rewrite(path: Path, line: int, cells: dict[str, str]) -> None:
    rows = list(csv.reader(path.open(newline="")))
    for column, value in cells.items():
        rows[line - 1][rows[0].index(column)] = value
    with path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def test_irregular_values_are_counted(tmp_path):
    root = copy("CheXpert-v1.0-small", tmp_path)
    rewrite(root / "valid.csv", 3, {"Edema": "1.0"})  # patient64542: frontal vs lateral
    rewrite(root / "valid.csv", 5, {"AP/PA": "LL"})  # a frontal with a lateral's AP/PA
    log = SkipLog()
    got = {s.id: s for s in log.studies(chexpert.read(root, files=["valid.csv"]))}
    assert "chexpert-patient64542-study1" not in got
    assert [i.view for i in got["chexpert-patient64547-study1"].images] == ["", "PA", "LATERAL"]
    assert log.counts == {("study", "labels differ between the images of one study"): 1,
                          ("view", "no view"): 1}  # fmt: skip
    (example,) = log.examples[("study", "labels differ between the images of one study")]
    assert example.endswith("valid.csv: line 4: record skipped: labels differ between the images "
                            "of one study (Edema; line 3)")  # fmt: skip


def test_broken_files_are_errors(tmp_path):
    root = copy("CheXpert-v1.0-small", tmp_path)
    rewrite(root / "train.csv", 2, {"Edema": "2.0"})
    with pytest.raises(ReaderError, match=r"train\.csv: line 2: column 'Edema' = '2\.0'"):
        list(chexpert.read(root))
    rewrite(root / "train.csv", 2, {"Edema": "", "Path": "patient00001/view1.jpg"})
    with pytest.raises(ReaderError, match=r"line 2: column 'Path' = 'patient00001/view1\.jpg'"):
        list(chexpert.read(root))
    with pytest.raises(ReaderError, match=r"test_labels\.csv: no such file"):
        list(chexpert.read(root, files=["test_labels.csv"]))
    shutil.rmtree(root / "valid")
    with pytest.raises(ReaderError, match=r"valid: image directory not found"):
        list(chexpert.read(root, files=["valid.csv"]))
