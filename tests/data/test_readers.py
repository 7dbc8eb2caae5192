"""Dataset readers on fixtures in the publishers' native layouts: the records they give, that
they stream, and that broken input is an error naming the file and the field."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from radixpert.data import templates
from radixpert.data.readers import SkipLog, chexpert, iu_xray, mimic_cxr
from radixpert.data.study import read_studies, write_studies
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS
from tests.data import fixtures as fx


def _studies(items):
    """The Studies of a reader's stream (its Skips counted and dropped)."""
    return list(SkipLog().studies(items))


def norm(text: str) -> str:
    """Whitespace-insensitive text (report lines are wrapped at 79 characters)."""
    return " ".join(text.split())


# ------------------------------------------------------------------------------ MIMIC-CXR


@pytest.fixture
def mimic(tmp_path: Path) -> tuple[Path, list[fx.MimicStudy]]:
    root = tmp_path / "mimic-cxr-jpg"
    return root, fx.build_mimic(root)


def test_mimic_records(mimic):
    root, written = mimic
    got = list(mimic_cxr.read(root))
    assert [s.id for s in got] == [f"mimic-{w.study_id}" for w in written]
    for s, w in zip(got, written):
        s.validate()
        assert s.dataset == "mimic-cxr"
        assert s.patient_id == w.subject_id
        assert s.split == w.split
        assert [i.view for i in s.images] == w.views
        assert [i.path for i in s.images] == [
            f"files/p{w.subject_id[:2]}/p{w.subject_id}/s{w.study_id}/{d}.jpg" for d in w.dicom_ids
        ]
        assert all((root / i.path).is_file() for i in s.images)
        assert norm(s.indication) == norm(w.indication)
        assert norm(s.comparison) == norm(w.comparison)
        assert norm(s.findings) == norm(w.findings)
        assert norm(s.impression) == norm(w.impression)
        assert s.report_source == "original"
        assert s.extra["dicom_ids"] == w.dicom_ids
    first, second, third = got
    # blank (not mentioned) stays None and is not confused with 0.0 (negative)
    assert first.labels["No Finding"] == 1
    assert first.labels["Pneumothorax"] == 0
    assert first.labels["Edema"] is None
    assert second.labels["Edema"] == -1 and second.labels["Cardiomegaly"] == 1
    assert set(first.labels) == set(OBSERVATIONS)
    assert third.labels == {}  # no labeller row: unlabelled
    assert third.findings == ""
    assert first.extra["study_date"] == "21800506"


def test_mimic_views_filter_and_no_labels(mimic):
    root, _ = mimic
    log = SkipLog()
    # Any spelling of a view selects it (normalised as the metadata's ViewPosition is).
    got = list(log.studies(mimic_cxr.read(root, views=("antero-posterior",), labels=None)))
    assert [s.id for s in got] == ["mimic-53189527", "mimic-57375967"]
    assert log.counts == {}  # a filter is a choice, not an irregularity (--strict must pass)
    assert [[i.view for i in s.images] for s in got] == [["AP"], ["AP"]]
    assert all(s.labels == {} for s in got)


def test_mimic_negbio_table_is_used(mimic):
    root, _ = mimic
    path = root / "mimic-cxr-2.0.0-negbio.csv.gz"
    header, rows = fx.read_csv(path)
    rows[0][header.index("Edema")] = "1.0"
    fx.write_csv(path, header, rows)
    assert next(mimic_cxr.read(root, labels="negbio")).labels["Edema"] == 1
    assert next(mimic_cxr.read(root, labels="chexpert")).labels["Edema"] is None


def test_mimic_separate_reports_root(tmp_path):
    root, reports = tmp_path / "jpg", tmp_path / "mimic-cxr"
    written = fx.build_mimic(root, reports_root=reports)
    with pytest.raises(ReaderError, match=r"jpg/files/p10/p10000032/s50414267\.txt: report"):
        list(mimic_cxr.read(root, missing_report="error"))
    got = list(mimic_cxr.read(root, reports_root=reports))
    assert norm(got[0].impression) == norm(written[0].impression)


