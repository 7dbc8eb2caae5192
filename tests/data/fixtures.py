"""Builders of tiny dataset trees in each publisher's exact native layout, for reader tests.

Each builder writes under a directory the files a user gets from the publisher (gzip CSVs with
the real column names, order and value coding; JPG/PNG images; report text in the native
style) and returns the records it wrote, so tests can compare the reader's output with them.
Where a format detail was seen only in third-party code, the builder follows the variant named
in tests/data/fixtures/README.md.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image as PILImage

# The 14 observations in CheXpert's train.csv order, and MIMIC-CXR-JPG's chexpert/negbio
# tables' order (alphabetical): the two differ, so readers must select columns by name.
CHEXPERT_ORDER = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)  # fmt: skip
MIMIC_LABEL_ORDER = tuple(sorted(CHEXPERT_ORDER))
MIMIC_METADATA_COLUMNS = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)  # fmt: skip
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")

_CODE = {1: "1.0", 0: "0.0", -1: "-1.0", None: ""}
_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral"}


def tiny_jpeg(seed: int = 0, size: int = 8) -> bytes:
    """A few-hundred-byte grayscale JPEG (the readers never decode it; writers of many
    fixtures reuse the bytes)."""
    img = PILImage.new("L", (size, size), color=(seed * 37) % 256)
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


def tiny_png(seed: int = 0, size: int = 8) -> bytes:
    """A tiny grayscale PNG."""
    img = PILImage.new("L", (size, size), color=(seed * 53) % 256)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Write a CSV, gzip-compressed when `path` ends in `.gz` (as PhysioNet ships them)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode("utf-8")
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Read back a (gzip) CSV as header and rows, for tests that corrupt one cell."""
    raw = path.read_bytes()
    text = (gzip.decompress(raw) if path.suffix == ".gz" else raw).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    return rows[0], rows[1:]


# ------------------------------------------------------------------ MIMIC-CXR-JPG + reports


@dataclass
class MimicStudy:
    """One study as written: what the reader should give back."""

    subject_id: str
    study_id: str
    split: str
    views: list[str]
    dicom_ids: list[str] = field(default_factory=list)
    labels: dict[str, int | None] | None = None  # None: no row in the chexpert table
    indication: str = ""
    comparison: str = ""
    findings: str = ""
    impression: str = ""
    report: str | None = None  # the .txt text; None: no report file


def mimic_report(indication: str, comparison: str, findings: str, impression: str) -> str:
    """A report in MIMIC-CXR's style: a centred `FINAL REPORT` header, every line starting
    with a space and at most 79 characters, blank separator lines holding one space, PHI as
    `___`, headers followed by two spaces or a line break."""

    def wrap(text: str) -> list[str]:
        lines, cur = [], ""
        for word in text.split():
            if cur and len(cur) + 1 + len(word) > 76:
                lines.append(" " + cur)
                cur = word
            else:
                cur = f"{cur} {word}" if cur else word
        if cur:
            lines.append(" " + cur)
        return lines

    out = ["                                 FINAL REPORT"]
    out.append(" EXAMINATION:  CHEST (PA AND LAT)")
    out.append(" ")
    out.append(f" INDICATION:  {indication}")
    out.append(" ")
    out.append(" TECHNIQUE:  Chest PA and lateral")
    out.append(" ")
    out.append(f" COMPARISON:  {comparison}")
    out.append(" ")
    if findings:
        out.append(" FINDINGS: ")
        out.append(" ")
        out.extend(wrap(findings))
        out.append(" ")
    out.append(" IMPRESSION: ")
    out.append(" ")
    out.extend(wrap(impression))
    return "\n".join(out) + "\n"


def _dicom_id(rng: random.Random) -> str:
    return "-".join(f"{rng.getrandbits(32):08x}" for _ in range(5))


