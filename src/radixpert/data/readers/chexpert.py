"""CheXpert (original release, labels only), as Stanford ships it.

Layout (tests/data/fixtures/chexpert/README.md has the sources):

    CheXpert-v1.0-small/ or CheXpert-v1.0/
        train.csv, valid.csv   Path, Sex, Age, Frontal/Lateral, AP/PA + the 14 observations
                               (1.0 / 0.0 / -1.0 / empty; valid.csv only 1.0 / 0.0)
        train/patient00001/study1/view1_frontal.jpg, valid/..., test/...
        test_labels.csv        the test set's radiologist labels (CheXlocalize's release):
                               Path (`test/patient64741/study1/view1_frontal.jpg`, no folder
                               name in front) + the 14 observations; no Sex, Age or views

`Path` starts with the release folder's name (`CheXpert-v1.0-small/train/...`; the full-size
release writes `CheXpert-v1.0/valid/...`); the part from the split folder on is the image's
place under the folder holding the CSV. `--root` may be that folder or the one above it; image
paths are relative to `--root` either way.

The CSVs have one row per image; the rows of a study are adjacent (not always in view order:
valid.csv lists `view3_lateral` before `view2_frontal` for patient64581) and carry the study's
labels, which come from its report. CheXpert ships no report text, so findings and impression
are synthesised from the labels (`radixpert.data.templates`), deterministically per study, and
marked `report_source="synthesised-from-labels"`.

Irregularities of the real files, counted as `Skip`s: `Sex` `Unknown` (one train image) and
`Age` 0 are left out of `extra`; a frontal row without AP/PA is `FRONTAL`; a Frontal/Lateral or
AP/PA value that is no view leaves the image's view unknown.

    radixpert data prepare chexpert --root CheXpert-v1.0-small -o chexpert.jsonl
    radixpert data prepare chexpert --root CheXpert -o test.jsonl files=test_labels.csv
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from radixpert.data.readers import Skip, iter_csv, parse_label, require_columns
from radixpert.data.splits import normalise_split
from radixpert.data.study import Image, Study
from radixpert.data.templates import report_from_labels
from radixpert.data.views import normalise_view
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

log = logging.getLogger(__name__)

DATASET = "chexpert"
COLUMNS = ("Path", *OBSERVATIONS)  # test_labels.csv has only these
META = ("Sex", "Age", "Frontal/Lateral", "AP/PA")  # train.csv and valid.csv have all four
# <split>/patient<N>/study<M>/view<K>_<frontal|lateral>.jpg, after any leading folders.
_PATH = re.compile(
    r"(?:^|/)(?P<rel>(?P<split>train|valid|test)/(?P<patient>patient\d+)/(?P<study>study\d+)/"
    r"view\d+_(?P<kind>frontal|lateral)\.\w+)$"
)


def chexpert_view(frontal_lateral: str, ap_pa: str) -> tuple[str, str]:
    """The view of a CheXpert (or CheXpert Plus) image from its `Frontal/Lateral` and `AP/PA`
    cells: `AP` / `PA` for frontals (`FRONTAL` when AP/PA is empty), `LL` / `RL` / `LATERAL`
    for laterals. Returns (view, problem): problem is "" or why the view is unknown ("")."""
    fl, ap = normalise_view(frontal_lateral), normalise_view(ap_pa)
    if fl is None or ap is None:
        return "", f"not a view: {frontal_lateral!r} / {ap_pa!r}"
    if fl == "FRONTAL" and ap in ("AP", "PA", ""):
        return ap or "FRONTAL", ""
    if fl == "LATERAL" and ap in ("LL", "RL", "LATERAL", ""):
        return ap or "LATERAL", ""
    if not fl:  # AP/PA alone says it, if anything
        return ap, "" if ap else "no Frontal/Lateral or AP/PA"
    return "", f"{frontal_lateral!r} with AP/PA {ap_pa!r}"


def _base(root: Path, name: str) -> tuple[Path, PurePosixPath]:
    """(folder holding the CSV, that folder relative to `root`)."""
    if (root / name).is_file():
        return root, PurePosixPath()
    # --root may be the folder holding CheXpert-v1.0-small/ (or CheXpert-v1.0/, CheXpert/).
    inner = sorted(p.parent for p in root.glob(f"CheXpert*/{name}"))
    if len(inner) == 1:
        return inner[0], PurePosixPath(inner[0].name)
    if len(inner) > 1:
        raise ReaderError(
            f"{root}: {name} found in {len(inner)} folders ({', '.join(p.name for p in inner)});"
            " give --root the one to read"
        )
    raise ReaderError(f"{root / name}: no such file (nor in a CheXpert*/ folder below {root})")


def _extra(row: dict[str, str], where: str, split_dir: str) -> tuple[dict[str, Any], list[Skip]]:
    extra: dict[str, Any] = {"publisher_split": split_dir}
    skips = []
    sex = row.get("Sex", "").strip()
    if sex in ("Female", "Male"):
        extra["sex"] = sex
    elif sex:
        skips.append(Skip("sex not Female or Male", where, repr(sex), part="field"))
    age = row.get("Age", "").strip()
    if age.isdigit() and int(age) > 0:
        extra["age"] = int(age)
    elif age:
        skips.append(Skip("age 0 or not a whole number", where, repr(age), part="field"))
    return extra, skips


def _read_file(
    root: Path, name: str, seed: int, seen: set[str], checked: set[Path]
) -> Iterator[Study | Skip]:
    base, prefix = _base(root, name)
    path = base / name
    rows: list[tuple[int, dict[str, str], re.Match[str]]] = []

    def finish() -> Iterator[Study | Skip]:
        first_line, first, m = rows[0]
        where = f"{path}: line {first_line}"
        labels = {o: parse_label(first[o], where, o) for o in OBSERVATIONS}
        for line, row, _ in rows[1:]:
            other = {o: parse_label(row[o], f"{path}: line {line}", o) for o in OBSERVATIONS}
            if other != labels:
                differ = [o for o in OBSERVATIONS if other[o] != labels[o]]
                detail = f"{', '.join(differ)}; line {first_line}"
                yield Skip("labels differ between the images of one study",
                           f"{path}: line {line}", detail)  # fmt: skip
                return
        images = []
        for line, row, mi in rows:
            if "Frontal/Lateral" in row:
                view, problem = chexpert_view(row["Frontal/Lateral"], row.get("AP/PA", ""))
            else:  # test_labels.csv: the file name says frontal or lateral
                view, problem = mi["kind"].upper(), ""
            if problem:
                yield Skip("no view", f"{path}: line {line}", problem, part="view")
            images.append(Image(path=str(prefix / mi["rel"]), view=view))
        extra, skips = _extra(first, where, m["split"])
        yield from skips
        sid = f"chexpert-{m['patient']}-{m['study']}"
        findings, impression = report_from_labels(labels, random.Random(f"{seed}:{sid}"))
        yield Study(
            id=sid,
            dataset=DATASET,
            split=normalise_split(m["split"]),
            patient_id=m["patient"],
            images=images,
            findings=findings,
            impression=impression,
            labels=labels,
            report_source="synthesised-from-labels",
            extra={**extra, "source_file": name},
        ).validate(where)

    current = ""
    for line, row in iter_csv(path, COLUMNS):
        where = f"{path}: line {line}"
        if not current and any(c in row for c in META):  # the first row: check the header
            require_columns(path, list(row), META)
        m = _PATH.search(row["Path"].strip().replace("\\", "/"))
        if m is None:
            raise ReaderError(
                f"{where}: column 'Path' = {row['Path']!r}, expected [<CheXpert folder>/]"
                "<train|valid|test>/patient<N>/study<M>/view<K>_<frontal|lateral>.jpg"
            )
        folder = base / m["split"]
        if folder not in checked:  # the image folder; each image is checked by prepare
            if not folder.is_dir():
                raise ReaderError(f"{folder}: image directory not found (for {path})")
            checked.add(folder)
        key = f"{m['patient']}/{m['study']}"
        if key != current:
            if rows:
                yield from finish()
            if key in seen:
                raise ReaderError(
                    f"{where}: column 'Path': rows of {key} are not adjacent or appear in two files"
                )
            seen.add(key)
            current, rows = key, []
        rows.append((line, row, m))
    if rows:
        yield from finish()


def read(
    root: Path,
    *,
    files: Sequence[str] = ("train.csv", "valid.csv"),
    seed: int = 0,
) -> Iterator[Study | Skip]:
    """Stream CheXpert studies with their labels and a report synthesised from them.

    Args:
        root: the CheXpert folder (`CheXpert-v1.0-small/`, `CheXpert-v1.0/`) holding the CSVs
            and the `train/`, `valid/` (and `test/`) image folders, or the folder above it.
        files: The label CSVs to read, in order: `train.csv`, `valid.csv`, and
            `test_labels.csv` for the radiologist-labelled test set. The split of each study
            is its Path's split folder.
        seed: Seed of the synthesised wording (combined with the study id).

    Yields:
        One Study per patient study, id `chexpert-patient<N>-study<M>`, views `AP` / `PA`
        (`FRONTAL` when AP/PA is empty), `LL` / `RL` / `LATERAL`; and the Skips.

    Raises:
        ReaderError: a missing or malformed file, column or value, naming the file and field.
    """
    root = Path(root)
    seen: set[str] = set()
    checked: set[Path] = set()
    n = 0
    for name in files:
        for item in _read_file(root, name, seed, seen, checked):
            n += isinstance(item, Study)
            yield item
    log.info("%s: %d studies", root, n)
