"""PadChest (BIMCV): the 160K label CSV with Spanish reports, projections and label lists.

Layout of the release (sources: ``tests/data/fixtures/padchest/README.md``): one CSV,
``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` or ``.csv.gz`` (any
``PADCHEST_chest_x_ray_images_labels*.csv*`` is taken: the publisher's README omits the date),
one row per image, an unnamed index column first, then ``ImageID, ImageDir, StudyDate_DICOM,
StudyID, PatientID, PatientBirth, PatientSex_DICOM, ViewPosition_DICOM, Projection,
MethodProjection, Pediatric, ..., ReportID, Report, MethodLabel, Labels, Localizations,
LabelsLocalizationsBySentence, labelCUIS, LocalizationsCUIS``. The images (16-bit PNG) come as
one zip per ``ImageDir`` (0 to 54), unpacked to ``<ImageDir>/<ImageID>``; ``flat=true`` reads
them from one folder, as torchxrayvision does.

Values as the release has them, and what is done with them:

- ``Report``: Spanish, stemmed and tokenised, sentences ended by `` .``, usually with a leading
  space; the literal ``nan`` (or nothing) where there is no report: the study is kept with
  empty findings and the missing report counted. Whitespace is collapsed.
- ``Labels``: a Python-list string, every entry after the first with a leading space
  (``['infiltrates', ' pneumonia']``), read with ``ast.literal_eval`` (never ``eval``) and
  stripped; empty for about a hundred images (counted, the study keeps its other images'
  labels); ``[]`` is a list without findings. Entries such as ``unchanged``, ``exclude`` or
  ``suboptimal study`` are kept in ``extra["padchest_labels"]`` with the rest; the labels that
  are CheXpert observations are 1, ``normal`` gives No Finding 1, everything else stays None
  (PadChest does not state negatives). Labels are the union over the study's images.
- ``Projection`` (PA, L, AP, AP_horizontal, COSTAL, EXCLUDE, UNK) becomes the one view
  vocabulary (``radixpert.data.views``: L -> LATERAL, AP_horizontal -> AP, COSTAL -> OTHER,
  EXCLUDE and UNK -> unknown); the value itself stays in ``extra["projections"]``.
- ``ImageDir`` is an integer, written ``13.0`` in some copies: both are read.
- Images that torchxrayvision lists as absent from the release or unreadable are left out
  and counted (``skip_known_bad``).

Reports stay Spanish (``language="es"``) unless ``translate=true``: then a local MarianMT model
(``radixpert.data.translate``, ``Helsinki-NLP/opus-mt-es-en`` from the local hub cache) turns
them into English, cached per text; the Spanish text stays in ``extra["report_es"]`` and the
study is marked ``report_source="translated"`` with ``extra["translation"]`` naming the model.

    radixpert data prepare padchest --root padchest --out padchest.jsonl translate=true
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from radixpert.data.readers import Skip, iter_csv
from radixpert.data.study import Image, Study
from radixpert.data.translate import DEFAULT_MODEL
from radixpert.data.views import normalise_view
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

REQUIRED = ("ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "Report", "Labels")

# PadChest label (lower case) -> CheXpert observation. Devices all map to Support Devices.
TO_CHEXPERT = {
    "normal": "No Finding",
    "cardiomegaly": "Cardiomegaly",
    "pleural effusion": "Pleural Effusion",
    "pneumothorax": "Pneumothorax",
    "atelectasis": "Atelectasis",
    "laminar atelectasis": "Atelectasis",
    "consolidation": "Consolidation",
    "pneumonia": "Pneumonia",
    "nodule": "Lung Lesion",
    "multiple nodules": "Lung Lesion",
    "mass": "Lung Lesion",
    "pulmonary mass": "Lung Lesion",
    "pulmonary edema": "Edema",
    "infiltrates": "Lung Opacity",
    "interstitial pattern": "Lung Opacity",
    "alveolar pattern": "Lung Opacity",
    "rib fracture": "Fracture",
    "clavicle fracture": "Fracture",
    "vertebral fracture": "Fracture",
    "humeral fracture": "Fracture",
    "pleural thickening": "Pleural Other",
    "apical pleural thickening": "Pleural Other",
    "mediastinal enlargement": "Enlarged Cardiomediastinum",
    "pacemaker": "Support Devices",
    "dual chamber device": "Support Devices",
    "single chamber device": "Support Devices",
    "nsg tube": "Support Devices",
    "endotracheal tube": "Support Devices",
    "central venous catheter": "Support Devices",
    "central venous catheter via jugular vein": "Support Devices",
    "central venous catheter via subclavian vein": "Support Devices",
    "tracheostomy tube": "Support Devices",
    "chest drain tube": "Support Devices",
    "electrical device": "Support Devices",
}

# torchxrayvision's PC_Dataset (torchxrayvision/datasets.py) leaves these images out: the first
# ones are absent from the release (vilmedic's make_padchest.py lists their studies as "study
# without image"), the others cannot be decoded.
_ABSENT = (
    "216840111366964012819207061112010307142602253_04-014-084.png",
    "216840111366964012989926673512011074122523403_00-163-058.png",
    "216840111366964012959786098432011033083840143_00-176-115.png",
    "216840111366964012558082906712009327122220177_00-102-064.png",
    "216840111366964012339356563862009072111404053_00-043-192.png",
    "216840111366964013076187734852011291090445391_00-196-188.png",
    "216840111366964012373310883942009117084022290_00-064-025.png",
    "216840111366964012283393834152009033102258826_00-059-087.png",
    "216840111366964012373310883942009170084120009_00-097-074.png",
    "216840111366964012819207061112010315104455352_04-024-184.png",
    "216840111366964012819207061112010306085429121_04-020-102.png",
)
_UNREADABLE = (
    "216840111366964012989926673512011083134050913_00-168-009.png",  # broken PNG chunk
    "216840111366964012373310883942009152114636712_00-102-045.png",  # truncated
    "216840111366964012819207061112010281134410801_00-129-131.png",  # truncated
    "216840111366964012487858717522009280135853083_00-075-001.png",  # truncated
    "216840111366964012989926673512011151082430686_00-157-045.png",  # broken PNG chunk
    "216840111366964013686042548532013208193054515_02-026-007.png",  # truncated
    "216840111366964013590140476722013058110301622_02-056-111.png",  # truncated
    "216840111366964013590140476722013043111952381_02-065-198.png",  # truncated
    "216840111366964013829543166512013353113303615_02-092-190.png",  # truncated
    "216840111366964013962490064942014134093945580_01-178-104.png",  # truncated
)
KNOWN_BAD: dict[str, str] = {
    **dict.fromkeys(_ABSENT, "image known to be absent from the release"),
    **dict.fromkeys(_UNREADABLE, "image file known to be unreadable"),
}
"""ImageID -> why the image is left out (``skip_known_bad``)."""

_NO_VALUE = frozenset({"", "nan", "none", "null"})


def _text(value: str | None) -> str:
    """The cell with runs of whitespace collapsed; "" for an empty cell or pandas' ``nan``."""
    text = " ".join((value or "").split())
    return "" if text.lower() in _NO_VALUE else text