def _mimic_canonical() -> list[MimicStudy]:
    """Three hand-written studies covering: PA + LATERAL with labels incl. blank vs 0.0;
    a single AP with an uncertain label; a study with no labeller row (unlabelled)."""
    none = dict.fromkeys(CHEXPERT_ORDER)
    s1 = dict(none, **{"No Finding": 1, "Pneumothorax": 0, "Pleural Effusion": 0})
    s2 = dict(none, **{"Edema": -1, "Cardiomegaly": 1, "Pneumothorax": 0})
    return [
        MimicStudy(
            "10000032", "50414267", "train", ["PA", "LATERAL"], labels=s1,
            indication="___F with new onset ascites // eval for infection",
            comparison="None.",
            findings=(
                "There is no focal consolidation, pleural effusion or pneumothorax. The "
                "cardiomediastinal silhouette is normal. Surgical clips project over the left "
                "upper quadrant."
            ),
            impression="No acute cardiopulmonary process.",
        ),
        MimicStudy(
            "10000032", "53189527", "validate", ["AP"], labels=s2,
            indication="___ year old man with dyspnea.",
            comparison="Chest radiograph ___.",
            findings="Moderate cardiomegaly. Possible mild interstitial edema.",
            impression="Cardiomegaly with possible mild edema.",
        ),
        MimicStudy(
            "10000764", "57375967", "test", ["AP", "LL"], labels=None,
            indication="Fever.",
            comparison="None.",
            findings="",
            impression="Low lung volumes. No definite consolidation.",
        ),
    ]  # fmt: skip


def build_mimic(
    root: Path,
    n_extra: int = 0,
    *,
    reports_root: Path | None = None,
    seed: int = 0,
) -> list[MimicStudy]:
    """Write a MIMIC-CXR-JPG tree (plus MIMIC-CXR report files) under `root`.

    Args:
        root: the MIMIC-CXR-JPG directory to create.
        n_extra: generated studies beyond the three canonical ones (for streaming tests).
        reports_root: where the report `files/` go (default `root`).
        seed: seed of the generated studies and dicom ids.

    Returns:
        The studies in the order of the metadata file.
    """
    rng = random.Random(seed)
    reports_root = reports_root or root
    studies = _mimic_canonical()
    for i in range(n_extra):
        subject = f"1{(1000 + i // 3):07d}"
        labels = None
        if i % 5:
            labels = {o: rng.choice([1, 0, -1, None, None]) for o in CHEXPERT_ORDER}
        studies.append(
            MimicStudy(
                subject, f"5{(2000000 + i):07d}", rng.choice(["train", "validate", "test"]),
                rng.choice([["PA", "LATERAL"], ["AP"], ["PA"], ["AP", "LATERAL", "LL"]]),
                labels=labels, indication=f"___ study {i}.", comparison="None.",
                findings=f"Generated findings number {i}.", impression=f"Impression {i}.",
            )
        )  # fmt: skip
    jpg = tiny_jpeg()
    meta_rows, split_rows, label_rows = [], [], []
    for s in studies:
        s.dicom_ids = [_dicom_id(rng) for _ in s.views]
        folder = root / "files" / f"p{s.subject_id[:2]}" / f"p{s.subject_id}" / f"s{s.study_id}"
        folder.mkdir(parents=True, exist_ok=True)
        for dicom, view in zip(s.dicom_ids, s.views):
            (folder / f"{dicom}.jpg").write_bytes(jpg)
            meta_rows.append([
                dicom, s.subject_id, s.study_id, "CHEST (PA AND LAT)", view, 3056, 2544,
                21800506, "213014.531", "CHEST (PA AND LAT)", _VIEW_MEANING.get(view, ""),
                "Erect",
            ])  # fmt: skip
            split_rows.append([dicom, s.study_id, s.subject_id, s.split])
        if s.labels is not None:
            label_rows.append(
                [s.subject_id, s.study_id, *(_CODE[s.labels[o]] for o in MIMIC_LABEL_ORDER)]
            )
        s.report = mimic_report(s.indication, s.comparison, s.findings, s.impression)
        rfile = (
            reports_root / "files" / f"p{s.subject_id[:2]}" / f"p{s.subject_id}"
            / f"s{s.study_id}.txt"
        )  # fmt: skip
        rfile.parent.mkdir(parents=True, exist_ok=True)
        rfile.write_text(s.report, encoding="utf-8")
    write_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", MIMIC_METADATA_COLUMNS, meta_rows)
    write_csv(root / "mimic-cxr-2.0.0-split.csv.gz", MIMIC_SPLIT_COLUMNS, split_rows)
    for name in ("chexpert", "negbio"):
        write_csv(
            root / f"mimic-cxr-2.0.0-{name}.csv.gz",
            ("subject_id", "study_id", *MIMIC_LABEL_ORDER),
            label_rows,
        )
    (root / "IMAGE_FILENAMES").write_text(
        "".join(
            f"files/p{s.subject_id[:2]}/p{s.subject_id}/s{s.study_id}/{d}.jpg\n"
            for s in studies
            for d in s.dicom_ids
        )
    )
    return studies


# ---------------------------------------------------------------------------------- IU-Xray


