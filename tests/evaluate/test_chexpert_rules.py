"""The rule-based CheXpert-style labeler on report sentences with known labels, and its CSV."""

from __future__ import annotations

import csv
import time

import pytest

from radixpert.evaluate.clinical.chexpert_rules import (
    LABELER_NAME,
    OBSERVATIONS,
    label_report,
    label_reports,
    write_label_csv,
)

EC, CM, LO, LL = "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion"
ED, CO, PN, AT = "Edema", "Consolidation", "Pneumonia", "Atelectasis"
PX, PE, PO, FR, SD = (
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NF = "No Finding"

# (report, {observation: expected label}); observations not named are not checked unless
# the case is in EXACT below.
CASES: list[tuple[str, dict[str, int | None]]] = [
    # --- negation and its scope ---
    ("No pleural effusion.", {PE: 0, NF: 1}),
    ("No pneumothorax, effusion, or consolidation.", {PX: 0, PE: 0, CO: 0, NF: 1}),
    ("There is no focal consolidation, pleural effusion or pneumothorax.", {CO: 0, PE: 0, PX: 0}),
    ("Lungs are clear without infiltrate or effusion.", {LO: 0, PE: 0}),
    ("The lungs are free of focal airspace disease.", {LO: 0}),
    ("Negative for pneumothorax or pleural effusion.", {PX: 0, PE: 0}),
    ("No evidence of pneumonia.", {PN: 0, NF: 1}),
    ("No radiographic evidence of acute pneumonia or edema.", {PN: 0, ED: 0}),
    ("No focal airspace consolidation to suggest pneumonia.", {CO: 0, PN: 0}),
    ("There are no XXXX of a pleural effusion.", {PE: 0}),
    ("Pneumothorax is not seen.", {PX: 0}),
    ("No definite pleural effusion identified.", {PE: 0}),
    ("Previously seen left pleural effusion has resolved.", {PE: 0}),
    ("Resolved right lower lobe pneumonia.", {PN: 0}),
    ("Interval removal of the endotracheal tube.", {SD: 0}),
    ("The chest tube has been removed. No pneumothorax.", {SD: 0, PX: 0, NF: 1}),
    ("Heart size and pulmonary vascular engorgement appear within limits of normal.", {ED: 0}),
    # --- several clauses in one sentence ---
    ("No effusion but there is consolidation in the right lower lobe.", {PE: 0, CO: 1}),
    ("There is a small left pleural effusion but no pneumothorax.", {PE: 1, PX: 0}),
    ("No pneumothorax and the heart is enlarged.", {PX: 0, CM: 1}),
    ("No pleural effusion and mild cardiomegaly.", {PE: 0, CM: 1}),
    ("Effusion resolved, pneumothorax persists.", {PE: 0, PX: 1}),
    ("Lungs are clear except for left basilar atelectasis.", {LO: 0, AT: 1, NF: None}),
    ("No effusion, possible pneumonia.", {PE: 0, PN: -1}),
    # --- "no change" means still there; stable findings are positive ---
    ("No change in moderate left pneumothorax.", {PX: 1}),
    ("No interval change in the small right pleural effusion.", {PE: 1}),
    ("Stable cardiomegaly.", {CM: 1, NF: None}),
    ("Unchanged bibasilar atelectasis.", {AT: 1}),
    # --- uncertainty ---
    ("Pneumonia cannot be excluded.", {PN: -1, NF: None}),
    ("Cannot exclude a small right pleural effusion.", {PE: -1}),
    ("Infection is not excluded.", {PN: -1}),
    ("Left basilar opacity may represent atelectasis or pneumonia.", {LO: 1, AT: -1, PN: -1}),
    ("Possible small left pleural effusion.", {PE: -1}),
    ("Findings are suggestive of mild pulmonary edema.", {ED: -1}),
    ("Right lower lobe consolidation concerning for pneumonia.", {CO: 1, PN: -1}),
    ("Atelectasis versus consolidation at the left base.", {AT: -1, CO: -1}),
    ("Left base opacity, likely atelectasis.", {LO: 1, AT: -1}),
    ("Pneumonia is likely.", {PN: -1}),
    ("Opacity is likely atelectasis.", {LO: 1, AT: -1}),
    ("Questionable small right apical pneumothorax.", {PX: -1}),
    ("No new consolidation.", {CO: -1}),
    ("Nodule or mass in the right upper lobe.", {LL: 1}),  # same observation: no doubt
    ("Borderline cardiomegaly.", {CM: -1}),
    # --- laterality and location words do not disturb ---
    ("Right-sided pleural effusions.", {PE: 1}),
    ("Bilateral pneumothoraces.", {PX: 1}),
    ("Left basilar subsegmental atelectasis.", {AT: 1}),
    ("Small bilateral pleural effusions, left greater than right.", {PE: 1}),
    ("Right upper lobe and lingular opacities.", {LO: 1}),
    # --- heart and mediastinum ---
    ("Heart size is normal.", {CM: 0, NF: 1}),
    ("The cardiac silhouette is enlarged.", {CM: 1}),
    ("The heart is mildly enlarged.", {CM: 1}),
    ("The heart is not enlarged.", {CM: 0}),
    ("Heart size is at the upper limits of normal.", {CM: 0}),
    ("Heart size is stable.", {CM: -1}),  # CheXpert: stable size is uncertain
    ("Cardiomediastinal silhouette within normal limits.", {EC: 0, CM: None, NF: 1}),
    ("The cardiomediastinal silhouette is normal in size and contour.", {EC: 0}),
    ("Normal heart size and mediastinal contours.", {CM: 0, EC: 0}),
    (
        "Heart size, mediastinal contour, and pulmonary vascularity are within normal limits.",
        {CM: 0, EC: 0},
    ),
    ("The mediastinum is widened.", {EC: 1}),
    ("Widened mediastinum.", {EC: 1}),
    ("Stable cardiomediastinal silhouette.", {EC: -1, NF: None}),
    ("Pacemaker leads overlie the cardiac silhouette in normal position.", {CM: None, SD: 1}),
    ("Heart size is normal, mediastinum is widened.", {CM: 0, EC: 1}),
    # --- edema family ---
    ("Pulmonary vascular congestion.", {ED: -1}),  # CheXpert: congestion is uncertain edema
    ("Mild interstitial edema.", {ED: 1}),
    ("Mild CHF.", {ED: 1, CM: -1}),
    ("No pulmonary edema.", {ED: 0}),
    # --- support devices ---
    ("ET tube terminates 4 cm above the carina.", {SD: 1, NF: 1}),
    ("Right PICC line with tip in the distal SVC.", {SD: 1}),
    ("Left-sided pacemaker with leads in the right atrium and ventricle.", {SD: 1}),
    ("Median sternotomy wires are intact.", {SD: 1, NF: 1}),
    ("NG tube courses below the diaphragm. Right IJ central venous catheter.", {SD: 1}),
    ("No lines or tubes.", {SD: 0}),
    # --- fractures ---
    ("Old healed right rib fracture.", {FR: 1, NF: None}),
    ("No displaced rib fractures.", {FR: 0}),
    ("Acute displaced fracture of the left 6th rib.", {FR: 1}),
    ("No acute fracture is identified.", {FR: 0, NF: 1}),
    # --- lesions, opacity, pleura ---
    ("Calcified granuloma in the right upper lobe.", {LL: None, NF: None}),
    ("Scattered calcified nodules.", {LL: None}),
    ("1.2 cm nodule in the left upper lobe.", {LL: 1}),
    ("Nodular opacity in the right midlung.", {LL: 1, LO: 1}),
    ("Mild biapical pleural thickening.", {PO: 1, LO: None}),
    ("Left basilar scarring.", {LO: 1}),
    ("Clear lungs.", {LO: 0, NF: 1}),
    ("Small pericardial effusion.", {PE: None, NF: None}),
    ("Hydropneumothorax on the right.", {PX: 1, PE: 1}),
    # --- other abnormalities keep No Finding blank ---
    ("Mild degenerative changes of the thoracic spine.", {NF: None}),
    ("Hyperinflated lungs consistent with COPD.", {NF: None}),
    ("Moderate hiatal hernia.", {NF: None}),
    # --- de-identification and templates ---
    ("Normal chest x-XXXX.", {NF: 1}),
    ("___ year old man. No acute cardiopulmonary process.", {NF: 1}),
    ("Comparison ___. Small ___ pleural effusion.", {PE: 1, NF: None}),
    (
        "FINDINGS: PA and lateral views.\nThere is no focal consolidation,\neffusion, or "
        "pneumothorax.\n\nIMPRESSION: No acute intrathoracic process.",
        {CO: 0, PE: 0, PX: 0, NF: 1},
    ),
]

# Cases whose full label dict is known: unnamed observations must be None.
EXACT = {
    "No pleural effusion.",
    "Stable cardiomegaly.",
    "Normal chest x-XXXX.",
    "ET tube terminates 4 cm above the carina.",
    "Left basilar opacity may represent atelectasis or pneumonia.",
}


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:50] for c in CASES])
def test_labels(text, expected):
    got = label_report(text)
    assert list(got) == list(OBSERVATIONS)
    for obs, value in expected.items():
        assert got[obs] == value, f"{obs}: {got[obs]} != {value} in {got}"
    if text in EXACT:
        assert all(got[o] is None for o in OBSERVATIONS if o not in expected), got


