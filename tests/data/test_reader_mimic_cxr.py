"""MIMIC-CXR-JPG read from its real layout (tests/data/fixtures/mimic-cxr/README.md): the
metadata rows MIT-LCP publish for subject 10000032, invented studies in the release's format,
and the irregular studies of subject 11000011 (a missing and an empty report, a study absent
from the split file or in two splits, image rows of another subject / repeated / without
dicom_id, a ViewPosition that is not a view, repeated and conflicting label rows)."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from radixpert.data.prepare import prepare, skips_path
from radixpert.data.readers import SkipLog, mimic_cxr
from radixpert.data.study import Image, Study, read_studies
from radixpert.errors import ReaderError, UsageError
from radixpert.vocab import OBSERVATIONS

FIXTURE = Path(__file__).parent / "fixtures" / "mimic-cxr"
TABLES = [f"mimic-cxr-2.0.0-{n}.csv" for n in ("metadata", "split", "chexpert", "negbio")]
TEST_SET = "mimic-cxr-2.1.0-test-set-labeled.csv"


def copy(tmp_path: Path) -> Path:
    root = tmp_path / "mimic-cxr-jpg"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("README.md"))
    return root


def read(root: Path, **options) -> tuple[list[Study], SkipLog]:
    log = SkipLog()
    return list(log.studies(mimic_cxr.read(root, **options))), log


def labels(**given: int) -> dict[str, int | None]:
    return {o: given.get(o.replace(" ", "_")) for o in OBSERVATIONS}


def images(subject: str, study: str, *dicom_views: tuple[str, str]) -> list[Image]:
    folder = f"files/p{subject[:2]}/p{subject}/s{study}"
    return [Image(f"{folder}/{dicom}.jpg", view) for dicom, view in dicom_views]


def extra(subject, study, dicoms, date, time, procedure, **more) -> dict:
    return {"subject_id": subject, "study_id": study, "dicom_ids": list(dicoms),
            "study_date": date, "study_time": time, "procedure": procedure, **more}  # fmt: skip


PAL, PORT = "CHEST (PA AND LAT)", "CHEST (PORTABLE AP)"
CHEXPERT = {"labels_from": "mimic-cxr-2.0.0-chexpert"}
PA_LAT = "Chest PA and lateral"

# Public ids of subject 10000032 (MIT-LCP/mimic-cxr website/content/data/overview.md)
D1 = "02aa804e-bde0afdd-112c0b34-7bc16630-4e384014"
D2 = "174413ec-4ec4c1f7-34ea26b7-c5f994f8-79ef1962"
D3 = "2a2277a9-b0ded155-c0de8eb9-c124d10e-82c5caab"
D4 = "e084de3b-be89b11e-20fe3f9f-9c8d8dfe-4cfd202c"
D5 = "68b5c4b1-227d0485-9cc38c3f-7b84ab51-4b472714"


def invented(prefix: str, n: int) -> str:
    """The fixture's invented dicom_ids: five groups of 8 hex characters, numbered."""
    return f"{prefix}-{n:08d}-aa11bb22-cc33dd44-ee55ff{n:02d}"


V1, V2, V3 = invented("0b1c2d3e", 5), invented("4d5e6f70", 6), invented("c1d2e3f4", 7)
OBL = [invented(p, n) for p, n in zip(("3e4f5a6b", "5f6a7b8c", "8a9b0c1d", "a0b1c2d3",
                                       "e4f5a6b7"), range(8, 13))]  # fmt: skip
T1, T2, T3 = invented("6b7c8d9e", 13), invented("d9e0f1a2", 14), invented("f1a2b3c4", 15)
M1 = invented("11aa22bb", 16)
W1, W2, W3 = invented("33cc44dd", 20), invented("44dd55ee", 21), invented("55ee66ff", 22)


