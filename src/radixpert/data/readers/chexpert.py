"""CheXpert (original release, labels only), as Stanford ships it.

Layout under `root` (`CheXpert-v1.0-small/` or `CheXpert-v1.0/`):

    train.csv, valid.csv   Path, Sex, Age, Frontal/Lateral, AP/PA + the 14 observations
                           (1.0 / 0.0 / -1.0 / empty)
    train/patient00001/study1/view1_frontal.jpg, ...   (Path starts with the directory name:
                           CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg)

The CSVs have one row per image; rows of a study are adjacent and carry the study's labels
(they come from the study's report). CheXpert ships no report text, so findings and
impression are synthesised from the labels (`radixpert.data.templates`), deterministically
per study, and marked `report_source="synthesised-from-labels"`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from radixpert.data.readers import iter_csv, parse_label
from radixpert.data.splits import normalise_split
from radixpert.data.study import Image, Study
from radixpert.data.templates import report_from_labels
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

log = logging.getLogger(__name__)

DATASET = "chexpert"
COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS)
FRONTAL_LATERAL = ("Frontal", "Lateral")
AP_PA = ("AP", "PA", "LL", "RL", "")


def _view(row: dict[str, str], where: str) -> str:
    fl, ap = row["Frontal/Lateral"], row["AP/PA"]
    if fl not in FRONTAL_LATERAL:
        raise ReaderError(
            f"{where}: column 'Frontal/Lateral' = {fl!r}, expected Frontal or Lateral"
        )
    if ap not in AP_PA:
        raise ReaderError(f"{where}: column 'AP/PA' = {ap!r}, expected AP, PA, LL, RL or empty")
    # Lateral rows leave AP/PA empty; MIMIC names that view LATERAL, so the views match. A
    # frontal row without AP/PA is a frontal image whose direction is not given.
    return ap or ("LATERAL" if fl == "Lateral" else "FRONTAL")


def _rel_path(value: str, split_dir: str, where: str) -> PurePosixPath:
    """The image path relative to `root`: Path minus its leading dataset directory."""
    parts = PurePosixPath(value).parts
    if len(parts) != 5 or parts[1] != split_dir or not parts[2].startswith("patient"):
        raise ReaderError(
            f"{where}: column 'Path' = {value!r}, expected "
            f"<CheXpert dir>/{split_dir}/patient<N>/study<M>/view<K>_<frontal|lateral>.jpg"
        )
    return PurePosixPath(*parts[1:])


def _read_file(
    root: Path, name: str, check_images: bool, seed: int, seen: set[str], prefix: PurePosixPath
) -> Iterator[Study]:
    path = root / name
    split_dir = path.stem  # train.csv -> train/, valid.csv -> valid/
    if check_images and not (root / split_dir).is_dir():
        raise ReaderError(f"{root / split_dir}: image directory not found (for {path})")

    def finish(sid: str, rows: list[tuple[int, dict[str, str], PurePosixPath]]) -> Study:
        first_line, first, rel = rows[0]
        where = f"{path}: line {first_line}"
        labels = {o: parse_label(first[o], where, o) for o in OBSERVATIONS}
        for line, row, _ in rows[1:]:
            for o in OBSERVATIONS:
                if parse_label(row[o], f"{path}: line {line}", o) != labels[o]:
                    raise ReaderError(
                        f"{path}: line {line}: column {o!r} = {row[o]!r} differs from line "
                        f"{first_line} of the same study"
                    )
        images = []
        for line, row, rel_i in rows:
            w = f"{path}: line {line}"
            images.append(Image(path=str(prefix / rel_i), view=_view(row, w)))
        findings, impression = report_from_labels(labels, random.Random(f"{seed}:{sid}"))
        extra: dict[str, Any] = {"publisher_split": split_dir, "sex": first["Sex"]}
        age = first["Age"]
        if age:
            if not age.isdigit():
                raise ReaderError(f"{where}: column 'Age' = {age!r} is not a whole number")
            extra["age"] = int(age)
        return Study(
            id=sid,
            dataset=DATASET,
            split=normalise_split(split_dir),
            patient_id=rel.parts[1],
            images=images,
            findings=findings,
            impression=impression,
            labels=labels,
            report_source="synthesised-from-labels",
            extra=extra,
        )

    current: str | None = None
    rows: list[tuple[int, dict[str, str], PurePosixPath]] = []
    for line, row in iter_csv(path, COLUMNS):
        where = f"{path}: line {line}"
        rel = _rel_path(row["Path"], split_dir, where)
        sid = f"chexpert-{rel.parts[1]}-{rel.parts[2]}"
        if sid != current:
            if current is not None:
                yield finish(current, rows)
            if sid in seen:
                raise ReaderError(
                    f"{where}: column 'Path': rows of {rel.parts[1]}/{rel.parts[2]} are not "
                    "adjacent or appear in two files"
                )
            seen.add(sid)
            current, rows = sid, []
        rows.append((line, row, rel))
    if current is not None:
        yield finish(current, rows)


def read(
    root: Path,
    *,
    files: Sequence[str] = ("train.csv", "valid.csv"),
    seed: int = 0,
) -> Iterator[Study]:
    """Stream CheXpert studies with their labels and a report synthesised from them.

    Args:
        root: the CheXpert directory (`CheXpert-v1.0-small/` or `CheXpert-v1.0/`) holding the
            CSVs and the `train/` and `valid/` image folders, or the folder holding it.
        files: the label CSVs to read, in order; each file's stem is its split and image
            folder.
        seed: seed of the synthesised wording (combined with the study id).

    Yields:
        One Study per patient study, id `chexpert-patient<N>-study<M>`, views `AP`/`PA`/`LL`/
        `RL` from the AP/PA column, `LATERAL` for lateral images without one.

    Raises:
        ReaderError: a missing or malformed file, column or value, naming the file and field.
    """
    root = Path(root)
    prefix = PurePosixPath(".")
    if files and not (root / files[0]).is_file():
        # --root may be the folder holding CheXpert-v1.0-small/ (the paths in the CSVs start
        # with that folder's name); image paths then stay relative to --root.
        inner = sorted(p.parent for p in root.glob(f"CheXpert-v1.0*/{files[0]}"))
        if len(inner) == 1:
            prefix = PurePosixPath(inner[0].name)
            root = inner[0]
    seen: set[str] = set()
    n = 0
    for name in files:
        for study in _read_file(root, name, True, seed, seen, prefix):
            n += 1
            yield study
    log.info("%s: %d studies", root, n)
