"""CheXpert's CSVs read from the folder itself or from the folder above it (the CSVs' Path
column starts with `CheXpert-v1.0-small/`), and frontal rows without AP/PA."""

from __future__ import annotations

import csv

from radixpert.data.readers import SkipLog, chexpert
from radixpert.data.views import is_frontal
from tests.data import fixtures as fx


def test_root_may_be_the_folder_above_and_paths_stay_under_it(tmp_path):
    fx.build_chexpert(tmp_path / "CheXpert-v1.0-small")
    inside = list(SkipLog(strict=True).studies(chexpert.read(tmp_path / "CheXpert-v1.0-small")))
    above = list(SkipLog(strict=True).studies(chexpert.read(tmp_path)))
    assert [s.id for s in inside] == [s.id for s in above]
    assert inside[0].images[0].path == "train/patient00001/study1/view1_frontal.jpg"
    assert (
        above[0].images[0].path == "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
    )
    assert all((tmp_path / i.path).is_file() for s in above for i in s.images)


def test_a_frontal_row_without_ap_pa_is_frontal(tmp_path):
    root = tmp_path / "CheXpert-v1.0-small"
    fx.build_chexpert(root)
    path = root / "valid.csv"
    rows = list(csv.reader(path.open()))
    i = rows[0].index("AP/PA")
    rows[1][i] = ""  # CheXpert has frontal rows whose AP/PA cell is empty
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    (study,) = [s for s in chexpert.read(root) if s.split == "validate"]
    assert [i.view for i in study.images] == ["FRONTAL", "LATERAL"]
    assert is_frontal(study.images[0].view)
