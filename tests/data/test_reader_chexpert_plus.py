"""CheXpert Plus: per-image rows grouped into studies, sections and CheXbert labels.

Fixture with the report CSV's column names (shared/reference/datasets.md §2,
`df_chexpert_plus_240401.csv`) and the `chexbert_labels/findings_fixed.json` JSON Lines file.
"""

from __future__ import annotations

import csv
import json

import pytest

from radixpert.data.readers import chexpert_plus
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

COLUMNS = [
    "path_to_image",
    "path_to_dcm",
    "frontal_lateral",
    "ap_pa",
    "deid_patient_id",
    "patient_report_date_order",
    "report",
    "section_narrative",
    "section_clinical_history",
    "section_history",
    "section_comparison",
    "section_technique",
    "section_procedure_comments",
    "section_findings",
    "section_impression",
    "section_end_of_impression",
    "section_summary",
    "section_accession_number",
    "age",
    "sex",
    "race",
    "ethnicity",
    "interpreter_needed",
    "insurance_type",
    "recent_bmi",
    "deceased",
    "split",
]


def row(path, view, ap_pa, findings, impression, split="train"):
    r = dict.fromkeys(COLUMNS, "")
    r.update(
        path_to_image=path,
        frontal_lateral=view,
        ap_pa=ap_pa,
        deid_patient_id="patient1",
        report=f"FINDINGS: {findings} IMPRESSION: {impression}",
        section_findings=findings,
        section_impression=impression,
        section_clinical_history="Cough.",
        split=split,
    )
    return r


def write(root, rows):
    with (root / "df_chexpert_plus_240401.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)


def test_rows_grouped_into_studies_with_labels(tmp_path):
    write(tmp_path, [
        row("train/patient1/study1/view1_frontal.jpg", "Frontal", "PA", "Clear.", "Normal."),
        row("train/patient1/study1/view2_lateral.jpg", "Lateral", "", "Clear.", "Normal."),
        row("valid/patient1/study2/view1_frontal.jpg", "Frontal", "AP", "Effusion.", "Effusion.",
            "valid"),
    ])  # fmt: skip
    (tmp_path / "chexbert_labels").mkdir()
    lab = {
        "path_to_image": "train/patient1/study1/view1_frontal.jpg",
        **dict.fromkeys(OBSERVATIONS),
        "No Finding": 1.0,
        "Pneumothorax": 0.0,
    }
    (tmp_path / "chexbert_labels" / "findings_fixed.json").write_text(json.dumps(lab) + "\n")
    s1, s2 = chexpert_plus.read(tmp_path)
    assert s1.id == "chexpert-plus-train-patient1-study1"
    assert [(i.path, i.view) for i in s1.images] == [
        ("PNG/train/patient1/study1/view1_frontal.png", "PA"),
        ("PNG/train/patient1/study1/view2_lateral.png", "LATERAL")]  # fmt: skip
    # The patient folder, as CheXpert's own CSVs name the patient (leakage across the two).
    assert s1.patient_id == "patient1" and "deid_patient_id" in s1.extra
    assert (s1.findings, s1.impression, s1.indication) == ("Clear.", "Normal.", "Cough.")
    assert s1.labels["No Finding"] == 1 and s1.labels["Pneumothorax"] == 0
    assert s1.labels["Edema"] is None
    assert s2.split == "validate" and s2.labels == {}


def test_non_adjacent_rows_and_bad_labels(tmp_path):
    write(tmp_path, [
        row("train/patient1/study1/view1_frontal.jpg", "Frontal", "PA", "A.", "B."),
        row("train/patient1/study2/view1_frontal.jpg", "Frontal", "PA", "A.", "B."),
        row("train/patient1/study1/view2_lateral.jpg", "Lateral", "", "A.", "B."),
    ])  # fmt: skip
    with pytest.raises(ReaderError, match=r"line 4: rows of study 'train/patient1/study1'"):
        list(chexpert_plus.read(tmp_path))
    (tmp_path / "chexbert_labels").mkdir()
    (tmp_path / "chexbert_labels" / "findings_fixed.json").write_text('{"Edema": 2.0}\n')
    with pytest.raises(ReaderError, match=r"findings_fixed\.json: line 1: 'Edema' = 2\.0"):
        list(chexpert_plus.read(tmp_path))


def test_nan_cells_are_empty_text(tmp_path):
    r = row("train/patient2/study1/view1_frontal.jpg", "Frontal", "nan", "nan", "Normal.")
    r["section_clinical_history"] = "nan"
    write(tmp_path, [r])
    (s,) = chexpert_plus.read(tmp_path)
    assert (s.findings, s.impression, s.indication) == ("", "Normal.", "")
    assert s.images[0].view == "FRONTAL"