def _name_list(value: str) -> list[str] | None:
    """The names of a Python-list cell, stripped (None for an empty cell).

    Raises:
        ValueError: The cell is not a Python list.
    """
    if not _text(value):
        return None
    try:
        parsed = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("not a Python list") from None
    if not isinstance(parsed, list):
        raise ValueError(f"a {type(parsed).__name__}, not a list")
    names = (" ".join(str(x).split()) for x in parsed)
    return [n for n in names if n]


def _image_dir(value: str) -> str | None:
    """``"13"`` for ``13`` or ``13.0``; None when the cell is not a folder number."""
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return str(int(number)) if number.is_integer() and number >= 0 else None


@dataclass
class _Record:
    """One study while its rows are read."""

    line: int
    patient: str
    report: str
    meta: dict[str, str]
    images: list[Image] = field(default_factory=list)
    projections: list[str] = field(default_factory=list)
    method_projection: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    labelled: bool = False
    localizations: set[str] = field(default_factory=set)

    @classmethod
    def first(cls, line: int, row: dict[str, str]) -> _Record:
        """The study of its first row (study-level fields are taken from it)."""
        return cls(
            line=line,
            patient=row["PatientID"].strip(),
            report=_text(row["Report"]),
            meta={
                "report_id": _text(row.get("ReportID")),
                "method_label": _text(row.get("MethodLabel")),
                "study_date": _text(row.get("StudyDate_DICOM")),
                "patient_sex": _text(row.get("PatientSex_DICOM")),
                "patient_birth": _text(row.get("PatientBirth")).removesuffix(".0"),
                "pediatric": _text(row.get("Pediatric")),
            },
        )

    def agree(self, row: dict[str, str], where: str) -> Iterator[Skip]:
        """Skips for a later row whose patient or report differs from the study's."""
        report = _text(row["Report"])
        if report and not self.report:
            self.report = report  # every row repeats the study's one report: take one that has it
        for name, kept, value in (
            ("PatientID", self.patient, row["PatientID"].strip()),
            ("Report", self.report, report or self.report),
        ):
            if value != kept:
                detail = f"{value[:60]!r} vs {kept[:60]!r} (first kept)"
                yield Skip(f"images of one study disagree on {name}", where, detail, "field")

    def add(
        self, row: dict[str, str], where: str, prefix: str, flat: bool, skip_known_bad: bool
    ) -> Iterator[Skip]:
        """Adds a row's labels and image; yields what is left out of it."""
        try:
            names = _name_list(row["Labels"])
        except ValueError as e:
            detail = f"{row['Labels'][:60]!r}: {e}"
            yield Skip("Labels is not a Python list", where, detail, "label")
        else:
            if names is None:
                yield Skip("Labels empty", where, row["ImageID"].strip(), "label")
            else:
                self.labels.update(names)
                self.labelled = True
        if "Localizations" in row:
            try:
                self.localizations.update(_name_list(row["Localizations"]) or [])
            except ValueError as e:
                yield Skip("Localizations is not a Python list", where, str(e), "field")
        image_id = row["ImageID"].strip()
        if not image_id:
            yield Skip("row without ImageID", where, part="image")
            return
        if image_id in self.seen:
            yield Skip("image listed twice", where, image_id, "image")
            return
        self.seen.add(image_id)
        if skip_known_bad and image_id in KNOWN_BAD:
            yield Skip(KNOWN_BAD[image_id], where, f"{image_id} (torchxrayvision)", "image")
            return
        folder = "" if flat else _image_dir(row["ImageDir"])
        if folder is None:
            yield Skip("ImageDir is not a folder number", where, repr(row["ImageDir"]), "image")
            return
        projection = row["Projection"].strip()
        view = normalise_view(projection)
        if view is None:
            yield Skip("unknown Projection", where, repr(projection), "view")
        self.images.append(
            Image(f"{prefix}{folder}/{image_id}" if folder else prefix + image_id, view or "")
        )
        self.projections.append(projection)
        self.method_projection.append(_text(row.get("MethodProjection")))