def test_mimic_streams_many_studies(tmp_path, monkeypatch):
    root = tmp_path / "m"
    written = fx.build_mimic(root, n_extra=300)
    reads: list[Path] = []
    real = Path.read_text

    def counting(self, *a, **k):
        reads.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", counting)
    it = SkipLog().studies(mimic_cxr.read(root))
    next(it)
    # the first record comes after reading one report, not all 303
    assert len(reads) == 1
    rest = list(it)
    assert len(rest) + 1 == len(written) == 303
    assert [s.id for s in rest] == [f"mimic-{w.study_id}" for w in written[1:]]
    for s, w in zip(rest, written[1:]):
        assert s.labels == ({} if w.labels is None else w.labels)
        assert [i.view for i in s.images] == w.views
        assert s.split == w.split


def test_mimic_missing_report(mimic, caplog):
    root, _ = mimic
    report = root / "files/p10/p10000032/s53189527.txt"
    report.unlink()
    with pytest.raises(ReaderError, match=r"s53189527\.txt.*not found"):
        list(mimic_cxr.read(root, missing_report="error"))
    log = SkipLog()
    with caplog.at_level(logging.WARNING):
        got = list(log.studies(mimic_cxr.read(root)))
    assert [s.id for s in got] == ["mimic-50414267", "mimic-57375967"]
    assert log.counts == {("study", "no report file"): 1}
    assert "files/p10/p10000032/s53189527.txt" in log.examples[("study", "no report file")][0]


def test_mimic_missing_label_column(mimic):
    root, _ = mimic
    path = root / "mimic-cxr-2.0.0-chexpert.csv.gz"
    header, rows = fx.read_csv(path)
    i = header.index("Pleural Other")
    fx.write_csv(path, header[:i] + header[i + 1 :], [r[:i] + r[i + 1 :] for r in rows])
    with pytest.raises(
        ReaderError, match=r"chexpert\.csv\.gz: missing column\(s\) 'Pleural Other'"
    ):
        list(mimic_cxr.read(root))


def test_mimic_bad_label_value(mimic):
    root, _ = mimic
    path = root / "mimic-cxr-2.0.0-chexpert.csv.gz"
    header, rows = fx.read_csv(path)
    rows[1][header.index("Edema")] = "2.0"
    fx.write_csv(path, header, rows)
    with pytest.raises(ReaderError, match=r"chexpert\.csv\.gz: line 3: column 'Edema' = '2\.0'"):
        list(mimic_cxr.read(root))


def test_mimic_bad_split_value(mimic):
    root, _ = mimic
    path = root / "mimic-cxr-2.0.0-split.csv.gz"
    header, rows = fx.read_csv(path)
    rows[0][header.index("split")] = "val"
    fx.write_csv(path, header, rows)
    with pytest.raises(ReaderError, match=r"split\.csv\.gz: line 2: column 'split' = 'val'"):
        list(mimic_cxr.read(root))


