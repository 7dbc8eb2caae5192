"""Any labelled-image CSV a user maps to the 14 CheXpert observations (e.g. NIH ChestX-ray14).

One column per label:

    radixpert data prepare labelled-csv --root data/chest -o chest.jsonl csv=labels.csv \\
        path_column=Image patient_column=PatientID \\
        "map=Effusion:Pleural Effusion;Mass:Lung Lesion;Nodule:Lung Lesion"

Or one column listing the findings, as NIH ChestX-ray14 ships `Data_Entry_2017.csv`
(`Image Index,Finding Labels,Follow-up #,Patient ID,...`, `Finding Labels` pipe-joined:
`Cardiomegaly|Effusion`, `No Finding`; images in `images_001/images/` ... `images_012/images/`):

    radixpert data prepare labelled-csv --root data/nih -o nih.jsonl \\
        csv=Data_Entry_2017.csv "path_column=Image Index" "patient_column=Patient ID" \\
        "view_column=View Position" "labels_column=Finding Labels" "image_folder=images_*/images" \\
        "map=Effusion:Pleural Effusion;Mass:Lung Lesion;Nodule:Lung Lesion" dataset=nih

Each row is one image and one Study. With label columns, `map` names, for each CSV column used,
the observation it feeds (`column:Observation;...`; a column named exactly like an observation
maps itself). Cells hold 1 / 0 / -1 (also 1.0 / 0.0 / -1.0) or are empty (not mentioned);
several columns feeding one observation combine as positive > uncertain > negative.
Observations no column feeds stay None. With `labels_column`, `map` maps the listed *names*
(a name spelled like an observation maps itself: NIH's Atelectasis, Cardiomegaly,
Consolidation, Edema, Pneumonia, Pneumothorax, No Finding); the list is taken as complete, so
every observation some name of the file feeds is 0 when none of its names is listed, and the
observations no name feeds stay None. Names that feed no
observation (NIH's Emphysema, Fibrosis, Hernia, Infiltration, Pleural_Thickening) are kept in
`extra["findings"]` with the others and counted once per name.
The CSV ships no reports: findings and impression are synthesised from the
labels and marked `report_source="synthesised-from-labels"`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

from radixpert.data.readers import Skip, iter_csv, parse_label
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
    labels_column: str = "",
    separator: str = "|",
    image_folder: str = "",
    dataset: str = "labelled-csv",
    seed: int = 0,
) -> Iterator[Study | Skip]:
    """Studies from a labelled-image CSV with user-mapped label columns.

    Args:
        csv: The CSV, relative to `root`.
        path_column: The column with the image path (or file name, with `image_folder`).
        patient_column: The column with the patient id.
        split_column: The column with the split.
        view_column: The column with the view.
        map: `name:Observation;...` for label columns, or for the names of `labels_column`.
        labels_column: A column listing the positive findings (NIH's `Finding Labels`).
        separator: What joins the names in `labels_column`.
        image_folder: The folder under `root` holding the images, a glob for several
            (`images_*/images`): images are looked up by file name there.
        dataset: The studies' dataset name.
        seed: Seed of the template reports.
    """
    from radixpert.data.templates import report_from_labels

    root = Path(root)
    path = root / csv
    mapping = parse_map(map)
    listed = bool(labels_column)
    label_cols = [labels_column] if listed else list(mapping)
    required = [path_column, *label_cols, *(c for c in (patient_column, split_column,
                                                        view_column) if c)]  # fmt: skip
    folder = _ImageIndex(root, image_folder) if image_folder else None
    unmapped_seen: set[str] = set()
    first = True
    for line, row in iter_csv(path, required):
        if first and listed:  # names of the file spelled like an observation map themselves
            mapping.update({n: n for n in _names(path, labels_column, separator)
                            if n in OBSERVATIONS and n not in mapping})  # fmt: skip
            first = False
        if first:  # columns named like an observation map themselves
            mapping.update({c: c for c in row if c in OBSERVATIONS and c not in mapping})
            if not mapping:
                raise ReaderError(
                    f"{path}: no label column: give the option map=column:Observation"
                )
            first = False
        where = f"{path}: line {line}"
        labels: dict[str, int | None] = {o: None for o in OBSERVATIONS}
        extra: dict = {}
        if listed:
            names = [n.strip() for n in row[labels_column].split(separator) if n.strip()]
            fed = {mapping[n] for n in names if n in mapping}
            for name in names:
                if name not in mapping and name not in unmapped_seen:
                    unmapped_seen.add(name)
                    yield Skip("finding name feeds no observation", where, name, part="label")
            for obs in set(mapping.values()):
                labels[obs] = 1 if obs in fed else 0
            if any(labels[o] == 1 for o in OBSERVATIONS if o != "No Finding"):
                labels["No Finding"] = None  # CheXpert: blank when something is found
            extra["findings"] = names
        else:
            for column, obs in mapping.items():
                v = parse_label(row[column], where, column)
                if _RANK[v] > _RANK[labels[obs]]:
                    labels[obs] = v
        image = row[path_column].strip()
        if not image:
            raise ReaderError(f"{where}: empty {path_column!r}")
        sid = f"{dataset}-{Path(image).with_suffix('').as_posix().replace('/', '-')}"
        if folder is not None:
            found = folder.get(image)
            if found is None:
                yield Skip("image not in image_folder", where, f"{image} ({image_folder})")
                continue
            image = found
        findings, impression = report_from_labels(labels, random.Random(f"{seed}:{image}"))
        yield Study(
            id=sid,
            dataset=dataset,
            split=row.get(split_column, "").strip() if split_column else "",
            patient_id=row.get(patient_column, "").strip() if patient_column else "",
            images=[Image(image, row.get(view_column, "").strip() if view_column else "")],
            findings=findings,
            impression=impression,
            labels=labels,
            report_source="synthesised-from-labels",
            extra=extra,
        ).validate(where)


def _names(path: Path, column: str, separator: str) -> set[str]:
    return {n.strip() for _, row in iter_csv(path, [column]) for n in row[column].split(separator)}


class _ImageIndex:
    """File name -> path under root, over the folders a glob names (listed once)."""

    def __init__(self, root: Path, pattern: str) -> None:
        self.paths: dict[str, str] = {}
        folders = [p for p in sorted(root.glob(pattern)) if p.is_dir()]
        if not folders:
            raise ReaderError(f"{root}: no folder matches image_folder={pattern!r}")
        for folder in folders:
            for f in folder.iterdir():
                self.paths.setdefault(f.name, f.relative_to(root).as_posix())

    def get(self, name: str) -> str | None:
        return self.paths.get(Path(name).name)
