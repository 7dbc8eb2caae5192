"""MIMIC-CXR-JPG 2.0.0 / 2.1.0 with the MIMIC-CXR free-text reports, as PhysioNet ships them.

Layout under `root` (MIMIC-CXR-JPG; both versions name their tables `mimic-cxr-2.0.0-*`, gzip,
and a mirror that unpacked them to `.csv` is read as well):

    files/p1X/p<subject_id>/s<study_id>/<dicom_id>.jpg
    mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, subject_id, study_id, ViewPosition, StudyDate, ...
    mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split (train/validate/test)
    mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id + 14 observations (1.0/0.0/-1.0/empty)
    mimic-cxr-2.0.0-negbio.csv.gz     same columns, NegBio labeller
    mimic-cxr-2.1.0-test-set-labeled.csv   2.1.0 only: radiologists' labels of test studies

and under `reports_root` (MIMIC-CXR, the DICOM release; often unpacked beside the JPGs):

    files/p1X/p<subject_id>/s<study_id>.txt

One `Study` per study_id, with all its images, streamed. PhysioNet writes the metadata sorted
by subject and study (MIT-LCP/mimic-cxr `dcm/create-mimic-cxr-jpg-metadata.ipynb`), so a
study's rows are adjacent; a re-saved copy whose rows of one study lie apart is read the same,
because a first pass counts each study's rows and a study is complete at its last row. In
memory: that count, the split and the packed labels per study.

What the release holds that a record cannot use is a counted `Skip` (its reason below), never
a crash: a study without a report file, with an empty report, absent from the split file or in
two splits; an image row of another subject, without a dicom_id or repeated; a repeated label
row (identical: one kept; differing: the study is left unlabelled); a ViewPosition that is not
a view; a report without findings and impression (the study is kept). A missing or broken
*file* is a `ReaderError` naming the file and the column.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from radixpert.data.readers import Skip, iter_csv, parse_label, require_columns
from radixpert.data.reports import split_sections
from radixpert.data.splits import normalise_split
from radixpert.data.study import Image, Study
from radixpert.data.views import normalise_view
from radixpert.errors import ReaderError, UsageError
from radixpert.vocab import OBSERVATIONS

log = logging.getLogger(__name__)

DATASET = "mimic-cxr"
PREFIX = "mimic-cxr-2.0.0"  # 2.1.0 still ships its CSVs under the 2.0.0 names
TEST_SET_LABELS = "mimic-cxr-2.1.0-test-set-labeled"
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
SPLITS = ("train", "validate", "test")
LABELLERS = ("chexpert", "negbio")
# The test set's file names one observation differently from the labellers' tables.
_TEST_SET_NAMES = {"Lung Opacity": "Airspace Opacity"}

# Labels are packed one byte per observation so that 227k studies stay a few tens of MB; an
# empty value marks a study whose label rows disagree (left unlabelled).
_PACK = {1: 1, 0: 2, -1: 3, None: 0}
_UNPACK = {v: k for k, v in _PACK.items()}
_CONFLICT = b""


def _csv_path(root: Path, name: str, prefix: str = PREFIX) -> Path:
    """The publisher's table, `.csv.gz` or an unpacked `.csv` beside it."""
    for suffix in (".csv.gz", ".csv"):
        path = root / f"{prefix}-{name}{suffix}"
        if path.is_file():
            return path
    raise ReaderError(f"{root / f'{prefix}-{name}.csv.gz'}: no such file (MIMIC-CXR-JPG {name})")


def _study_int(value: str, where: str, column: str) -> int:
    if not value.strip().isdigit():
        raise ReaderError(f"{where}: column {column!r} = {value!r} is not a numeric id")
    return int(value)