def test_mimic_missing_files(mimic):
    root, written = mimic
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").rename(root / "renamed.csv.gz")
    with pytest.raises(ReaderError, match=r"metadata\.csv\.gz: no such file"):
        list(mimic_cxr.read(root))
    (root / "renamed.csv.gz").rename(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    w = written[2]
    image = root / f"files/p10/p{w.subject_id}/s{w.study_id}/{w.dicom_ids[1]}.jpg"
    image.unlink()
    assert len(list(mimic_cxr.read(root))) == 3  # a missing image is prepare's count


def test_mimic_missing_image_dir(tmp_path):
    fx.build_mimic(tmp_path)
    (tmp_path / "files").rename(tmp_path / "elsewhere")
    with pytest.raises(ReaderError, match=r"files: image directory not found"):
        list(mimic_cxr.read(tmp_path))


def test_mimic_corrupt_gzip_and_non_adjacent_rows(mimic):
    root, written = mimic
    meta = root / "mimic-cxr-2.0.0-metadata.csv.gz"
    header, rows = fx.read_csv(meta)
    fx.write_csv(meta, header, [rows[0], rows[2], rows[1], *rows[3:]])
    # A re-saved copy with a study's rows apart: the study is still one record, with its images
    # in the file's order (tests/data/test_reader_mimic_cxr.py covers this in detail).
    got = {s.id: s for s in mimic_cxr.read(root)}
    assert len(got) == 3
    assert got["mimic-50414267"].extra["dicom_ids"] == written[0].dicom_ids
    meta.write_bytes(b"dicom_id,subject_id\n")  # plain text under a .gz name
    with pytest.raises(ReaderError, match=r"metadata\.csv\.gz: cannot be read as CSV"):
        list(mimic_cxr.read(root))


# -------------------------------------------------------------------------------- IU-Xray


def test_iu_r2gen_records(tmp_path):
    written = fx.build_iu_r2gen(tmp_path)
    got = _studies(iu_xray.read(tmp_path))
    assert [s.id for s in got] == [f"iu-{w.id}" for w in written]
    assert [s.split for s in got] == ["train", "train", "validate", "test"]
    assert got[2].extra["publisher_split"] == "val"
    for s, w in zip(got, written):
        s.validate()
        assert s.dataset == "iu-xray"
        assert s.patient_id == w.id.split("_")[0]
        assert s.findings == w.findings
        assert s.impression == "" and s.labels == {}
        assert [i.path for i in s.images] == [f"images/{w.id}/{n}" for n in w.image_ids]
        assert all((tmp_path / i.path).is_file() for i in s.images)


def test_iu_r2gen_streams_many(tmp_path):
    written = fx.build_iu_r2gen(tmp_path, n_extra=300)
    it = SkipLog().studies(iu_xray.read(tmp_path))
    assert next(it).id == f"iu-{written[0].id}"
    assert len(list(it)) + 1 == len(written) == 304


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["train"][1].pop("report"), r'"train"\[1\]: missing field \'report\''),
        (lambda d: d["val"][0].update(image_path="x.png"), r"field 'image_path' must be a list"),
        (lambda d: d["test"][0].update(split="train"), r"\"test\"\[0\]: field 'split' = 'train'"),
        (lambda d: d.update(dev=[]), r"unknown split key\(s\) \['dev'\]"),
    ],
)
def test_iu_r2gen_bad_records(tmp_path, edit, message):
    fx.build_iu_r2gen(tmp_path)
    path = tmp_path / "annotation.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ReaderError, match=r"annotation\.json: .*" + message):
        _studies(iu_xray.read(tmp_path))


def test_iu_r2gen_missing_images_dir_and_bad_json(tmp_path):
    fx.build_iu_r2gen(tmp_path)
    (tmp_path / "images").rename(tmp_path / "imgs")
    with pytest.raises(ReaderError, match=r"images: image directory not found"):
        _studies(iu_xray.read(tmp_path))
    assert len(_studies(iu_xray.read(tmp_path, images_dir="imgs"))) == 4
    (tmp_path / "annotation.json").write_text('{"train": [')
    with pytest.raises(ReaderError, match=r"annotation\.json: not valid JSON \(line 1"):
        _studies(iu_xray.read(tmp_path, images_dir="imgs"))


def test_iu_openi_records(tmp_path):
    written = fx.build_openi(tmp_path)
    log = SkipLog()
    got = list(log.studies(iu_xray.read(tmp_path, layout="openi")))
    assert log.counts[("study", "report lists no image")] == 1
    # numeric order of the XML files (1, 10), report 2 has no image
    assert [s.id for s in got] == ["iu-CXR1", "iu-CXR10"]
    for s, w in zip(got, [written[0], written[2]]):
        s.validate()
        assert (s.split, s.patient_id) == ("", w.id)
        assert (s.indication, s.comparison) == (w.indication, w.comparison)
        assert (s.findings, s.impression) == (w.findings, w.impression)
        assert [i.path for i in s.images] == [f"NLMCXR_png/{i}.png" for i in w.image_ids]
        assert s.extra["mesh_major"] == w.mesh_major
    assert got[0].extra["mesh_automatic"] == ["Lung"]
    assert got[1].comparison == ""  # self-closing AbstractText
    kept = _studies(iu_xray.read(tmp_path, layout="openi", keep_without_images=True))
    assert [s.id for s in kept] == ["iu-CXR1", "iu-CXR2", "iu-CXR10"]
    assert kept[1].images == [] and kept[1].impression == "No acute disease."