def test_at_least_sixty_cases():
    assert len(CASES) >= 60


@pytest.mark.parametrize("text", ["", "   ", "\n\n", "...", "1. 2."])
def test_empty_report_has_no_labels(text):
    assert label_report(text) == dict.fromkeys(OBSERVATIONS)


def test_case_and_spacing_do_not_matter():
    a = label_report("NO PNEUMOTHORAX.   Small LEFT pleural   effusion.")
    b = label_report("no pneumothorax. small left pleural effusion.")
    assert a == b and a[PX] == 0 and a[PE] == 1


def test_no_finding_only_positive_or_blank():
    for text, _ in CASES:
        assert label_report(text)[NF] in (1, None)


def test_support_devices_do_not_block_no_finding():
    assert label_report("Right PICC tip in the SVC. Lungs are clear.")[NF] == 1
    assert label_report("Right PICC tip in the SVC. Small effusion.")[NF] is None


def test_positive_beats_uncertain_beats_negative():
    got = label_report("No effusion on the right. Possible small left effusion.")
    assert got[PE] == -1
    got = label_report("Possible small left effusion. Large right effusion.")
    assert got[PE] == 1


def test_label_reports_matches_label_report():
    texts = [t for t, _ in CASES[:10]]
    assert label_reports(texts) == [label_report(t) for t in texts]


