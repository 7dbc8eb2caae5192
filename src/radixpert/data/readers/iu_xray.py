"""IU-Xray (Indiana University chest X-ray collection), in either of its two common layouts.

`layout="r2gen"` — the split used by R2Gen and most report-generation papers:

    annotation.json   {"train": [{"id", "report", "image_path": [...], "split"}, ...],
                       "val": [...], "test": [...]}
    images/<image_path>          e.g. images/CXR2384_IM-0942/0.png

`layout="openi"` — the reports as Open-I distributes them (NLMCXR_reports.tgz, NLMCXR_png.tgz):

    ecgen-radiology/<n>.xml      MedlineCitation/Article/Abstract/AbstractText with Label
                                 INDICATION / COMPARISON / FINDINGS / IMPRESSION; MeSH/major,
                                 MeSH/automatic; one parentImage id="CXR<n>_..." per image
    NLMCXR_png/<parentImage id>.png

`layout="kaggle"` — the CSV copy most public loaders read (Kaggle raddar/chest-xrays-indiana-
university; the reports file is the one in shared/data/iu_xray_reports):

    indiana_reports.csv          uid, MeSH, Problems, image, indication, comparison, findings,
                                 impression
    indiana_projections.csv      uid, filename, projection (Frontal / Lateral)
    images/images_normalized/<filename>        e.g. 1_IM-0001-4001.dcm.png

Views: only the projections CSV says which image is frontal. R2Gen's `0.png` / `1.png` are not
in a fixed order (in ReXrank's IU test set, which carries the views, `0.png` is lateral in 44 of
544 studies), so R2Gen views stay unknown and are counted once per study. Open-I's XML has no
view per image either (each `parentImage` carries the report's one caption, e.g. "Xray Chest PA
and Lateral", the Kaggle copy's `image` column), but `projections=indiana_projections.csv`
gives them: Open-I's `CXR2_IM-0652-1001` is Kaggle's `2_IM-0652-1001.dcm.png` (report 1 is
written `CXR1_1_IM-0001-4001`, Kaggle's `1_IM-0001-4001.dcm.png`). ReXrank's IU test set
(`radixpert data prepare rexrank`) carries its own views.

R2Gen's own split is kept, under the canonical names of `radixpert.data.splits` (its `val` is
`validate`; the publisher's name stays in `extra["publisher_split"]`). Open-I has no split, so
`split` is "" there (assigned later by the splitting step).
"""

from __future__ import annotations

import json
import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from radixpert.data.readers import Skip, iter_csv
from radixpert.data.splits import normalise_split
from radixpert.data.study import Image, Study
from radixpert.data.views import normalise_view
from radixpert.errors import ReaderError

log = logging.getLogger(__name__)

DATASET = "iu-xray"
R2GEN_SPLITS = ("train", "val", "test")
OPENI_SECTIONS = {
    "INDICATION": "indication",
    "COMPARISON": "comparison",
    "FINDINGS": "findings",
    "IMPRESSION": "impression",
}


def read(
    root: Path,
    *,
    layout: str = "r2gen",
    images_dir: str | None = None,
    keep_without_images: bool = False,
    projections: str = "",
) -> Iterator[Study | Skip]:
    """Stream IU-Xray studies from the R2Gen annotation file or the Open-I XML reports.

    Args:
        root: the dataset directory (R2Gen: holding `annotation.json` and `images/`; Open-I:
            holding `ecgen-radiology/` and the PNG folder).
        layout: `"r2gen"`, `"openi"` or `"kaggle"`.
        images_dir: the image folder under `root`; defaults to `images` (R2Gen),
            `NLMCXR_png` (Open-I) or `images/images_normalized` (Kaggle).
        projections: Open-I: the Kaggle `indiana_projections.csv` (under `root`) giving each
            image's view; the Kaggle layout reads it always.
        keep_without_images: Open-I and Kaggle — keep reports that list no image (104 of
            Open-I's 3,955 list no `parentImage`); by default they are left out and counted.

    Yields:
        One Study per R2Gen record (id `iu-<id>`) or per Open-I report (id `iu-CXR<n>`).

    Raises:
        ReaderError: a missing or malformed file or field; the message names both.
    """
    root = Path(root)
    check_images = True  # the image folder; each file is checked by prepare (ImageCheck)
    if layout == "r2gen":
        for study in _read_r2gen(root, images_dir or "images", check_images):
            if study.images:
                yield Skip("no view in the R2Gen layout", f"{root}/annotation.json record "
                           f"{study.extra['r2gen_id']}", part="view")  # fmt: skip
            yield study
    elif layout == "openi":
        views = _projections(root / projections) if projections else None
        for study in _read_openi(root, images_dir or "NLMCXR_png", check_images):
            if not study.images and not keep_without_images:
                yield Skip("report lists no image", f"{root}/ecgen-radiology/{study.extra['xml']}")
                continue
            yield from _openi_views(study, views, root / projections if projections else None)
            yield study
    elif layout == "kaggle":
        yield from _read_kaggle(root, images_dir or "images/images_normalized", keep_without_images)
    else:
        raise ValueError(f"layout = {layout!r}, expected 'r2gen', 'openi' or 'kaggle'")


