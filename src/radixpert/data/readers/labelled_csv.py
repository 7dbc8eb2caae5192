"""Any labelled-image CSV a user maps to the 14 CheXpert observations (e.g. NIH ChestX-ray14).

    radixpert data prepare labelled-csv --root data/nih -o nih.jsonl csv=labels.csv \\
        path_column=Image patient_column=PatientID \\
        "map=Effusion:Pleural Effusion;Mass:Lung Lesion;Nodule:Lung Lesion"

Each row is one image and one Study. `map` names, for each CSV column used, the observation it
feeds (`column:Observation;...`; a column named exactly like an observation maps itself).
Cells hold 1 / 0 / -1 (also 1.0 / 0.0 / -1.0) or are empty (not mentioned); several columns
feeding one observation combine as positive > uncertain > negative. Observations no column
feeds stay None. The CSV ships no reports: findings and impression are synthesised from the
labels and marked `report_source="synthesised-from-labels"`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from radixpert.data.readers import iter_csv, parse_label
from radixpert.data.study import Image, Study
from radixpert.errors import ReaderError
from radixpert.vocab import OBSERVATIONS

_RANK = {1: 3, -1: 2, 0: 1, None: 0}  # positive > uncertain > negative > not mentioned


def parse_map(spec: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        column, sep, obs = item.partition(":")
        if not sep or obs.strip() not in OBSERVATIONS:
            raise ReaderError(
                f"map: {item!r} is not column:Observation with one of the 14 "
                f"observations ({', '.join(OBSERVATIONS)})"
            )
        out[column.strip()] = obs.strip()
    return out


def read(
    root: Path,
    *,
    csv: str = "labels.csv",
    path_column: str = "path",
    patient_column: str = "",
    split_column: str = "",
    view_column: str = "",
    map: str = "",
    dataset: str = "labelled-csv",
    seed: int = 0,
) -> Iterator[Study]:
    """Studies from a labelled-image CSV with user-mapped label columns."""
    from radixpert.data.templates import report_from_labels

    path = Path(root) / csv
    mapping = parse_map(map)
    required = [path_column, *mapping, *(c for c in (patient_column, split_column,
                                                     view_column) if c)]  # fmt: skip
    first = True
    for line, row in iter_csv(path, required):
        if first:  # columns named like an observation map themselves
            mapping.update({c: c for c in row if c in OBSERVATIONS and c not in mapping})
            if not mapping:
                raise ReaderError(
                    f"{path}: no label column: give the option map=column:Observation"
                )
            first = False
        where = f"{path}: line {line}"
        labels: dict[str, int | None] = {o: None for o in OBSERVATIONS}
        for column, obs in mapping.items():
            v = parse_label(row[column], where, column)
            if _RANK[v] > _RANK[labels[obs]]:
                labels[obs] = v
        image = row[path_column].strip()
        if not image:
            raise ReaderError(f"{where}: empty {path_column!r}")
        findings, impression = report_from_labels(labels, random.Random(f"{seed}:{image}"))
        yield Study(
            id=f"{dataset}-{Path(image).with_suffix('').as_posix().replace('/', '-')}",
            dataset=dataset,
            split=row.get(split_column, "").strip() if split_column else "",
            patient_id=row.get(patient_column, "").strip() if patient_column else "",
            images=[Image(image, row.get(view_column, "").strip() if view_column else "")],
            findings=findings,
            impression=impression,
            labels=labels,
            report_source="synthesised-from-labels",
        ).validate(where)