def test_observation_order_is_chexpert():
    assert OBSERVATIONS[0] == NF and OBSERVATIONS[-1] == SD and len(OBSERVATIONS) == 14
    assert "not CheXbert" in LABELER_NAME


def test_fast_enough():
    texts = [t for t, _ in CASES] * 20  # about 1,900 reports
    start = time.perf_counter()
    label_reports(texts)
    took = time.perf_counter() - start
    # ~10,000 reports/s on one core; a generous bound that only catches a pathology
    assert took < 2.0, f"{len(texts)} reports took {took:.2f} s"


def test_write_label_csv(tmp_path):
    labels = label_reports(["Small effusion. Possible pneumonia. No pneumothorax.", ""])
    path = tmp_path / "out" / "labels.csv"
    write_label_csv(["a1", "b2"], labels, path)
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", *OBSERVATIONS]
    first = dict(zip(rows[0], rows[1]))
    assert first["id"] == "a1"
    assert first[PE] == "1.0" and first[PN] == "-1.0" and first[PX] == "0.0"
    assert first[NF] == "" and first[CM] == ""
    assert rows[2] == ["b2"] + [""] * 14
    assert [p.name for p in path.parent.iterdir()] == ["labels.csv"]  # no temporary left


def test_write_label_csv_is_atomic(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("old\n")
    with pytest.raises(ValueError, match="2 ids but 1 label rows"):
        write_label_csv(["a", "b"], [label_report("x")], path)
    bad = [{PE: "yes"}]  # not a label value: fails mid-write
    with pytest.raises(ValueError):
        write_label_csv(["a"], bad, path)
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.csv"]


def test_missing_report_values():
    assert label_report(None) == dict.fromkeys(OBSERVATIONS)
    assert label_report(float("nan")) == dict.fromkeys(OBSERVATIONS)
    with pytest.raises(TypeError, match="must be a string"):
        label_report(3)