def test_iu_openi_errors(tmp_path):
    fx.build_openi(tmp_path)
    bad = tmp_path / "ecgen-radiology" / "10.xml"
    text = bad.read_text()
    bad.write_text(text.replace("</Abstract>", ""))
    with pytest.raises(ReaderError, match=r"10\.xml: malformed XML at line 2, column"):
        _studies(iu_xray.read(tmp_path, layout="openi"))
    bad.write_text(text.replace('Label="FINDINGS"', 'Label="RESULTS"'))
    with pytest.raises(ReaderError, match=r"10\.xml: AbstractText Label = 'RESULTS'"):
        _studies(iu_xray.read(tmp_path, layout="openi"))
    # MeSH nested in MedlineCitation (a variant seen in third-party copies) is still found
    mesh = text[text.index("<MeSH>") : text.index("</MeSH>") + 7]
    bad.write_text(
        text.replace(mesh, "").replace("</MedlineCitation>", mesh + "</MedlineCitation>")
    )
    assert _studies(iu_xray.read(tmp_path, layout="openi"))[-1].extra["mesh_major"] == [
        "Calcified Granuloma/lung/upper lobe/right"
    ]
    bad.write_text(text)
    (tmp_path / "ecgen-radiology").rename(tmp_path / "reports")
    with pytest.raises(ReaderError, match=r"ecgen-radiology: report directory not found"):
        _studies(iu_xray.read(tmp_path, layout="openi"))


# ------------------------------------------------------------------------------- CheXpert


@pytest.fixture
def chex(tmp_path: Path) -> tuple[Path, list[fx.ChexpertStudy]]:
    root = tmp_path / "CheXpert-v1.0-small"
    return root, fx.build_chexpert(root)


def test_chexpert_records(chex):
    root, written = chex
    got = list(chexpert.read(root))
    assert [s.id for s in got] == [f"chexpert-{w.patient}-{w.study}" for w in written]
    assert [s.split for s in got] == ["train", "train", "train", "validate"]
    for s, w in zip(got, written):
        s.validate()
        assert s.dataset == "chexpert" and s.patient_id == w.patient
        assert s.labels == w.labels
        assert s.report_source == "synthesised-from-labels"
        assert s.extra["sex"] == w.sex and s.extra["age"] == w.age
        assert s.extra["publisher_split"] == w.split
        assert all((root / i.path).is_file() for i in s.images)
    assert [i.path for i in got[2].images] == [
        "train/patient00002/study1/view1_frontal.jpg",
        "train/patient00002/study1/view2_lateral.jpg",
    ]
    assert [i.view for i in got[2].images] == ["AP", "LATERAL"]
    # blank (None) vs 0.0 vs -1.0 as written
    assert got[2].labels["Cardiomegaly"] == -1
    assert got[2].labels["Edema"] == 0 and got[2].labels["Fracture"] is None
    # synthesised text: positives stated, uncertain hedged, reproducible
    assert "fracture" in got[1].findings.lower() and "fracture" in got[1].impression.lower()
    assert "pneumothorax" in got[1].findings.lower()
    assert got[2].impression.lower().startswith(("possible", "cannot exclude", "questionable"))
    again = list(chexpert.read(root))
    assert [(s.findings, s.impression) for s in again] == [(s.findings, s.impression) for s in got]