@dataclass
class IuRecord:
    """One IU-Xray report as written (R2Gen record or Open-I XML file)."""

    id: str
    split: str
    image_ids: list[str]
    indication: str = ""
    comparison: str = ""
    findings: str = ""
    impression: str = ""
    mesh_major: list[str] = field(default_factory=list)


def build_iu_r2gen(root: Path, n_extra: int = 0) -> list[IuRecord]:
    """Write R2Gen's IU-Xray layout: `annotation.json` keyed by train/val/test, and
    `images/<id>/<k>.png`. Returns the records in file order (train, val, test)."""
    recs = [
        IuRecord("CXR2384_IM-0942", "train", ["0.png", "1.png"],
                 findings="The heart size and pulmonary vascularity appear within normal "
                 "limits. The lungs are free of focal airspace disease. No pleural effusion "
                 "or pneumothorax is seen."),
        IuRecord("CXR1000_IM-0003", "train", ["0.png", "1.png"],
                 findings="Borderline cardiomegaly. Midline sternotomy XXXX. Enlarged pulmonary "
                 "arteries."),
        IuRecord("CXR3077_IM-1443", "val", ["0.png", "1.png"],
                 findings="Lungs are clear. No pneumothorax."),
        IuRecord("CXR945_IM-2431", "test", ["0.png"], findings="Stable appearance of the chest."),
    ]  # fmt: skip
    recs += [
        IuRecord(f"CXR{5000 + i}_IM-{i:04d}", ("train", "val", "test")[i % 3], ["0.png", "1.png"],
                 findings=f"Generated report {i}.")
        for i in range(n_extra)
    ]  # fmt: skip
    png = tiny_png()
    data: dict[str, list[dict[str, object]]] = {"train": [], "val": [], "test": []}
    for r in recs:
        paths = [f"{r.id}/{name}" for name in r.image_ids]
        for p in paths:
            (root / "images" / p).parent.mkdir(parents=True, exist_ok=True)
            (root / "images" / p).write_bytes(png)
        data[r.split].append(
            {"id": r.id, "report": r.findings, "image_path": paths, "split": r.split}
        )
    recs.sort(key=lambda r: ("train", "val", "test").index(r.split))
    (root / "annotation.json").write_text(json.dumps(data), encoding="utf-8")
    return recs


def openi_xml(number: int, rec: IuRecord) -> str:
    """One Open-I report file (`ecgen-radiology/<n>.xml`): an `eCitation` with the report in
    MedlineCitation/Article/Abstract (all four AbstractText, empty ones self-closing), MeSH
    terms, and one parentImage per image."""

    def abstract(label: str, text: str) -> str:
        return (
            f'<AbstractText Label="{label}">{text}</AbstractText>'
            if text
            else f'<AbstractText Label="{label}"/>'
        )

    mesh = "".join(f"<major>{m}</major>" for m in rec.mesh_major)
    images = "".join(
        f'<parentImage id="{i}"><figureId>F{k + 1}</figureId>'
        f"<caption>Xray Chest PA and Lateral</caption>"
        f'<panel type="single"><url>/hadoop/storage/radiology/extract/{i}.jpg</url>'
        f"<imgModality>7</imgModality></panel></parentImage>"
        for k, i in enumerate(rec.image_ids)
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<eCitation><meta type="rr"/><uId id="CXR{number}"/><pmcId id="{number}"/>'
        f'<docSource>CXR</docSource><IUXRId id="{number}"/>'
        "<licenseType>open-access</licenseType>"
        '<MedlineCitation Owner="Indiana University" Status="supplied by publisher">'
        '<Article PubModel="Electronic"><Journal><JournalIssue><PubDate><Year>2013</Year>'
        "</PubDate></JournalIssue></Journal>"
        "<ArticleTitle>Indiana University Chest X-ray Collection</ArticleTitle><Abstract>"
        + abstract("COMPARISON", rec.comparison)
        + abstract("INDICATION", rec.indication)
        + abstract("FINDINGS", rec.findings)
        + abstract("IMPRESSION", rec.impression)
        + "</Abstract></Article></MedlineCitation>"
        f"<MeSH>{mesh}<automatic>Lung</automatic></MeSH>{images}</eCitation>\n"
    )


