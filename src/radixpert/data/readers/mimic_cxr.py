"""MIMIC-CXR-JPG 2.0.0 / 2.1.0 with the MIMIC-CXR free-text reports, as PhysioNet ships them.

Layout under `root` (MIMIC-CXR-JPG):

    files/p1X/p<subject_id>/s<study_id>/<dicom_id>.jpg
    mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, StudyDate, ...
    mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split (train/validate/test)
    mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id + 14 observations (1.0/0.0/-1.0/empty)
    mimic-cxr-2.0.0-negbio.csv.gz     same columns, NegBio labeller

and under `reports_root` (MIMIC-CXR, the DICOM release; often unpacked beside the JPGs):

    files/p1X/p<subject_id>/s<study_id>.txt

One `Study` per study_id, with all its images. The metadata file is streamed and grouped by
study (PhysioNet ships it sorted by subject and study, so a study's rows are adjacent); only
a compact per-study index of the split and the labels is held in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from radixpert.data.readers import Skip, iter_csv, parse_label
from radixpert.data.reports import split_sections
from radixpert.data.study import Image, Study
from radixpert.data.views import normalise_view
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

log = logging.getLogger(__name__)

DATASET = "mimic-cxr"
PREFIX = "mimic-cxr-2.0.0"  # 2.1.0 still ships its CSVs under the 2.0.0 names
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
SPLITS = ("train", "validate", "test")
LABELLERS = ("chexpert", "negbio")

# Labels are packed one byte per observation so that 227k studies stay a few tens of MB.
_PACK = {1: 1, 0: 2, -1: 3, None: 0}
_UNPACK = {v: k for k, v in _PACK.items()}


def _csv_path(root: Path, name: str) -> Path:
    """The publisher's `.csv.gz`; an unpacked `.csv` beside it is accepted as well."""
    gz = root / f"{PREFIX}-{name}.csv.gz"
    if gz.is_file():
        return gz
    plain = root / f"{PREFIX}-{name}.csv"
    if plain.is_file():
        return plain
    raise ReaderError(f"{gz}: no such file (MIMIC-CXR-JPG {name} table)")


def _study_int(value: str, where: str, column: str) -> int:
    if not value.isdigit():
        raise ReaderError(f"{where}: column {column!r} = {value!r} is not a numeric id")
    return int(value)


def _read_splits(path: Path) -> dict[int, str]:
    """study_id -> split; the file is per image, and all images of a study share a split."""
    splits: dict[int, str] = {}
    for line, row in iter_csv(path, SPLIT_COLUMNS):
        where = f"{path}: line {line}"
        split = row["split"]
        if split not in SPLITS:
            raise ReaderError(
                f"{where}: column 'split' = {split!r}, expected one of {', '.join(SPLITS)}"
            )
        study = _study_int(row["study_id"], where, "study_id")
        # Interning through SPLITS keeps one string object per split name.
        split = SPLITS[SPLITS.index(split)]
        if splits.setdefault(study, split) != split:
            raise ReaderError(
                f"{where}: column 'split': study {study} is in both {splits[study]!r} and {split!r}"
            )
    return splits


def _read_labels(path: Path) -> dict[int, bytes]:
    """study_id -> the 14 labels packed into bytes (see `_PACK`)."""
    labels: dict[int, bytes] = {}
    for line, row in iter_csv(path, ("subject_id", "study_id", *OBSERVATIONS)):
        where = f"{path}: line {line}"
        study = _study_int(row["study_id"], where, "study_id")
        if study in labels:
            raise ReaderError(f"{where}: column 'study_id': study {study} has a second row")
        labels[study] = bytes(_PACK[parse_label(row[o], where, o)] for o in OBSERVATIONS)
    return labels


def _unpack(packed: bytes | None) -> dict[str, int | None]:
    if packed is None:
        return {}  # the labeller produced no row for this study: unlabelled, not negative
    return {o: _UNPACK[b] for o, b in zip(OBSERVATIONS, packed)}


def _study_rows(path: Path) -> Iterator[tuple[str, list[tuple[int, dict[str, str]]]]]:
    """Group the metadata rows by study_id; a study whose rows are not adjacent is an error,
    since grouping them would need the whole table in memory."""
    seen: set[int] = set()
    current: str | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    for line, row in iter_csv(path, METADATA_COLUMNS):
        where = f"{path}: line {line}"
        study = row["study_id"]
        if study != current:
            if current is not None:
                yield current, rows
            sid = _study_int(study, where, "study_id")
            if sid in seen:
                raise ReaderError(
                    f"{where}: column 'study_id': rows of study {study} are not adjacent "
                    "(the file must be grouped by study, as PhysioNet ships it)"
                )
            seen.add(sid)
            current, rows = study, []
        rows.append((line, row))
    if current is not None:
        yield current, rows


def _report_path(reports_root: Path, subject: str, study: str) -> Path:
    return reports_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"


