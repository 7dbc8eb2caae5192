"""PadChest-GR (BIMCV): grounded report sentences in Spanish and English, with boxes.

Layout of the release (``BIMCV-Padchest-GR``; sources: ``tests/data/fixtures/padchest-gr/
README.md``):

- ``grounded_reports_20240819.json`` (any ``grounded_reports_*.json``): a list of one record
  per study, ``{"StudyID", "ImageID", "PreviousStudyID", "PreviousImageID", "findings": [...]}``,
  each finding a sentence: ``sentence_en``, ``sentence_es``, ``abnormal``, ``boxes`` and
  ``extra_boxes`` (lists of ``[x1, y1, x2, y2]`` in 0-1 coordinates of the image: the two
  independent sets of boxes the paper describes, ``boxes`` the first), ``labels`` and
  ``locations`` (PadChest names), ``progression``. Sentences of absent findings
  (``abnormal: false``) usually have no ``boxes``, ``labels`` or ``locations`` key at all.
- ``master_table.csv``, shipped as ``master_table.csv.zip`` (both are read, and the folder
  ``master_table.csv/master_table.csv`` an unzip on Windows makes): one row per (study,
  sentence) with ``StudyID, ImageID, PatientID, split`` (train / validation / test),
  ``label_group``, ``PatientSex_DICOM``, ``PatientAge``, ``StudyDate_DICOM``, ...
- The images, 16-bit PNGs, shipped as ``Padchest_GR_files/PadChest_GR.zip.001`` to ``.037``
  (one zip split in parts: join and unzip them) that unpack to
  ``Padchest_GR_files/PadChest_GR/<ImageID>``. RadVLM's data layout puts the same images in
  ``images_grounding/<ImageID>`` beside the same two files; ``images=`` names another folder.

One Study per study (one frontal image each: the paper selects frontal images, so the view is
``FRONTAL``; no projection is in the files). The findings are the study's sentences in
``language`` (English by default: the publishers split the Spanish report into sentences and
translated them with GPT-4), every sentence, present or absent finding. Each of the first set
of boxes is a ``Box`` with its sentence as phrase and the sentence's first PadChest label (or
"finding"); the second set (``extra_boxes``) is kept in ``extra["extra_boxes"]`` and, with
``extra_boxes=true``, added to the boxes too (``extra["box_set"]`` says which set each box is
from). Every sentence with its labels, locations, progression and box counts is kept in
``extra["sentences"]``; the PadChest labels of the present findings in
``extra["padchest_labels"]``.

    radixpert data prepare padchest-gr --root BIMCV-Padchest-GR --out padchest_gr.jsonl
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from radixpert.data.readers import Skip, iter_csv, require_columns
from radixpert.data.splits import normalise_split
from radixpert.data.study import Box, Image, Study
from radixpert.errors import ReaderError, SplitError

logger = logging.getLogger(__name__)

MASTER_REQUIRED = ("StudyID", "ImageID", "PatientID", "split")

# Image folders, in the order they are looked for under the root.
IMAGE_FOLDERS = ("Padchest_GR_files/PadChest_GR", "images_grounding", "Padchest_GR_files")

# Box coordinates this far outside [0, 1] are rounding at the border and are clamped; boxes
# further out are left out.
_TOLERANCE = 0.01


def _zip_rows(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` of the one CSV inside a zip, checked as ``iter_csv`` checks a CSV."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [n for n in archive.namelist() if n.lower().endswith(".csv")]
            if len(members) != 1:
                raise ReaderError(f"{path}: expected one CSV inside, found {members}")
            name = f"{path}!{members[0]}"
            with archive.open(members[0]) as raw:
                text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
                reader = csv.reader(text)
                header = next(reader, None)
                if header is None:
                    raise ReaderError(f"{name}: empty file (no header row)")
                require_columns(Path(name), header, required)
                for row in reader:
                    if not row:
                        continue
                    if len(row) != len(header):
                        raise ReaderError(
                            f"{name}: line {reader.line_num}: {len(row)} fields but the "
                            f"header has {len(header)}"
                        )
                    yield reader.line_num, dict(zip(header, row, strict=True))
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError, csv.Error) as e:
        raise ReaderError(f"{path}: cannot be read as a zipped CSV ({e})") from None


def _master_rows(root: Path) -> tuple[str, Iterator[tuple[int, dict[str, str]]]]:
    plain = root / "master_table.csv"
    if plain.is_dir():  # master_table.csv.zip unpacked into a folder of the same name
        plain = plain / "master_table.csv"
    if plain.is_file():
        return str(plain), iter_csv(plain, MASTER_REQUIRED)
    zipped = root / "master_table.csv.zip"
    if zipped.is_file():
        return str(zipped), _zip_rows(zipped, MASTER_REQUIRED)
    raise ReaderError(f"{root}: no master_table.csv or master_table.csv.zip")


def _master(root: Path) -> tuple[dict[str, dict[str, Any]], list[Skip]]:
    """StudyID -> the study's fields (from its first row) and label groups; and the Skips."""
    name, rows = _master_rows(root)
    studies: dict[str, dict[str, Any]] = {}
    skips: list[Skip] = []
    for line, row in rows:
        sid = row["StudyID"].strip()
        if not sid:
            skips.append(Skip("master_table row without StudyID", f"{name}:{line}", part="field"))
            continue
        group = (row.get("label_group") or "").strip()
        if sid in studies:
            first = studies[sid]
            for key in ("ImageID", "PatientID", "split"):
                if row[key].strip() != first[key]:
                    skips.append(
                        Skip(
                            f"master_table rows of one study disagree on {key}",
                            f"{name}:{line}",
                            f"{row[key].strip()!r} vs {first[key]!r} (first kept)",
                            "field",
                        )
                    )
        else:
            first = studies[sid] = {
                **{k: row[k].strip() for k in MASTER_REQUIRED},
                "where": f"{name}:{line}",
                "label_groups": set(),
                "patient_sex": (row.get("PatientSex_DICOM") or "").strip(),
                "patient_age": (row.get("PatientAge") or "").strip(),
                "study_date": (row.get("StudyDate_DICOM") or "").strip(),
            }
        if group:
            first["label_groups"].add(group)
    return studies, skips