def expected() -> list[Study]:
    """What a careful reader of the fixture writes down, in the metadata file's order (study
    50688317 last: its last row, keyed to another subject, is the file's last line)."""

    def s(study, split, subject, imgs, indication, comparison, findings, impression, lab, ex):
        return Study(id=f"mimic-{study}", dataset="mimic-cxr", split=split, patient_id=subject,
                     images=imgs, indication=indication, comparison=comparison,
                     findings=findings, impression=impression, labels=lab, extra=ex)  # fmt: skip

    return [
        s("50414267", "train", "10000032",
          images("10000032", "50414267", (D1, "PA"), (D2, "LATERAL")),
          "___F with new cough and low-grade fever // ? pneumonia", "None.",
          "The lungs are clear without focal consolidation. No pleural effusion or "
          "pneumothorax is seen. The cardiac and mediastinal silhouettes are unremarkable.",
          "No acute cardiopulmonary process.",
          labels(No_Finding=1, Pleural_Effusion=0, Pneumothorax=0),
          extra("10000032", "50414267", [D1, D2], "21800506", "213014.531", PAL,
                technique=PA_LAT, **CHEXPERT)),
        # old-style report: HISTORY: is the indication, the view header opens the findings
        s("53189527", "train", "10000032",
          images("10000032", "53189527", (D3, "PA"), (D4, "LATERAL")),
          "___-year-old woman with dyspnea.", "Chest radiograph ___.",
          "The heart is moderately enlarged. There is mild interstitial edema. "
          "No large effusion.",
          "Cardiomegaly with mild interstitial edema.",
          labels(Cardiomegaly=1, Edema=-1, Pleural_Effusion=0),
          extra("10000032", "53189527", [D3, D4], "21800626", "165500.312", PAL, **CHEXPERT)),
        # no row in the label tables: unlabelled, not negative
        s("53911762", "train", "10000032", images("10000032", "53911762", (D5, "AP")),
          "___-year-old woman with worsening shortness of breath.",
          "Chest radiographs ___ and ___.",
          "Single portable AP view of the chest. The heart remains enlarged. "
          "Interstitial edema has resolved. No pleural effusion or pneumothorax.",
          "Resolved interstitial edema. Stable cardiomegaly.", {},
          extra("10000032", "53911762", [D5], "21800723", "80556.875", PORT)),
        # wet read above the final report; AP AXIAL, PA LLD, XTABLE LATERAL
        s("57375967", "validate", "10000764",
          images("10000764", "57375967", (V1, "AP"), (V2, "DECUBITUS"), (V3, "LATERAL")),
          "___M with fever and cough. Evaluate for pneumonia.", "___",
          "Decubitus and cross-table lateral views were added. There is a left lower lobe "
          "opacity. No layering effusion.",
          "Left lower lobe pneumonia.", {},
          extra("10000764", "57375967", [V1, V2, V3], "21320518", "131405.0", PORT,
                other="___ ___ ___ 9:41 PM Left lower lobe opacity, possibly pneumonia.")),
        # addendum first; CLINICAL HISTORY / REASON FOR EXAMINATION / CONCLUSION headers
        s("58321903", "validate", "10000764",
          images("10000764", "58321903", *zip(OBL, ["OBLIQUE"] * 3 + ["SWIMMERS", "DECUBITUS"])),
          "Assess nodule.", "",
          "Oblique views show a 1.2 cm nodule in the right upper lobe. No effusion.",
          "Right upper lobe nodule; CT is recommended.",
          labels(Lung_Lesion=1, Pleural_Effusion=0),
          extra("10000764", "58321903", OBL, "21320601", "94321.25", PAL,
                history="___-year-old man with a right upper lobe nodule.",
                other="The findings were discussed with Dr. ___ by telephone at 10:15 on ___.",
                **CHEXPERT)),
        s("54684191", "test", "10001176",
          images("10001176", "54684191", (T1, "PA"), (T2, "LL")),
          "___-year-old woman with chest pain.", "___",
          "Small left pleural effusion. Mild cardiomegaly.", "Small left pleural effusion.",
          labels(Cardiomegaly=1, Pleural_Effusion=1),
          extra("10001176", "54684191", [T1, T2], "21861103", "154322.0", PAL,
                technique=PA_LAT, **CHEXPERT)),
        # no FINDINGS / IMPRESSION: kept, the text in last_paragraph, a counted field skip
        s("59265704", "test", "10001176", images("10001176", "59265704", (T3, "AP")),
          "___-year-old woman after right PICC placement.", "___.", "", "",
          labels(Pneumothorax=0, Support_Devices=1),
          extra("10001176", "59265704", [T3], "21861230", "5931.1", PORT,
                last_paragraph="Right PICC ends in the low SVC. No pneumothorax.", **CHEXPERT)),
        # the MIT-LCP example report; ViewPosition empty (-> ViewCodeSequence), empty in both,
        # and 'L5 S1'; the label row repeated identically
        s("55102934", "train", "11000011",
          images("11000011", "55102934", (W1, "PA"), (W2, ""), (W3, "")),
          "___ year old woman with ?pleural effusion // ?pleural effusion", "___",
          "Cardiac size cannot be evaluated. Large left pleural effusion is new. Small right "
          "effusion is new. The upper lungs are clear. Right lower lobe opacities are better "
          "seen in prior CT. There is no pneumothorax. There are mild degenerative changes "
          "in the thoracic spine",
          "Large left pleural effusion", labels(Pleural_Effusion=1, Pneumothorax=0),
          extra("11000011", "55102934", [W1, W2, W3], "21540415", "142233.0", PAL,
                technique=PA_LAT, **CHEXPERT)),
        # one usable image row of four; label rows that disagree: unlabelled
        s("50688317", "validate", "11000011", images("11000011", "50688317", (M1, "PA")),
          "___-year-old man with cough.", "", "Lungs are clear. No effusion.",
          "No acute process.", {},
          extra("11000011", "50688317", [M1], "21540211", "101502.0", PAL)),
    ]  # fmt: skip