def read(
    root: Path,
    *,
    reports_root: Path | None = None,
    views: Collection[str] | None = None,
    labels: str | None = "chexpert",
    missing_report: str = "skip",
) -> Iterator[Study | Skip]:
    """Stream the studies of MIMIC-CXR-JPG, with their report sections, split and labels.

    Args:
        root: the MIMIC-CXR-JPG directory (holding `files/` and the `mimic-cxr-2.0.0-*.csv.gz`).
        reports_root: the directory holding the report `files/pNN/p<subject>/s<study>.txt`;
            defaults to `root`.
        views: keep only images whose view is one of these (e.g. `PA,AP`; spellings are
            normalised by `radixpert.data.views`, so `antero-posterior` is AP); a study left
            without images is skipped and counted. None keeps all.
        labels: `"chexpert"`, `"negbio"` (the labeller whose table fills `Study.labels`), or
            None for no labels. A study without a row in that table gets `{}`.
        missing_report: `"skip"` (default): a study without its report file is skipped and
            counted; `"error"` raises.

    Yields:
        One Study per study_id, id `mimic-<study_id>`, in the metadata file's order.

    Raises:
        ReaderError: a missing or malformed file; the message names the file and the field.
    """
    root = Path(root)
    reports_root = Path(reports_root) if reports_root is not None else root
    if missing_report not in ("error", "skip"):
        raise ValueError(f"missing_report = {missing_report!r}, expected 'error' or 'skip'")
    if labels is not None and labels not in LABELLERS:
        raise ValueError(f"labels = {labels!r}, expected one of {', '.join(LABELLERS)} or None")
    if not (root / "files").is_dir():
        raise ReaderError(f"{root / 'files'}: image directory not found (MIMIC-CXR-JPG files/)")
    if not (reports_root / "files").is_dir():
        raise ReaderError(
            f"{reports_root / 'files'}: report directory not found (MIMIC-CXR files/ with "
            "s<study_id>.txt; pass reports_root)"
        )
    keep_views = None if views is None else frozenset(normalise_view(v) or v for v in views)
    metadata = _csv_path(root, "metadata")
    split_path = _csv_path(root, "split")
    splits = _read_splits(split_path)
    label_index = _read_labels(_csv_path(root, labels)) if labels is not None else {}

    n_yielded = n_no_report = n_no_view = 0
    for study, rows in _study_rows(metadata):
        first_line, first = rows[0]
        where = f"{metadata}: line {first_line}"
        subject = first["subject_id"]
        _study_int(subject, where, "subject_id")
        images: list[Image] = []
        dicom_ids: list[str] = []
        for line, row in rows:
            if row["subject_id"] != subject:
                raise ReaderError(
                    f"{metadata}: line {line}: column 'subject_id' = {row['subject_id']!r}, "
                    f"but study {study} belongs to subject {subject}"
                )
            raw = row["ViewPosition"]
            view = normalise_view(raw)
            if view is None:
                yield Skip("not a view", f"{metadata}: line {line}", repr(raw), part="view")
                view = ""
            if keep_views is not None and view not in keep_views:
                continue
            rel = f"files/p{subject[:2]}/p{subject}/s{study}/{row['dicom_id']}.jpg"
            images.append(Image(path=rel, view=view))
            dicom_ids.append(row["dicom_id"])
        if not images:
            n_no_view += 1
            yield Skip(
                "no image of the chosen views", where, f"views={','.join(sorted(views or ()))}"
            )
            continue
        split = splits.get(int(study))
        if split is None:
            yield Skip("study not in the split file", where, f"{split_path.name}: {study}")
            continue
        report = _report_path(reports_root, subject, study)
        try:
            text = report.read_text(encoding="utf-8")
        except FileNotFoundError:
            if missing_report == "skip":
                n_no_report += 1
                yield Skip("no report file", where, str(report.relative_to(reports_root)))
                continue
            raise ReaderError(
                f"{report}: report of study {study} not found (metadata {where}, column "
                "'study_id'); pass missing_report='skip' to drop such studies"
            ) from None
        except UnicodeDecodeError as e:
            raise ReaderError(f"{report}: not UTF-8 text ({e})") from None
        sections = split_sections(text)
        extra: dict[str, Any] = {"subject_id": subject, "study_id": study, "dicom_ids": dicom_ids}
        for column, key in (
            ("StudyDate", "study_date"),
            ("StudyTime", "study_time"),
            ("PerformedProcedureStepDescription", "procedure"),
        ):
            if first.get(column):
                extra[key] = first[column]
        yield Study(
            id=f"mimic-{study}",
            dataset=DATASET,
            split=split,
            patient_id=subject,
            images=images,
            indication=sections["indication"],
            comparison=sections["comparison"],
            findings=sections["findings"],
            impression=sections["impression"],
            labels=_unpack(label_index.get(int(study))),
            extra=extra,
        )
        n_yielded += 1
    if n_no_report:
        log.warning("%s: skipped %d studies without a report file", reports_root, n_no_report)
    if n_no_view:
        log.info("%s: dropped %d studies with no image of views %s", root, n_no_view, views)
    log.info("%s: %d studies", root, n_yielded)
