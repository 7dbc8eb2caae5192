"""PadChest: Spanish reports, Python-list label strings, studies grouped, optional translation.

The fixture uses the label CSV's 36 columns (an unnamed index first), as listed in
shared/reference/datasets.md §5.
"""

from __future__ import annotations

import csv
import gzip

import pytest

from radixpert.data.readers import padchest
from radixpert.errors import ReaderError

COLUMNS = [
    "",  # the unnamed index column
    "ImageID",
    "ImageDir",
    "StudyDate_DICOM",
    "StudyID",
    "PatientID",
    "PatientBirth",
    "PatientSex_DICOM",
    "ViewPosition_DICOM",
    "Projection",
    "MethodProjection",
    "Pediatric",
    "Modality_DICOM",
    "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM",
    "PixelRepresentation_DICOM",
    "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM",
    "BitsStored_DICOM",
    "WindowCenter_DICOM",
    "WindowWidth_DICOM",
    "Rows_DICOM",
    "Columns_DICOM",
    "XRayTubeCurrent_DICOM",
    "Exposure_DICOM",
    "ExposureInuAs_DICOM",
    "ExposureTime",
    "RelativeXRayExposure_DICOM",
    "ReportID",
    "Report",
    "MethodLabel",
    "Labels",
    "Localizations",
    "LabelsLocalizationsBySentence",
    "labelCUIS",
    "LocalizationsCUIS",
]


def write(root, rows, gz=True):
    name = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv" + (".gz" if gz else "")
    opener = gzip.open if gz else open
    with opener(root / name, "wt", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        for i, r in enumerate(rows):
            w.writerow({**dict.fromkeys(COLUMNS, ""), "": str(i), **r})


def img(image_id, study, projection, labels, report="cardiomegalia . derram pleural ."):
    return {
        "ImageID": image_id,
        "ImageDir": "0",
        "StudyID": study,
        "PatientID": "pat1",
        "Projection": projection,
        "Report": report,
        "Labels": labels,
    }


def test_studies_grouped_labels_mapped(tmp_path):
    write(tmp_path, [
        img("a.png", "st1", "PA", "['cardiomegaly', 'pleural effusion', 'chronic changes']"),
        img("b.png", "st1", "L", "['cardiomegaly']"),
        img("c.png", "st2", "AP_horizontal", "['normal']", report="sin hallazg ."),
        img("d.png", "st3", "PA", "[]", report=""),
    ])  # fmt: skip
    s1, s2, s3 = padchest.read(tmp_path)
    assert [(i.path, i.view) for i in s1.images] == [("0/a.png", "PA"), ("0/b.png", "L")]
    assert s1.labels["Cardiomegaly"] == 1 and s1.labels["Pleural Effusion"] == 1
    assert s1.labels["Edema"] is None and s1.labels["No Finding"] is None
    assert s1.language == "es" and s1.findings.startswith("cardiomegalia")
    assert "chronic changes" in s1.extra["padchest_labels"]
    assert s2.labels["No Finding"] == 1 and s2.images[0].view == "AP_horizontal"
    assert s3.labels == {}


def upper(text: str) -> str:
    return text.upper()


def test_pluggable_translation_is_local_and_marked(tmp_path):
    write(tmp_path, [img("a.png", "st1", "PA", "['normal']")], gz=False)
    (s,) = padchest.read(tmp_path, translate=f"{__name__}:upper")
    assert s.findings == "CARDIOMEGALIA . DERRAM PLEURAL ."
    assert s.language == "en" and s.report_source == "translated"
    assert s.extra["report_es"] == "cardiomegalia . derram pleural ."


def test_bad_label_list(tmp_path):
    write(tmp_path, [img("a.png", "st1", "PA", "['unclosed")])
    with pytest.raises(ReaderError, match=r"line 2: column 'Labels' = .* is not a list"):
        list(padchest.read(tmp_path))