SKIPPED = {
    "study": {
        "no report file": 1,  # 56330471
        "empty report": 1,  # 52981146
        "study not in the split file": 1,  # 59017723
        "study in two splits": 1,  # 57741208
    },
    "image": {
        "image row of another subject": 1,
        "repeated image row": 1,
        "image row without dicom_id": 1,
    },
    "view": {"not a view": 1},  # ViewPosition 'L5 S1'
    "label": {"repeated label row": 1, "conflicting label rows": 1},
    "field": {"no findings or impression": 1},  # 59265704
}


def test_fixture_reads_to_the_studies_it_describes(tmp_path):
    got, log = read(copy(tmp_path))
    want = expected()
    assert [s.id for s in got] == [s.id for s in want]
    for g, w in zip(got, want):
        assert g == w, g.id
        g.validate(g.id)
    assert log.to_dict()["skipped"] == SKIPPED


def test_skips_name_the_file_line_and_value(tmp_path):
    root = copy(tmp_path)
    examples = read(root)[1].to_dict()["examples"]
    meta = root / "mimic-cxr-2.0.0-metadata.csv"
    assert examples["study"]["no report file"] == [
        f"{meta}: line 25: record skipped: no report file (files/p11/p11000011/s56330471.txt)"
    ]
    assert examples["study"]["study in two splits"] == [
        f"{meta}: line 26: record skipped: study in two splits "
        "(mimic-cxr-2.0.0-split.csv: train/validate)"
    ]
    assert examples["study"]["study not in the split file"][0].startswith(f"{meta}: line 28: ")
    assert examples["study"]["empty report"] == [
        f"{root}/files/p11/p11000011/s52981146.txt: record skipped: empty report (study 52981146)"
    ]
    assert examples["image"]["image row of another subject"] == [
        f"{meta}: line 29: image left out: image row of another subject "
        "('11000012'; study 50688317 of subject 11000011)"
    ]
    assert examples["image"]["repeated image row"][0].startswith(f"{meta}: line 19: ")
    assert examples["image"]["image row without dicom_id"][0].startswith(f"{meta}: line 20: ")
    assert examples["view"]["not a view"] == [
        f"{meta}: line 24: view left out: not a view (ViewPosition 'L5 S1')"
    ]
    chexpert = root / "mimic-cxr-2.0.0-chexpert.csv"
    assert examples["label"]["repeated label row"] == [
        f"{chexpert}: line 10: label left out: repeated label row "
        "(study 55102934, as line 9: same values)"
    ]
    assert examples["label"]["conflicting label rows"] == [
        f"{chexpert}: line 8: label left out: conflicting label rows "
        "(study 50688317: line 7 differs; study left unlabelled)"
    ]