def _read_splits(path: Path) -> tuple[dict[int, str], dict[int, set[str]]]:
    """study_id -> split, and study_id -> the splits of a study whose images disagree.

    The file is per image; all images of a study share its split in the release.
    """
    splits: dict[int, str] = {}
    conflicts: dict[int, set[str]] = {}
    for line, row in iter_csv(path, SPLIT_COLUMNS):
        where = f"{path}: line {line}"
        split = row["split"].strip()
        if split not in SPLITS:
            raise ReaderError(
                f"{where}: column 'split' = {split!r}, expected one of {', '.join(SPLITS)}"
            )
        study = _study_int(row["study_id"], where, "study_id")
        # Interning through SPLITS keeps one string object per split name.
        split = SPLITS[SPLITS.index(split)]
        known = splits.setdefault(study, split)
        if known != split:
            conflicts.setdefault(study, {known}).add(split)
    return splits, conflicts


def _read_labels(
    path: Path, key_columns: Sequence[str], names: dict[str, str] | None = None
) -> tuple[dict[int, bytes], list[Skip]]:
    """study_id -> the 14 labels packed into bytes (see `_PACK`), and the repeated rows.

    Args:
        path: the labeller's table (or the test set's).
        key_columns: the id columns the file must have.
        names: observation -> the file's column, where the file names it otherwise.
    """
    names = names or {}
    labels: dict[int, bytes] = {}
    first_line: dict[int, int] = {}
    skips: list[Skip] = []
    columns: dict[str, str] | None = None
    for line, row in iter_csv(path, key_columns):
        if columns is None:
            columns = {o: names[o] if names.get(o) in row else o for o in OBSERVATIONS}
            require_columns(path, list(row), [*key_columns, *columns.values()])
        where = f"{path}: line {line}"
        study = _study_int(row["study_id"], where, "study_id")
        packed = bytes(_PACK[parse_label(row[c], where, c)] for c in columns.values())
        if study not in labels:
            labels[study], first_line[study] = packed, line
        elif labels[study] == packed or labels[study] == _CONFLICT:
            same = "same values" if labels[study] == packed else "study already unlabelled"
            skips.append(
                Skip(
                    "repeated label row",
                    where,
                    f"study {study}, as line {first_line[study]}: {same}",
                    part="label",
                )
            )
        else:
            labels[study] = _CONFLICT
            skips.append(
                Skip(
                    "conflicting label rows",
                    where,
                    f"study {study}: line {first_line[study]} differs; study left unlabelled",
                    part="label",
                )
            )
    return labels, skips


def _unpack(packed: bytes | None) -> dict[str, int | None]:
    if not packed:  # no row (unlabelled, not negative), or rows that disagree
        return {}
    return {o: _UNPACK[b] for o, b in zip(OBSERVATIONS, packed)}


def _study_rows(path: Path) -> Iterator[tuple[int, list[tuple[int, dict[str, str]]]]]:
    """The metadata rows grouped by study, each group yielded at its study's last row.

    A first pass counts the rows of each study, so a study whose rows are apart is still one
    group; in the publisher's sorted file each group is yielded as soon as its study ends.
    """
    counts: Counter[int] = Counter()
    for line, row in iter_csv(path, METADATA_COLUMNS):
        counts[_study_int(row["study_id"], f"{path}: line {line}", "study_id")] += 1
    pending: dict[int, list[tuple[int, dict[str, str]]]] = {}
    for line, row in iter_csv(path, METADATA_COLUMNS):
        study = int(row["study_id"])
        rows = pending.setdefault(study, [])
        rows.append((line, row))
        if len(rows) == counts[study]:
            yield study, pending.pop(study)


def _report_path(reports_root: Path, subject: str, study: int) -> Path:
    return reports_root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"


def _view(row: dict[str, str], where: str) -> tuple[str, Skip | None]:
    """The normalised view of a metadata row: ViewPosition; where that is empty, the DICOM
    ViewCodeSequence's meaning (`antero-posterior`, `left lateral`, ...) when the file has it."""
    raw = row["ViewPosition"]
    view = normalise_view(raw)
    if view is None:
        return "", Skip("not a view", where, f"ViewPosition {raw!r}", part="view")
    if not view:
        meaning = row.get("ViewCodeSequence_CodeMeaning", "")
        view = normalise_view(meaning)
        if view is None:
            detail = f"ViewPosition empty, ViewCodeSequence_CodeMeaning {meaning!r}"
            return "", Skip("not a view", where, detail, part="view")
    return view, None