def _labels(names: set[str]) -> dict[str, int | None]:
    if not names:
        return {}
    labels: dict[str, int | None] = dict.fromkeys(OBSERVATIONS)
    for name in names:
        if name.lower() in TO_CHEXPERT:
            labels[TO_CHEXPERT[name.lower()]] = 1
    if any(v == 1 for o, v in labels.items() if o not in ("No Finding", "Support Devices")):
        labels["No Finding"] = None
    return labels


def _find_csv(root: Path, csv_file: str | None) -> Path:
    if csv_file:
        return root / csv_file
    found = sorted(root.glob("PADCHEST_chest_x_ray_images_labels*.csv*"))
    if not found:
        raise ReaderError(f"{root}: no PADCHEST_chest_x_ray_images_labels*.csv(.gz)")
    return found[-1]


def read(
    root: Path,
    *,
    csv_file: str | None = None,
    images: str = "",
    flat: bool = False,
    skip_known_bad: bool = True,
    translate: bool = False,
    translation_model: str = DEFAULT_MODEL,
    translation_batch: int = 32,
    translation_device: str = "auto",
) -> Iterator[Study | Skip]:
    """Studies grouped by StudyID (labels are the union over the study's images).

    Args:
        csv_file: The label CSV, relative to the root (default: the newest
            PADCHEST_chest_x_ray_images_labels*.csv*).
        images: The folder under the root that holds the image folders 0..54 (default: the
            root itself).
        flat: All images in one folder, <images>/<ImageID> (as torchxrayvision reads them),
            instead of one folder per ImageDir.
        skip_known_bad: Leave out, and count, the images torchxrayvision lists as absent from
            the release or unreadable.
        translate: Translate the Spanish reports to English with a local MarianMT model,
            cached per text under RADIXPERT_HOME; the Spanish text stays in extra report_es.
        translation_model: Hub id (read from the local hub cache only) or folder of the
            MarianMT model.
        translation_batch: Reports per translation batch.
        translation_device: auto (CUDA when available), cpu or cuda.
    """
    root = Path(root)
    path = _find_csv(root, csv_file)
    prefix = f"{images.strip('/')}/" if images.strip("/") else ""
    studies: dict[str, _Record] = {}
    for line, row in iter_csv(path, REQUIRED):
        where = f"{path}:{line}"
        sid = row["StudyID"].strip()
        if not sid:
            yield Skip("row without StudyID", where, row["ImageID"].strip())
            continue
        if sid in studies:
            yield from studies[sid].agree(row, where)
        else:
            studies[sid] = _Record.first(line, row)
        yield from studies[sid].add(row, where, prefix, flat, skip_known_bad)

    english: dict[str, str] = {}
    marking: dict[str, str] = {}
    if translate:
        from radixpert.data.translate import Translator

        translator = Translator(
            translation_model, batch_size=translation_batch, device=translation_device
        )
        reports = list(dict.fromkeys(r.report for r in studies.values() if r.report and r.images))
        english = dict(zip(reports, translator(reports), strict=True))
        marking = translator.marking()

    for sid, rec in studies.items():
        where = f"{path} record {sid}"
        if not rec.images:
            yield Skip("no usable image", where, f"first line {rec.line}")
            continue
        if not rec.report:
            yield Skip("no report text", where, part="field")
        translated = translate and bool(rec.report)
        extra = {
            "padchest_labels": sorted(rec.labels),
            "padchest_localizations": sorted(rec.localizations),
            "report_es": rec.report,
            "projections": rec.projections,
            "method_projection": rec.method_projection,
            **rec.meta,
        }
        if translated:
            extra["translation"] = marking
        yield Study(
            id=f"padchest-{sid}",
            dataset="padchest",
            patient_id=rec.patient,
            images=rec.images,
            findings=english[rec.report] if translated else rec.report,
            labels=_labels(rec.labels) if rec.labelled else {},
            language="en" if translate else "es",
            report_source="translated" if translated else "original",
            extra=extra,
        ).validate(f"{where} (first line {rec.line})")