# ---------------------------------------------------------------------------------- views


def _projections(path: Path) -> dict[str, tuple[str, str, int]]:
    """Kaggle's indiana_projections.csv: filename -> (uid, raw projection, line)."""
    return {
        row["filename"].strip(): (row["uid"].strip(), row["projection"].strip(), line)
        for line, row in iter_csv(path, ("uid", "filename", "projection"))
    }


def _kaggle_name(openi_id: str) -> str:
    """Open-I's `CXR2_IM-0652-1001` as Kaggle's file name `2_IM-0652-1001.dcm.png` (and
    report 1's `CXR1_1_IM-0001-4001` as `1_IM-0001-4001.dcm.png`)."""
    m = re.fullmatch(r"CXR(\d+)_(?:\1_)?(IM-.+)", openi_id)
    return f"{m.group(1)}_{m.group(2)}.dcm.png" if m else ""


def _openi_views(
    study: Study, views: dict[str, tuple[str, str, int]] | None, path: Path | None
) -> Iterator[Skip]:
    where = f"{study.extra.get('xml', study.id)}"
    if views is None:
        if study.images:
            yield Skip("no view in the Open-I layout (give projections=)", where, part="view")
        return
    for image in study.images:
        name = _kaggle_name(Path(image.path).stem)
        found = views.get(name)
        if found is None:
            yield Skip("image not in the projections file", where, f"{image.path} ({path})",
                       part="view")  # fmt: skip
            continue
        view = normalise_view(found[1])
        if view is None:
            yield Skip("not a view", f"{path}:{found[2]}", repr(found[1]), part="view")
            continue
        image.view = view


# --------------------------------------------------------------------------------- Kaggle


def _read_kaggle(root: Path, images_dir: str, keep_without_images: bool) -> Iterator[Study | Skip]:
    reports = root / "indiana_reports.csv"
    proj_path = root / "indiana_projections.csv"
    images: dict[str, list[tuple[str, str, int]]] = {}
    for name, (uid, raw, line) in _projections(proj_path).items():
        images.setdefault(uid, []).append((name, raw, line))
    sections = ("indication", "comparison", "findings", "impression")
    for line, row in iter_csv(reports, ("uid", *sections)):
        uid = row["uid"].strip()
        where = f"{reports}:{line}"
        listed = images.pop(uid, [])
        if not listed and not keep_without_images:
            yield Skip("report without images in the projections file", where, f"uid {uid}")
            continue
        study_images = []
        for name, raw, pline in listed:
            view = normalise_view(raw)
            if view is None:
                yield Skip("not a view", f"{proj_path}:{pline}", repr(raw), part="view")
                view = ""
            study_images.append(Image(f"{images_dir}/{name}", view))
        text = {k: _placeholder(row[k]) for k in sections}
        yield Study(
            id=f"iu-CXR{uid}",
            dataset=DATASET,
            split="",
            patient_id=f"CXR{uid}",
            images=study_images,
            **text,
            extra={k: row[k].strip() for k in ("MeSH", "Problems", "image") if k in row},
        ).validate(where)
    for uid, listed in sorted(images.items()):
        yield Skip("images without a report", f"{proj_path}:{listed[0][2]}", f"uid {uid}")


def _placeholder(text: str) -> str:
    """The CSV's empty cells and pandas' `nan`: ""."""
    text = " ".join(text.split())
    return "" if text.lower() in ("", "nan") else text


def _image_dir(root: Path, name: str, check: bool) -> Path:
    folder = root / name
    if check and not folder.is_dir():
        raise ReaderError(f"{folder}: image directory not found")
    return folder


# ---------------------------------------------------------------------------------- R2Gen


def _read_r2gen(root: Path, images_dir: str, check_images: bool) -> Iterator[Study]:
    path = root / "annotation.json"
    if not path.is_file():
        raise ReaderError(f"{path}: no such file (R2Gen IU-Xray annotation)")
    folder = _image_dir(root, images_dir, check_images)
    # One JSON object of a few MB: it has to be parsed whole, and it fits in memory easily.
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ReaderError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict):
        raise ReaderError(f"{path}: expected an object keyed by split, got {type(data).__name__}")
    unknown = [k for k in data if k not in R2GEN_SPLITS]
    if unknown:
        raise ReaderError(f"{path}: unknown split key(s) {unknown}; expected train, val, test")
    seen: set[str] = set()
    for split in R2GEN_SPLITS:
        records = data.get(split, [])
        if not isinstance(records, list):
            raise ReaderError(f'{path}: field "{split}" must be a list of records')
        for i, rec in enumerate(records):
            where = f'{path}: "{split}"[{i}]'
            yield _r2gen_study(rec, where, split, folder, images_dir, check_images, seen)