def _chosen_views(views: Sequence[str] | None) -> frozenset[str] | None:
    if views is None:
        return None
    chosen = set()
    for v in views:
        view = normalise_view(v)
        if view is None:
            raise UsageError(f"mimic-cxr option views: {v!r} is not a view (e.g. PA,AP,LATERAL)")
        chosen.add(view)
    return frozenset(chosen)


def read(
    root: Path,
    *,
    reports_root: Path | None = None,
    views: Sequence[str] | None = None,
    splits: Sequence[str] | None = None,
    labels: str | None = "chexpert",
    test_set_labels: bool = False,
    missing_report: str = "skip",
) -> Iterator[Study | Skip]:
    """Stream the studies of MIMIC-CXR-JPG, with their report sections, split and labels.

    Args:
        root: the MIMIC-CXR-JPG directory (holding `files/` and the `mimic-cxr-2.0.0-*.csv.gz`).
        reports_root: the directory holding the report `files/pNN/p<subject>/s<study>.txt`;
            defaults to `root`.
        views: keep only images of these views (e.g. `PA,AP`), in any spelling
            `radixpert.data.views` knows (`antero-posterior` is AP; `unknown` selects images
            without a view); images are compared by their normalised view, so `PA` also takes
            nothing else. A study left without images is not read. None keeps all.
        splits: keep only the studies of these official splits (e.g. `train,validate`;
            `val` is `validate`). None keeps all.
        labels: `chexpert`, `negbio` (the labeller whose table fills `Study.labels`), or none.
            A study without a row in that table gets no labels (unlabelled, not negative).
        test_set_labels: take the labels of the studies in `mimic-cxr-2.1.0-test-set-labeled.csv`
            (2.1.0 only: radiologists' labels of test studies) from that file instead.
        missing_report: `skip` (default): a study without its report file is skipped and
            counted; `error` raises.

    Yields:
        One Study per study_id, id `mimic-<study_id>`, `patient_id` the subject_id as the
        metadata writes it (`10000032`), in the metadata file's order; and a `Skip` for each
        thing left out.

    Raises:
        ReaderError: a missing or malformed file; the message names the file and the field.
        UsageError: an option value this reader cannot use.
    """
    root = Path(root)
    reports_root = Path(reports_root) if reports_root is not None else root
    if missing_report not in ("error", "skip"):
        raise UsageError(f"mimic-cxr option missing_report={missing_report!r}: error or skip")
    if labels is not None and labels not in LABELLERS:
        raise UsageError(
            f"mimic-cxr option labels={labels!r}: expected one of {', '.join(LABELLERS)} or none"
        )
    keep_views = _chosen_views(views)
    keep_splits = None if splits is None else frozenset(normalise_split(s) for s in splits)
    if not (root / "files").is_dir():
        raise ReaderError(f"{root / 'files'}: image directory not found (MIMIC-CXR-JPG files/)")
    if not (reports_root / "files").is_dir():
        raise ReaderError(
            f"{reports_root / 'files'}: report directory not found (MIMIC-CXR files/ with "
            "s<study_id>.txt; pass reports_root)"
        )
    metadata = _csv_path(root, "metadata")
    split_path = _csv_path(root, "split")
    split_of, split_conflicts = _read_splits(split_path)
    label_index: dict[int, bytes] = {}
    if labels is not None:
        label_index, skips = _read_labels(_csv_path(root, labels), ("subject_id", "study_id"))
        yield from skips
    test_index: dict[int, bytes] = {}
    if test_set_labels:
        test_path = _csv_path(root, "test-set-labeled", prefix="mimic-cxr-2.1.0")
        test_index, skips = _read_labels(test_path, ("study_id",), _TEST_SET_NAMES)
        yield from skips

    n_yielded = n_other_view = n_other_split = 0
    for study, rows in _study_rows(metadata):
        # The study's subject is the one most of its rows name (the first row's on a tie), so
        # that a mis-keyed row is the odd one out whatever the row order.
        subjects = Counter(row["subject_id"].strip() for _, row in rows)
        subject = subjects.most_common(1)[0][0]
        first_line, first = next(r for r in rows if r[1]["subject_id"].strip() == subject)
        where = f"{metadata}: line {first_line}"
        if not subject.isdigit():
            yield Skip("subject_id not numeric", where, f"study {study}: {subject!r}")
            continue
        images: list[Image] = []
        dicom_ids: list[str] = []
        n_unusable = 0
        for line, row in rows:
            here = f"{metadata}: line {line}"
            dicom = row["dicom_id"].strip()
            problem = ""
            if row["subject_id"].strip() != subject:
                problem, detail = "image row of another subject", f"{row['subject_id']!r}"
            elif not dicom:
                problem, detail = "image row without dicom_id", "dicom_id ''"
            elif dicom in dicom_ids:
                problem, detail = "repeated image row", dicom
            if problem:
                n_unusable += 1
                yield Skip(problem, here, f"{detail}; study {study} of subject {subject}", "image")
                continue
            view, skip = _view(row, here)
            if skip is not None:
                yield skip
            if keep_views is not None and view not in keep_views:
                continue
            images.append(
                Image(path=f"files/p{subject[:2]}/p{subject}/s{study}/{dicom}.jpg", view=view)
            )
            dicom_ids.append(dicom)
        if not images:
            if n_unusable == len(rows):
                yield Skip("no usable image row", where, f"study {study}")
            else:
                n_other_view += 1
            continue
        if study in split_conflicts:
            both = "/".join(sorted(split_conflicts[study]))
            yield Skip("study in two splits", where, f"{split_path.name}: {both}")
            continue
        split = split_of.get(study)
        if split is None:
            yield Skip("study not in the split file", where, f"{split_path.name}: {study}")
            continue
        if keep_splits is not None and split not in keep_splits:
            n_other_split += 1
            continue
        report = _report_path(reports_root, subject, study)
        try:
            text = report.read_text(encoding="utf-8")
        except FileNotFoundError:
            if missing_report == "error":
                raise ReaderError(
                    f"{report}: report of study {study} not found (metadata {where}, column "
                    "'study_id'); pass missing_report=skip to count such studies instead"
                ) from None
            yield Skip("no report file", where, str(report.relative_to(reports_root)))
            continue
        except UnicodeDecodeError as e:
            yield Skip("report not UTF-8", str(report), str(e))
            continue
        if not text.strip():
            yield Skip("empty report", str(report), f"study {study}")
            continue
        sections = split_sections(text)
        extra: dict[str, Any] = {
            "subject_id": subject,
            "study_id": str(study),
            "dicom_ids": dicom_ids,
        }
        for column, key in (
            ("StudyDate", "study_date"),
            ("StudyTime", "study_time"),
            ("PerformedProcedureStepDescription", "procedure"),
        ):
            if first.get(column, "").strip():
                extra[key] = first[column].strip()
        if sections.get("history") and sections["history"] != sections["indication"]:
            extra["history"] = sections["history"]
        # The sections a Study has no field for (an addendum or wet read is "other") are kept,
        # so nothing the radiologist wrote is dropped.
        for key in ("technique", "other", "last_paragraph"):
            if sections.get(key):
                extra[key] = sections[key]
        if not sections["findings"] and not sections["impression"]:
            yield Skip("no findings or impression", str(report), f"study {study}", "field")
        if study in test_index:
            packed, source = test_index[study], TEST_SET_LABELS
        else:
            packed, source = label_index.get(study), f"{PREFIX}-{labels}"
        if packed:
            extra["labels_from"] = source
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
            labels=_unpack(packed),
            extra=extra,
        )
        n_yielded += 1
    if n_other_view:
        log.info("%s: %d studies have no image of views %s", root, n_other_view, views)
    if n_other_split:
        log.info("%s: %d studies are in other splits than %s", root, n_other_split, splits)
    log.info("%s: %d studies", root, n_yielded)