def test_as_physionet_ships_it_gzip_tables_and_a_separate_reports_root(tmp_path):
    """MIMIC-CXR-JPG's tables are `.csv.gz` (the 2.1.0 test-set file stays `.csv`); the
    reports come with MIMIC-CXR, a separate download."""
    jpg, reports = copy(tmp_path), tmp_path / "mimic-cxr"
    for name in TABLES:
        with gzip.open(jpg / f"{name}.gz", "wb") as f:
            f.write((jpg / name).read_bytes())
        (jpg / name).unlink()
    (reports / "files").mkdir(parents=True)
    for txt in list((jpg / "files").rglob("*.txt")):
        dest = reports / txt.relative_to(jpg)
        dest.parent.mkdir(parents=True, exist_ok=True)
        txt.rename(dest)
    with pytest.raises(ReaderError, match=r"s50414267\.txt: report of study 50414267 not found"):
        list(mimic_cxr.read(jpg, missing_report="error"))
    got, log = read(jpg, reports_root=reports)
    assert got == expected()
    assert log.to_dict()["skipped"] == SKIPPED
    assert sorted(p.name for p in jpg.iterdir()) == sorted([*(f"{n}.gz" for n in TABLES),
                                                           TEST_SET, "files"])  # fmt: skip


def test_test_set_labels_replace_the_labeller_for_the_test_studies(tmp_path):
    got = {s.id: s for s in read(copy(tmp_path), test_set_labels=True)[0]}
    # "Airspace Opacity" of the test-set file is the labellers' "Lung Opacity"
    assert got["mimic-54684191"].labels == labels(Lung_Opacity=1, Cardiomegaly=0,
                                                  Pleural_Effusion=1)  # fmt: skip
    assert got["mimic-59265704"].labels == labels(No_Finding=0, Support_Devices=1)
    for sid in ("mimic-54684191", "mimic-59265704"):
        assert got[sid].extra["labels_from"] == "mimic-cxr-2.1.0-test-set-labeled"
    assert got["mimic-50414267"].extra["labels_from"] == "mimic-cxr-2.0.0-chexpert"
    assert got["mimic-50414267"].labels == expected()[0].labels


def test_negbio_and_no_labels(tmp_path):
    root = copy(tmp_path)
    got, log = read(root, labels="negbio")
    by_id = {s.id: s for s in got}
    assert by_id["mimic-53189527"].labels == labels(Cardiomegaly=1, Edema=1)
    assert by_id["mimic-54684191"].labels == labels(Cardiomegaly=-1, Pleural_Effusion=1)
    # one negbio row for 50688317: labelled there; 58321903's row has no missing values
    assert by_id["mimic-50688317"].labels == labels(Atelectasis=1)
    assert by_id["mimic-53911762"].labels == {}
    assert by_id["mimic-50414267"].extra["labels_from"] == "mimic-cxr-2.0.0-negbio"
    assert "label" not in log.to_dict()["skipped"]  # negbio has no repeated rows
    got, log = read(root, labels=None)
    assert all(s.labels == {} and "labels_from" not in s.extra for s in got)
    assert "label" not in log.to_dict()["skipped"]
    with pytest.raises(UsageError, match="labels='chexbert'"):
        list(mimic_cxr.read(root, labels="chexbert"))


def test_views_selection(tmp_path):
    root = copy(tmp_path)
    got, log = read(root, views=["PA"])
    assert [s.id for s in got] == ["mimic-50414267", "mimic-53189527", "mimic-54684191",
                                   "mimic-55102934", "mimic-50688317"]  # fmt: skip
    assert all(i.view == "PA" for s in got for i in s.images)
    assert got[0].images == images("10000032", "50414267", (D1, "PA"))
    assert got[0].extra["dicom_ids"] == [D1]
    # studies without a PA image are not read, and not skipped: of the study skips only
    # 57741208's is left (52981146, 56330471, 59017723 have AP images only)
    assert log.to_dict()["skipped"]["study"] == {"study in two splits": 1}
    assert log.to_dict()["skipped"]["view"] == {"not a view": 1}  # the file's, still counted
    # any spelling, compared after normalising; "unknown" takes the images without a view
    got, _ = read(root, views=["antero-posterior", "unknown"])
    assert {s.id: [i.view for i in s.images] for s in got} == {
        "mimic-53911762": ["AP"], "mimic-57375967": ["AP"], "mimic-59265704": ["AP"],
        "mimic-55102934": ["", ""]}  # fmt: skip
    got, _ = read(root, views=["PA LLD", "oblique"])
    assert {s.id: [i.view for i in s.images] for s in got} == {
        "mimic-57375967": ["DECUBITUS"],
        "mimic-58321903": ["OBLIQUE"] * 3 + ["DECUBITUS"],
    }
    with pytest.raises(UsageError, match="'Erect' is not a view"):
        list(mimic_cxr.read(root, views=["Erect"]))


