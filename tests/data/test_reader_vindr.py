"""VinDr-CXR: per-radiologist pixel boxes fused (WBF), normalised, with majority-vote labels.

The static fixture `fixtures/vindr-cxr/1.0.0/` is PhysioNet's VinDr-CXR 1.0.0 layout with
invented rows (sources and what each image exercises: `fixtures/vindr-cxr/README.md`):
`annotations/annotations_{train,test}.csv` and `annotations/image_labels_{train,test}.csv`. The
DICOMs `{train,test}/<image_id>.dicom` are written here at runtime (headers only: the reader
reads Rows/Columns).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

pytest.importorskip("pydicom")
pytest.importorskip("ensemble_boxes")

from radixpert.data.readers import SkipLog, vindr_cxr
from radixpert.data.study import Box, Image, Study
from radixpert.data.templates import report_from_labels
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

FIXTURE = Path(__file__).parent / "fixtures" / "vindr-cxr" / "1.0.0"


def write_dicom(path, rows, cols, pixels=True):
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    if pixels:  # without: a header-only file, enough for the reader at a real image size
        ds.PixelData = np.zeros((rows, cols), dtype=np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


LABELS = "image_id,rad_id,Aortic enlargement,Cardiomegaly,Pleural effusion,No finding\n"


@pytest.fixture
def root(tmp_path):
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "annotations_train.csv").write_text(
        "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\n"
        # three radiologists box the heart almost identically; one also boxes an effusion
        "img1,R1,Cardiomegaly,1000,1200,2000,1800\n"
        "img1,R2,Cardiomegaly,1020,1200,2020,1800\n"
        "img1,R3,Cardiomegaly,980,1190,1990,1810\n"
        "img1,R3,Pleural effusion,100,1500,600,2000\n"
        "img2,R1,No finding,,,,\nimg2,R2,No finding,,,,\nimg2,R3,No finding,,,,\n"
    )
    (ann / "image_labels_train.csv").write_text(
        LABELS + "img1,R1,0,1,0,0\nimg1,R2,0,1,0,0\nimg1,R3,1,1,1,0\n"
        "img2,R1,0,0,0,1\nimg2,R2,0,0,0,1\nimg2,R3,0,0,0,1\n"
    )
    write_dicom(tmp_path / "train" / "img1.dicom", rows=2000, cols=2500)
    write_dicom(tmp_path / "train" / "img2.dicom", rows=100, cols=100)
    return tmp_path


def test_fused_boxes_labels_and_report(root):
    log = SkipLog()
    s1, s2 = log.studies(vindr_cxr.read(root, splits=("train",)))
    assert s1.id == "vindr-img1" and s1.report_source == "synthesised-from-labels"
    heart = [b for b in s1.boxes if b.label == "Cardiomegaly"]
    assert len(heart) == 1  # three radiologists' boxes fused into one
    assert heart[0].x1 == pytest.approx(1000 / 2500, abs=1e-3)
    assert heart[0].y2 == pytest.approx(1803.3 / 2000, abs=1e-3)
    support = dict(zip([b.label for b in s1.boxes], s1.extra["box_support"], strict=True))
    assert support == {"Cardiomegaly": 3}  # VinDr's class names
    # majority vote: effusion 1 of 3 -> negative; cardiomegaly 3 of 3 -> positive. The one
    # radiologist's effusion box is left out with the label, and counted.
    assert s1.labels["Cardiomegaly"] == 1 and s1.labels["Pleural Effusion"] == 0
    assert log.counts == {("box", "box of a finding the majority did not label"): 1}
    assert (
        "Pleural effusion: 1 box(es) by 1 of 3 radiologists"
        in log.examples[("box", "box of a finding the majority did not label")][0]
    )
    assert s1.labels["Support Devices"] is None  # VinDr does not cover it
    assert s1.labels["No Finding"] is None
    assert s1.findings or s1.impression
    assert s2.labels["No Finding"] == 1 and s2.boxes == []
    # only boxes drawn by at least two radiologists
    (strict,) = list(SkipLog().studies(vindr_cxr.read(root, splits=("train",), min_support=3)))[:1]
    assert [b.label for b in strict.boxes] == ["Cardiomegaly"]


def test_missing_image_and_bad_label(root):
    (root / "train" / "img2.dicom").unlink()
    log = SkipLog()
    assert [s.id for s in log.studies(vindr_cxr.read(root, splits=("train",)))] == ["vindr-img1"]
    assert log.counts[("study", "image file missing (its size is needed)")] == 1
    (root / "annotations" / "image_labels_train.csv").write_text(LABELS + "img1,R1,0,2,0,0\n")
    with pytest.raises(ReaderError, match=r"line 2: column 'Cardiomegaly' = '2'"):
        list(vindr_cxr.read(root, splits=("train",)))


def test_the_test_split_has_no_rad_id_and_is_one_consensus_reader(tmp_path):
    # annotations_test.csv / image_labels_test.csv: the consensus of five radiologists, without
    # a rad_id column, and "Other disease" where train says "Other diseases".
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "annotations_test.csv").write_text(
        "image_id,class_name,x_min,y_min,x_max,y_max\n"
        "t1,Cardiomegaly,1000,1200,2000,1800\nt2,No finding,,,,\n"
    )
    (ann / "image_labels_test.csv").write_text(
        "image_id,Cardiomegaly,Other disease,No finding\nt1,1,1,0\nt2,0,0,1\n"
    )
    write_dicom(tmp_path / "test" / "t1.dicom", rows=2000, cols=2500)
    write_dicom(tmp_path / "test" / "t2.dicom", rows=100, cols=100)
    t1, t2 = SkipLog(strict=True).studies(vindr_cxr.read(tmp_path, splits=("test",)))
    assert (t1.split, t1.extra["radiologists"], t1.labels["Cardiomegaly"]) == ("test", 1, 1)
    assert [(b.label, round(b.x1, 3)) for b in t1.boxes] == [("Cardiomegaly", 0.4)]
    assert t1.extra["vindr_labels"] == ["Cardiomegaly", "Other diseases"]
    assert t2.labels["No Finding"] == 1 and t2.boxes == []


# ---- the real-layout fixture ------------------------------------------------------------------

# image ids as in the release: 32 hex digits (an MD5 of the SOP Instance UID); invented here
A = "8a422790a4be866805de59c131dd16ee"
B = "0016a3516f354884f9881a57af4b5932"
C = "390ddf76139850dc5d54d6388d0def30"
D = "6e5b16a234ad4c94e08e6e0899d1bdbb"
E = "95d8be8bc60d972fc30e1d96c53a4433"
TA = "1574ee4fb97ca298abf432351dcf77de"
TB = "6546e214d4cd8d02b9dd99cce3f55247"
TC = "4cf38d494f9033b2c8454a22dfd1082d"
# (rows, columns) of the DICOMs written; D has none (listed, file missing); E is not labelled.
SIZES = {
    f"train/{A}": (3072, 2540),
    f"train/{B}": (2836, 2336),
    f"train/{C}": (2500, 2048),
    f"test/{TA}": (2880, 2304),
    f"test/{TB}": (3000, 2500),
    f"test/{TC}": (3000, 2500),
}


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "vindr-cxr" / "1.0.0"
    shutil.copytree(FIXTURE, root)
    for name, (rows, cols) in SIZES.items():
        write_dicom(root / f"{name}.dicom", rows, cols, pixels=False)
    return root


def labels(*positive):
    """The 14 observations as the reader maps VinDr: those VinDr covers 0 unless positive,
    Enlarged Cardiomediastinum and Support Devices None, No Finding 1 or None (never 0)."""
    out = {o: None for o in OBSERVATIONS}
    out.update(dict.fromkeys(vindr_cxr.COVERED, 0))
    out["No Finding"] = None
    out.update(dict.fromkeys(positive, 1))
    return out


def box(label, x1, y1, x2, y2, size):
    rows, cols = size
    return Box(label, x1 / cols, y1 / rows, x2 / cols, y2 / rows)


def study(image_id, split, lab, boxes, support, vindr, radiologists):
    findings, impression = report_from_labels(lab, random.Random(f"0:{image_id}"))
    return Study(
        id=f"vindr-{image_id}",
        dataset="vindr-cxr",
        split=split,
        patient_id="",  # none published
        images=[Image(f"{split}/{image_id}.dicom", "PA")],
        findings=findings,
        impression=impression,
        labels=lab,
        boxes=boxes,
        report_source="synthesised-from-labels",
        extra={
            "image_id": image_id,
            "box_support": support,
            "vindr_labels": vindr,
            "radiologists": radiologists,
        },
    )


def expected():
    a, c = SIZES[f"train/{A}"], SIZES[f"train/{C}"]
    ta, tc = SIZES[f"test/{TA}"], SIZES[f"test/{TC}"]
    return [
        # three radiologists box the aorta and the heart (means of their boxes); R10's
        # effusion box is left out with the label (1 of 3)
        study(A, "train", labels("Cardiomegaly"), [
            box("Aortic enlargement", (1290 + 1301 + 1285) / 3, (760 + 771 + 749) / 3,
                (1604 + 1598 + 1620) / 3, (1040 + 1052 + 1033) / 3, a),
            box("Cardiomegaly", (864 + 880 + 850) / 3, (1830 + 1812 + 1845) / 3,
                (1968 + 1990 + 1975) / 3, (2410 + 2398 + 2421) / 3, a),
        ], [3, 3], ["Aortic enlargement", "Cardiomegaly"], 3),
        study(B, "train", labels("No Finding"), [], [], ["No finding"], 3),
        # R1 and R4 box one nodule (fused, support 2), R1 alone a second (kept: the majority
        # labels Nodule/Mass); R6 said No finding. Tuberculosis (2 of 3) has no CheXpert name.
        study(C, "train", labels("Lung Lesion"), [
            box("Nodule/Mass", 1418, 899, 1512, 993, c),
            box("Nodule/Mass", 560, 1610, 628, 1682, c),
        ], [2, 1], ["Nodule/Mass", "Tuberculosis"], 3),
        # test: one consensus reader; its two effusions (left, right) stay two boxes
        study(TA, "test", labels("Lung Opacity", "Pleural Effusion", "Pneumonia"), [
            box("Lung Opacity", 1590, 1410, 2020, 1900, ta),
            box("Pleural effusion", 150, 1980, 620, 2480, ta),
            box("Pleural effusion", 1700, 2010, 2180, 2500, ta),
        ], [1, 1, 1], ["Lung Opacity", "Other diseases", "Pleural effusion", "Pneumonia"], 1),
        study(TB, "test", labels("No Finding"), [], [], ["No finding"], 1),
        # a finding without a CheXpert observation: everything covered is 0, No Finding blank
        study(TC, "test", labels(), [box("Aortic enlargement", 1350, 780, 1660, 1080, tc)],
              [1], ["Aortic enlargement"], 1),
    ]  # fmt: skip


def approx_boxes(study):
    d = study.to_dict()
    d["boxes"] = [{**b, **{k: pytest.approx(b[k], abs=1e-6) for k in ("x1", "y1", "x2", "y2")}}
                  for b in d["boxes"]]  # fmt: skip
    return d


def test_fixture_reads_to_the_records_a_person_would_write(release):
    log = SkipLog()
    got = list(log.studies(vindr_cxr.read(release)))
    want = sorted(expected(), key=lambda s: (s.split != "train", s.id))  # splits, then image_id
    assert [s.id for s in got] == [s.id for s in want]
    for g, w in zip(got, want, strict=True):
        assert g.to_dict() == approx_boxes(w), g.id
    assert all(s.findings or s.impression for s in got)  # synthesised text is there, and marked
    ann, lab = release / "annotations" / "annotations_train.csv", "image_labels_train.csv"
    assert log.to_dict() == {
        "skipped": {
            "box": {"box of a finding the majority did not label": 1},
            "study": {
                "boxes of an image without labels": 1,
                "image file missing (its size is needed)": 1,
            },
        },
        "examples": {
            "box": {"box of a finding the majority did not label": [
                f"{ann} image {A}: box left out: box of a finding the majority did not label "
                "(Pleural effusion: 1 box(es) by 1 of 3 radiologists)"]},
            "study": {
                "boxes of an image without labels": [
                    f"{ann} image {E}: record skipped: boxes of an image without labels"],
                "image file missing (its size is needed)": [
                    f"{release / 'annotations' / lab} image {D}: record skipped: image file "
                    f"missing (its size is needed) (train/{D}.dicom)"],
            },
        },
    }  # fmt: skip


def test_fixture_options(release):
    (test_only,) = [list(SkipLog(strict=True).studies(vindr_cxr.read(release, splits=("test",))))]
    assert [s.id for s in test_only] == [f"vindr-{i}" for i in sorted((TA, TB, TC))]
    strict = {s.id: s for s in SkipLog().studies(vindr_cxr.read(release, min_support=2))}
    assert [b.label for b in strict[f"vindr-{C}"].boxes] == ["Nodule/Mass"]  # R1's lone one out
    assert strict[f"vindr-{C}"].extra["box_support"] == [2]
    assert strict[f"vindr-{TA}"].boxes == []  # the consensus is one reader: support 1


def test_prepare_writes_the_fixture_with_its_skip_counts(release, tmp_path):
    import json

    from radixpert.data.prepare import prepare, skips_path

    out = tmp_path / "vindr.jsonl"
    assert prepare("vindr-cxr", release, out) == 6  # every image path exists under --root
    report = json.loads(skips_path(out).read_text())
    assert report["skipped"] == {
        "box": {"box of a finding the majority did not label": 1},
        "study": {"boxes of an image without labels": 1,
                  "image file missing (its size is needed)": 1},
    }  # fmt: skip


def test_rad_ID_spelling_is_the_radiologist_column(tmp_path):
    # RadVLM renames `rad_ID` to `rad_id` when reading annotations_<split>.csv: read both.
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "annotations_train.csv").write_text(
        "image_id,rad_ID,class_name,x_min,y_min,x_max,y_max\n"
        "i1,R1,Cardiomegaly,100.0,100.0,200.0,200.0\ni1,R2,Cardiomegaly,102.0,100.0,202.0,200.0\n"
        "i1,R3,No finding,,,,\n"
    )
    (ann / "image_labels_train.csv").write_text(
        "image_id,rad_ID,Cardiomegaly,No finding\ni1,R1,1,0\ni1,R2,1,0\ni1,R3,0,1\n"
    )
    write_dicom(tmp_path / "train" / "i1.dicom", 400, 400, pixels=False)
    (s,) = SkipLog(strict=True).studies(vindr_cxr.read(tmp_path, splits=("train",)))
    assert (s.extra["radiologists"], s.extra["box_support"]) == (3, [2])
    assert s.labels["Cardiomegaly"] == 1 and s.labels["No Finding"] is None