def _image_folder(root: Path, images: str) -> str:
    if images:
        return images.strip("/")
    for folder in IMAGE_FOLDERS:
        if (root / folder).is_dir() and any((root / folder).glob("*.png")):
            return folder
    # Not unpacked yet (or elsewhere): the release's own place; prepare reports the images
    # it does not find there.
    return IMAGE_FOLDERS[0]


def _box(value: Any) -> tuple[float, float, float, float] | str:
    """The box, clamped into [0, 1]; or why it cannot be used."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return "box is not 4 numbers"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return "box is not 4 numbers"
    if any(v < -_TOLERANCE or v > 1 + _TOLERANCE for v in value):
        return "box outside the image (0-1 coordinates)"
    x1, y1, x2, y2 = (min(1.0, max(0.0, float(v))) for v in value)
    if x2 < x1 or y2 < y1:
        return "box with x2 < x1 or y2 < y1"
    return x1, y1, x2, y2


def _boxes(values: Any, label: str, phrase: str, where: str) -> tuple[list[Box], list[Skip]]:
    """The usable boxes of one list, and a Skip for each of the others."""
    kept, skips = [], []
    for k, value in enumerate(values or []):
        box = _box(value)
        if isinstance(box, str):
            skips.append(Skip(box, f"{where}[{k}]", repr(value)[:80], "box"))
        else:
            kept.append(Box(label, *box, phrase=phrase))
    return kept, skips


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    return [str(v).strip() for v in value if str(v).strip()]


def _study(
    entry: dict[str, Any],
    meta: dict[str, Any],
    where: str,
    folder: str,
    language: str,
    extra_boxes: bool,
) -> Iterator[Study | Skip]:
    sentences, boxes, box_set, second = [], [], [], []
    findings = entry.get("findings", [])
    findings = [] if findings is None else findings
    if not isinstance(findings, list):
        yield Skip("findings is not a list", where, type(findings).__name__)
        return
    for j, finding in enumerate(findings):
        if not isinstance(finding, dict):
            yield Skip("finding is not an object", f"{where} findings[{j}]", part="field")
            continue
        text = {
            lang: " ".join(str(finding.get(f"sentence_{lang}") or "").split())
            for lang in ("en", "es")
        }
        labels = _names(finding.get("labels"))
        label, phrase, at = (
            labels[0] if labels else "finding",
            text[language],
            f"{where} findings[{j}]",
        )
        first, bad = _boxes(finding.get("boxes"), label, phrase, f"{at}.boxes")
        more, worse = _boxes(finding.get("extra_boxes"), label, phrase, f"{at}.extra_boxes")
        yield from bad + worse
        boxes += first
        box_set += ["boxes"] * len(first)
        second += [{"sentence": j, **dataclasses.asdict(b)} for b in more]
        if extra_boxes:
            boxes += more
            box_set += ["extra_boxes"] * len(more)
        sentences.append(
            {
                "en": text["en"],
                "es": text["es"],
                "abnormal": bool(finding.get("abnormal", False)),
                "labels": labels,
                "locations": _names(finding.get("locations")),
                "progression": finding.get("progression"),
                "boxes": len(first),
                "extra_boxes": len(more),
            }
        )
    try:
        split = normalise_split(meta["split"])
    except SplitError:
        yield Skip("unknown split", meta["where"], repr(meta["split"]), "field")
        split = ""
    present = {name for s in sentences if s["abnormal"] for name in s["labels"]}
    yield Study(
        id=f"padchest-gr-{entry['StudyID']}",
        dataset="padchest-gr",
        split=split,
        patient_id=meta["PatientID"],
        images=[Image(f"{folder}/{entry['ImageID']}", "FRONTAL")],
        findings=" ".join(s[language] for s in sentences if s[language]),
        boxes=boxes,
        language=language,
        extra={
            "image_id": entry["ImageID"],
            "previous_study_id": entry.get("PreviousStudyID"),
            "previous_image_id": entry.get("PreviousImageID"),
            "sentences": sentences,
            "padchest_labels": sorted(present),
            "label_groups": sorted(meta["label_groups"]),
            "extra_boxes": second,
            "box_set": box_set,
            "patient_sex": meta["patient_sex"],
            "patient_age": meta["patient_age"],
            "study_date": meta["study_date"],
        },
    ).validate(where)


def read(
    root: Path,
    *,
    reports_file: str | None = None,
    images: str = "",
    language: str = "en",
    extra_boxes: bool = False,
) -> Iterator[Study | Skip]:
    """Studies (one grounded image each) with their sentences and boxes.

    Args:
        reports_file: The grounded reports JSON, relative to the root (default: the newest
            grounded_reports_*.json).
        images: The image folder under the root (default: the first of
            Padchest_GR_files/PadChest_GR, images_grounding, Padchest_GR_files that holds
            PNG files).
        language: en or es: the sentences that make the findings and the box phrases.
        extra_boxes: Add the second set of boxes (extra_boxes) to the study's boxes; it is
            always kept in extra extra_boxes.
    """
    root = Path(root)
    if language not in ("en", "es"):
        raise ReaderError(f"padchest-gr option language={language!r}: expected en or es")
    if reports_file:
        path = root / reports_file
    else:
        found = sorted(root.glob("grounded_reports_*.json"))
        if not found:
            raise ReaderError(f"{root}: no grounded_reports_*.json")
        path = found[-1]
    master, skips = _master(root)
    yield from skips
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReaderError(f"{path}: cannot be read as JSON ({e})") from None
    if not isinstance(entries, list):
        raise ReaderError(f"{path}: expected a list of study records")
    folder = _image_folder(root, images)
    logger.info("padchest-gr images under %s", root / folder)
    seen: set[str] = set()
    for k, entry in enumerate(entries):
        where = f"{path} record {k}"
        if not isinstance(entry, dict):
            yield Skip("record is not an object", where, type(entry).__name__)
            continue
        sid, image_id = str(entry.get("StudyID") or ""), str(entry.get("ImageID") or "")
        if not sid or not image_id:
            yield Skip("record without StudyID or ImageID", where, f"{sid!r}, {image_id!r}")
            continue
        where = f"{path} record {k} (StudyID {sid})"
        if sid in seen:
            yield Skip("study listed twice", where)
            continue
        seen.add(sid)
        meta = master.get(sid)
        if meta is None:
            yield Skip("study not in master_table", where)
            continue
        if meta["ImageID"] != image_id:
            yield Skip("ImageID differs from master_table", where, f"{meta['ImageID']!r}")
            continue
        yield from _study(entry, meta, where, folder, language, extra_boxes)