def test_splits_selection(tmp_path):
    root = copy(tmp_path)
    got, log = read(root, splits=["val"])
    assert [(s.id, s.split) for s in got] == [("mimic-57375967", "validate"),
                                              ("mimic-58321903", "validate"),
                                              ("mimic-50688317", "validate")]  # fmt: skip
    # studies of other splits are not read; those without a (single) split are still counted
    assert log.to_dict()["skipped"]["study"] == {
        "study not in the split file": 1, "study in two splits": 1}  # fmt: skip
    got, _ = read(root, splits=["train", "test"])
    assert {s.split for s in got} == {"train", "test"} and len(got) == 6


def test_non_adjacent_metadata_rows_read_the_same(tmp_path):
    """A re-saved metadata file whose rows of one study lie apart (here: reversed, and one
    study's rows interleaved with another's)."""
    root = copy(tmp_path)
    meta = root / "mimic-cxr-2.0.0-metadata.csv"
    header, *rows = meta.read_text().splitlines()
    rows.reverse()
    rows.insert(1, rows.pop(rows.index(next(r for r in rows if r.startswith(D1)))))
    meta.write_text("\n".join([header, *rows]) + "\n")
    got, log = read(root)
    want = {s.id: s for s in expected()}
    assert sorted(s.id for s in got) == sorted(want)
    for s in got:
        w = want[s.id]
        # images follow the file's row order
        assert sorted(s.images, key=lambda i: i.path) == sorted(w.images, key=lambda i: i.path)
        assert (s.split, s.patient_id, s.findings, s.impression, s.labels) == (
            w.split, w.patient_id, w.findings, w.impression, w.labels)  # fmt: skip
    # 50414267's PA row was moved to the top, its lateral lies near the end: one study still
    s = next(s for s in got if s.id == "mimic-50414267")
    assert [i.view for i in s.images] == ["PA", "LATERAL"] and s.extra["dicom_ids"] == [D1, D2]
    # reversed, the row keyed to subject 11000012 is study 50688317's first: the study is
    # still 11000011's, who three of its four rows name
    assert log.to_dict()["skipped"] == SKIPPED


def test_missing_report_error_names_the_file(tmp_path):
    root = copy(tmp_path)
    with pytest.raises(ReaderError, match=r"p11/p11000011/s56330471\.txt: report of study "
                       r"56330471 not found .*missing_report=skip"):  # fmt: skip
        list(mimic_cxr.read(root, missing_report="error"))
    with pytest.raises(UsageError, match="missing_report='drop'"):
        list(mimic_cxr.read(root, missing_report="drop"))


def test_prepare_writes_jsonl_and_the_skip_counts(tmp_path):
    out = tmp_path / "out" / "mimic.jsonl"
    out.parent.mkdir()
    n = prepare("mimic-cxr", copy(tmp_path), out, check_images=False, test_set_labels=True,
                splits=["train", "test"])  # fmt: skip
    got = list(read_studies(out))
    assert n == len(got) == 6
    want = {s.id: s for s in expected()}
    assert [s.id for s in got] == [i for i in want if want[i].split in ("train", "test")]
    assert got[0] == want["mimic-50414267"]
    assert got[3].labels == labels(Lung_Opacity=1, Cardiomegaly=0, Pleural_Effusion=1)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["images"][0] == {"path": f"files/p10/p10000032/s50414267/{D1}.jpg",
                                    "view": "PA"}  # fmt: skip
    report = json.loads(skips_path(out).read_text())
    assert report["skipped"]["study"] == SKIPPED["study"]
    assert report["skipped"]["label"] == SKIPPED["label"]
    assert report["options"]["test_set_labels"] in (True, "True", "true")
