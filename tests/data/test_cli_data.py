"""`radixpert data prepare` on each native-layout fixture of the test fixture builders, and
`radixpert data split` with no patient in two splits."""

from __future__ import annotations

import pytest

from radixpert.cli import main
from radixpert.data.splits import check_no_leakage
from radixpert.data.study import read_studies
from tests.data.fixtures import build_chexpert, build_iu_r2gen, build_mimic, build_openi


@pytest.mark.parametrize(
    ("dataset", "build", "options"),
    [
        ("mimic-cxr", build_mimic, []),
        ("iu-xray", build_iu_r2gen, ["layout=r2gen"]),
        ("iu-xray", build_openi, ["layout=openi"]),
        ("chexpert", build_chexpert, []),
    ],
)
def test_prepare_each_fixture(tmp_path, dataset, build, options, capsys):
    root = tmp_path / "root"
    build(root)
    out = tmp_path / "studies.jsonl"
    assert main(["data", "prepare", dataset, "--root", str(root), "--out", str(out), *options]) == 0
    studies = list(read_studies(out))
    assert studies and all(s.images for s in studies)
    assert f"{dataset}: {len(studies)} studies" in capsys.readouterr().err


def test_split_command(tmp_path, capsys):
    root = tmp_path / "root"
    build_openi(root)  # Open-I ships no split
    src, out = tmp_path / "s.jsonl", tmp_path / "split.jsonl"
    assert (
        main(
            [
                "data",
                "prepare",
                "iu-xray",
                "--root",
                str(root),
                "--out",
                str(src),
                "layout=openi",
            ]
        )
        == 0
    )
    assert all(s.split == "" for s in read_studies(src))
    assert main(["data", "split", str(src), "--out", str(out), "--seed", "1"]) == 0
    studies = list(read_studies(out))
    assert all(s.split in ("train", "validate", "test") for s in studies)
    check_no_leakage(studies)


def test_prepare_errors_name_the_file(tmp_path, capsys):
    root = tmp_path / "root"
    build_mimic(root)
    (root / "mimic-cxr-2.0.0-split.csv.gz").write_bytes(b"not gzip")
    assert (
        main(
            [
                "data",
                "prepare",
                "mimic-cxr",
                "--root",
                str(root),
                "--out",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 2
    )
    assert "mimic-cxr-2.0.0-split.csv.gz" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()  # no half-written output