def _r2gen_study(
    rec: Any,
    where: str,
    split: str,
    folder: Path,
    images_dir: str,
    check_images: bool,
    seen: set[str],
) -> Study:
    if not isinstance(rec, dict):
        raise ReaderError(f"{where}: expected an object, got {type(rec).__name__}")
    for name, kind in (("id", str), ("report", str), ("image_path", list)):
        if name not in rec:
            raise ReaderError(f"{where}: missing field {name!r}")
        if not isinstance(rec[name], kind):
            raise ReaderError(f"{where}: field {name!r} must be a {kind.__name__}")
    rid = rec["id"]
    if rid in seen:
        raise ReaderError(f"{where}: field 'id' = {rid!r} appears twice")
    seen.add(rid)
    if rec.get("split", split) != split:
        raise ReaderError(
            f"{where}: field 'split' = {rec['split']!r} but the record is in {split!r}"
        )
    images = []
    for j, rel in enumerate(rec["image_path"]):
        if not isinstance(rel, str) or not rel:
            raise ReaderError(f"{where}: field 'image_path'[{j}] must be a non-empty string")
        # R2Gen stores no view; its loader uses image_path[0] and [1] as the two views.
        images.append(Image(path=f"{images_dir}/{rel}", view=""))
    return Study(
        id=f"iu-{rid}",
        dataset=DATASET,
        split=normalise_split(split),
        # Ids are "CXR<report number>_<series>": the report number stands for the patient.
        patient_id=rid.split("_", 1)[0],
        images=images,
        # R2Gen's "report" is the target text papers train on; it carries no section headers.
        findings=rec["report"].strip(),
        extra={"r2gen_id": rid, "publisher_split": split},
    )


# --------------------------------------------------------------------------------- Open-I


def _report_number(path: Path) -> tuple[int, str]:
    # Sort 1.xml, 2.xml, ..., 10.xml numerically; other names after, by name.
    return (int(path.stem), "") if path.stem.isdigit() else (1 << 62, path.stem)


def _text(el: ET.Element) -> str:
    return " ".join("".join(el.itertext()).split())


def _read_openi(root: Path, images_dir: str, check_images: bool) -> Iterator[Study]:
    reports = root / "ecgen-radiology"
    if not reports.is_dir():
        raise ReaderError(f"{reports}: report directory not found (Open-I ecgen-radiology/)")
    folder = _image_dir(root, images_dir, check_images)
    for path in sorted(reports.glob("*.xml"), key=_report_number):
        yield _openi_study(path, folder, images_dir, check_images)


def _openi_study(path: Path, folder: Path, images_dir: str, check_images: bool) -> Study:
    try:
        doc = ET.parse(path).getroot()
    except ET.ParseError as e:
        line, col = e.position
        raise ReaderError(f"{path}: malformed XML at line {line}, column {col} ({e})") from None
    abstract = doc.find("MedlineCitation/Article/Abstract")
    if abstract is None:
        raise ReaderError(f"{path}: missing element MedlineCitation/Article/Abstract")
    sections = dict.fromkeys(OPENI_SECTIONS.values(), "")
    for el in abstract.findall("AbstractText"):
        label = el.get("Label")
        if label not in OPENI_SECTIONS:
            raise ReaderError(
                f"{path}: AbstractText Label = {label!r}, expected one of "
                f"{', '.join(OPENI_SECTIONS)}"
            )
        sections[OPENI_SECTIONS[label]] = _text(el)
    uid = doc.find("uId")
    number = uid.get("id", "") if uid is not None else ""
    if not number:
        # The report number is also the file name (1.xml -> CXR1).
        number = f"CXR{path.stem}"
    if not re.fullmatch(r"CXR\d+", number):
        raise ReaderError(f"{path}: uId id = {number!r}, expected CXR<number>")
    images = []
    captions = []
    for j, el in enumerate(doc.iter("parentImage")):
        image_id = el.get("id", "").strip()
        if not image_id:
            raise ReaderError(f"{path}: parentImage[{j}] has no attribute 'id'")
        rel = f"{image_id}.png"
        images.append(Image(path=f"{images_dir}/{rel}", view=""))
        caption = el.find("caption")
        if caption is not None and _text(caption) not in captions:
            captions.append(_text(caption))
    # MeSH is a child of eCitation in the files seen; some copies nest it in MedlineCitation.
    mesh = doc.find(".//MeSH")
    extra: dict[str, Any] = {"xml": path.name}
    if captions:  # the report's description of the examination, not a view per image
        extra["caption"] = " / ".join(captions)
    if mesh is not None:
        extra["mesh_major"] = [_text(m) for m in mesh.findall("major")]
        extra["mesh_automatic"] = [_text(m) for m in mesh.findall("automatic")]
    return Study(
        id=f"iu-{number}",
        dataset=DATASET,
        split="",
        patient_id=number,
        images=images,
        **sections,
        extra=extra,
    )
