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


def _write(path, studies):
    from radixpert.data.study import write_studies

    write_studies(studies, path)
    return str(path)


def test_data_check_across_datasets_and_excluded_images(tmp_path, capsys):
    """MIMIC-CXR's train patient in ReXrank-MIMIC's test is a leak; an ImaGenome gold image in
    MS-CXR's training studies is reported; exit status 1 for either."""
    from radixpert.data.study import Image, Study

    jpg = "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
    mimic = _write(tmp_path / "mimic.jsonl", [
        Study(id="50414267", dataset="mimic-cxr", patient_id="10000032", split="train",
              images=[Image(jpg, "PA")]),
    ])  # fmt: skip
    rexrank = _write(tmp_path / "rexrank.jsonl", [
        Study(id="57977208", dataset="rexrank-mimic-cxr", patient_id="10000032", split="test"),
    ])  # fmt: skip
    avoid = tmp_path / "images_to_avoid.csv"
    dicom_id = jpg.rsplit("/", 1)[1].removesuffix(".jpg")
    dcm = jpg.removesuffix(".jpg") + ".dcm"
    avoid.write_text(f"subject_id,study_id,dicom_id,path,ViewPosition\n"
                     f"10000032,50414267,{dicom_id},{dcm},PA\n")  # fmt: skip
    assert main(["data", "check", mimic, rexrank, "--avoid", str(avoid)]) == 1
    out = capsys.readouterr().out
    assert "patients in more than one split: 1" in out
    assert "'10000032' (mimic-cxr): train (mimic-cxr 1), test (rexrank-mimic-cxr 1)" in out
    assert "1 training or validation studies hold one" in out
    assert main(["data", "check", mimic]) == 0


def test_data_split_with_another_dataset_keeps_its_patients_split(tmp_path):
    from radixpert.data.study import Study

    rexrank = _write(tmp_path / "rexrank.jsonl", [
        Study(id="57977208", dataset="rexrank-mimic-cxr", patient_id="10046166", split="test"),
    ])  # fmt: skip
    ms_cxr = _write(tmp_path / "ms_cxr.jsonl", [
        Study(id=f"ms{i}", dataset="ms-cxr", patient_id=pid)
        for i, pid in enumerate(["p10046166", "10000001", "10000002", "10000003"])
    ])  # fmt: skip
    out = tmp_path / "split.jsonl"
    assert main(["data", "split", ms_cxr, "-o", str(out), "--with", rexrank]) == 0
    split = {s.id: s.split for s in read_studies(out)}
    assert split["ms0"] == "test"  # the patient of ReXrank-MIMIC's test set