def test_chexpert_streams_many(tmp_path):
    written = fx.build_chexpert(tmp_path, n_extra=300)
    it = chexpert.read(tmp_path)
    next(it)
    rest = list(it)
    assert len(rest) + 1 == len(written) == 304
    assert [s.labels for s in rest] == [w.labels for w in written[1:]]
    assert len({s.findings for s in rest}) > 100  # wording varies


def test_chexpert_errors(chex):
    root, _ = chex
    path = root / "train.csv"
    header, rows = fx.read_csv(path)
    good = [list(r) for r in rows]
    rows[2][header.index("Edema")] = "2.0"
    fx.write_csv(path, header, rows)
    with pytest.raises(ReaderError, match=r"train\.csv: line 4: column 'Edema' = '2\.0'"):
        list(chexpert.read(root))
    rows = [list(r) for r in good]
    rows[3][header.index("Edema")] = "1.0"  # second image of a study disagrees with the first
    fx.write_csv(path, header, rows)
    log = SkipLog()  # the study is left out and counted (tests/data/test_reader_chexpert.py)
    assert len(list(log.studies(chexpert.read(root)))) == 3
    assert log.counts == {("study", "labels differ between the images of one study"): 1}
    i = header.index("AP/PA")
    fx.write_csv(path, header[:i] + header[i + 1 :], [r[:i] + r[i + 1 :] for r in good])
    with pytest.raises(ReaderError, match=r"train\.csv: missing column\(s\) 'AP/PA'"):
        list(chexpert.read(root))
    fx.write_csv(path, header, good)
    (root / "valid").rename(root / "val")
    with pytest.raises(ReaderError, match=r"valid: image directory not found"):
        list(chexpert.read(root))
    assert len(list(chexpert.read(root, files=["train.csv"]))) == 3


# ------------------------------------------------------------------------------ templates


def test_templates_cover_observations_and_are_deterministic():
    assert set(templates.PHRASES) == set(OBSERVATIONS) - {"No Finding"}
    labels = {o: None for o in OBSERVATIONS}
    assert templates.report_from_labels(labels, random.Random(0)) == ("", "")
    normal = templates.report_from_labels(dict(labels, **{"No Finding": 1}), random.Random(0))
    assert normal[0]
    assert "acute" in normal[1].lower() or "normal" in normal[1].lower()
    mixed = dict(labels, **{"Edema": 1, "Pneumothorax": 0, "Cardiomegaly": -1})
    texts = {templates.report_from_labels(mixed, random.Random(s)) for s in range(30)}
    assert len(texts) > 3  # varied wording
    for findings, impression in texts:
        assert "edema" in findings.lower() and "pneumothorax" in findings.lower()
        assert "edema" in impression.lower() and "cardiomegaly" in impression.lower()
    first = templates.report_from_labels(mixed, random.Random("s1"))
    assert first == templates.report_from_labels(mixed, random.Random("s1"))
    with pytest.raises(ValueError, match=r"labels\['Edema'\] = 2"):
        templates.report_from_labels({"Edema": 2}, random.Random(0))


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize(
    ("module", "build"),
    [(mimic_cxr, fx.build_mimic), (iu_xray, fx.build_iu_r2gen), (chexpert, fx.build_chexpert)],
)
def test_records_round_trip_through_jsonl(tmp_path, module, build):
    build(tmp_path / "d")
    direct = _studies(module.read(tmp_path / "d"))
    out = tmp_path / "out.jsonl"
    assert write_studies(direct, out) == len(direct) > 0
    assert [s.to_dict() for s in read_studies(out)] == [s.to_dict() for s in direct]


def test_mimic_study_missing_from_the_split_file_is_counted(mimic):
    root, _ = mimic
    path = root / "mimic-cxr-2.0.0-split.csv.gz"
    header, rows = fx.read_csv(path)
    keep = [r for r in rows if r[header.index("study_id")] != "57375967"]
    fx.write_csv(path, header, keep)
    log = SkipLog()
    got = list(log.studies(mimic_cxr.read(root)))
    assert "mimic-57375967" not in {s.id for s in got} and len(got) == 2
    assert log.counts == {("study", "study not in the split file"): 1}
