"""VinDr-CXR: per-radiologist pixel boxes fused (WBF), normalised, with majority-vote labels.

Fixture layout as PhysioNet's VinDr-CXR 1.0.0 (shared/reference/datasets.md §7):
`annotations/annotations_train.csv` (image_id, rad_id, class_name, x_min, y_min, x_max, y_max),
`annotations/image_labels_train.csv` (image_id, rad_id + label columns, 0/1) and
`train/<image_id>.dicom`.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pydicom")
pytest.importorskip("ensemble_boxes")

from radixpert.data.readers import SkipLog, vindr_cxr
from radixpert.errors import ReaderError


def write_dicom(path, rows, cols):
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