def build_openi(root: Path) -> list[IuRecord]:
    """Write Open-I's layout: `ecgen-radiology/{1,2,10}.xml` and `NLMCXR_png/<id>.png`.
    Report 2 lists no image (as 104 real reports do). Returns records in numeric order."""
    recs = {
        1: IuRecord("CXR1", "", ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"],
                    indication="Positive TB test", comparison="None.",
                    findings="The cardiac silhouette and mediastinum size are within normal "
                    "limits. There is no pulmonary edema.",
                    impression="Normal chest x-XXXX.", mesh_major=["normal"]),
        2: IuRecord("CXR2", "", [], indication="", comparison="",
                    findings="", impression="No acute disease.", mesh_major=["normal"]),
        10: IuRecord("CXR10", "", ["CXR10_IM-0002-1001"], indication="XXXX-year-old male, "
                     "chest pain.", comparison="", findings="Calcified granuloma right upper "
                     "lobe.", impression="No acute cardiopulmonary abnormality.",
                     mesh_major=["Calcified Granuloma/lung/upper lobe/right"]),
    }  # fmt: skip
    (root / "ecgen-radiology").mkdir(parents=True, exist_ok=True)
    (root / "NLMCXR_png").mkdir(parents=True, exist_ok=True)
    png = tiny_png()
    for n, r in recs.items():
        (root / "ecgen-radiology" / f"{n}.xml").write_text(openi_xml(n, r), encoding="utf-8")
        for i in r.image_ids:
            (root / "NLMCXR_png" / f"{i}.png").write_bytes(png)
    return list(recs.values())


# --------------------------------------------------------------------------------- CheXpert

CHEXPERT_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_ORDER)


@dataclass
class ChexpertStudy:
    """One CheXpert study as written: (split dir, patient, study), its views and labels."""

    split: str
    patient: str
    study: str
    views: list[tuple[str, str]]  # (Frontal/Lateral, AP/PA) per image
    labels: dict[str, int | None]
    sex: str = "Female"
    age: int = 68


def build_chexpert(root: Path, n_extra: int = 0, *, seed: int = 0) -> list[ChexpertStudy]:
    """Write `CheXpert-v1.0-small/` at `root`: `train.csv`, `valid.csv` and the JPGs under
    `train/` and `valid/`. The CSV Path keeps the leading `CheXpert-v1.0-small/`, as shipped.
    Returns the studies in file order (train.csv, then valid.csv)."""
    rng = random.Random(seed)
    none = dict.fromkeys(CHEXPERT_ORDER)
    studies = [
        ChexpertStudy("train", "patient00001", "study1", [("Frontal", "AP")],
                      dict(none, **{"No Finding": 1, "Support Devices": 1}), "Female", 68),
        ChexpertStudy("train", "patient00002", "study2", [("Frontal", "AP")],
                      dict(none, **{"Lung Opacity": 1, "Fracture": 1, "Pneumothorax": 0}),
                      "Female", 87),
        ChexpertStudy("train", "patient00002", "study1", [("Frontal", "AP"), ("Lateral", "")],
                      dict(none, **{"Cardiomegaly": -1, "Pleural Effusion": 0, "Edema": 0}),
                      "Female", 83),
    ]  # fmt: skip
    for i in range(n_extra):
        studies.append(
            ChexpertStudy(
                "train", f"patient{10 + i // 2:05d}", f"study{1 + i % 2}",
                rng.choice([[("Frontal", "PA"), ("Lateral", "")], [("Frontal", "AP")]]),
                {o: rng.choice([1, 0, -1, None, None]) for o in CHEXPERT_ORDER},
                rng.choice(["Male", "Female"]), rng.randrange(18, 90),
            )
        )  # fmt: skip
    studies.append(
        ChexpertStudy("valid", "patient64541", "study1", [("Frontal", "PA"), ("Lateral", "")],
                      {o: int(o in ("Cardiomegaly", "Support Devices")) for o in CHEXPERT_ORDER},
                      "Male", 73)
    )  # fmt: skip
    jpg = tiny_jpeg()
    rows: dict[str, list[list[object]]] = {"train": [], "valid": []}
    for s in studies:
        for k, (fl, ap) in enumerate(s.views, 1):
            rel = f"{s.split}/{s.patient}/{s.study}/view{k}_{fl.lower()}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(jpg)
            rows[s.split].append([
                f"CheXpert-v1.0-small/{rel}", s.sex, s.age, fl, ap,
                *(_CODE[s.labels[o]] for o in CHEXPERT_ORDER),
            ])  # fmt: skip
    for split, split_rows in rows.items():
        write_csv(root / f"{split}.csv", CHEXPERT_COLUMNS, split_rows)
    return studies
