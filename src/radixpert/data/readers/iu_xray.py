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

from radixpert.data.splits import normalise_split
from radixpert.data.study import Image, Study
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
) -> Iterator[Study]:
    """Stream IU-Xray studies from the R2Gen annotation file or the Open-I XML reports.

    Args:
        root: the dataset directory (R2Gen: holding `annotation.json` and `images/`; Open-I:
            holding `ecgen-radiology/` and the PNG folder).
        layout: `"r2gen"` or `"openi"`.
        images_dir: the image folder under `root`; defaults to `images` (R2Gen) or
            `NLMCXR_png` (Open-I).
        keep_without_images: Open-I only — keep reports that list no `parentImage` (104 of
            the 3,955 do); by default they are dropped and counted in the log.

    Yields:
        One Study per R2Gen record (id `iu-<id>`) or per Open-I report (id `iu-CXR<n>`).

    Raises:
        ReaderError: a missing or malformed file or field; the message names both.
    """
    root = Path(root)
    check_images = True  # the image folder; each file is checked by prepare (ImageCheck)
    if layout == "r2gen":
        yield from _read_r2gen(root, images_dir or "images", check_images)
    elif layout == "openi":
        yield from _read_openi(root, images_dir or "NLMCXR_png", check_images, keep_without_images)
    else:
        raise ValueError(f"layout = {layout!r}, expected 'r2gen' or 'openi'")


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
        if False:  # prepare checks each image (ImageCheck)
            raise ReaderError(f"{where}: field 'image_path'[{j}]: image {folder / rel} not found")
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


def _read_openi(
    root: Path, images_dir: str, check_images: bool, keep_without_images: bool
) -> Iterator[Study]:
    reports = root / "ecgen-radiology"
    if not reports.is_dir():
        raise ReaderError(f"{reports}: report directory not found (Open-I ecgen-radiology/)")
    folder = _image_dir(root, images_dir, check_images)
    n_yielded = n_no_image = 0
    for path in sorted(reports.glob("*.xml"), key=_report_number):
        study = _openi_study(path, folder, images_dir, check_images)
        if not study.images and not keep_without_images:
            n_no_image += 1
            continue
        n_yielded += 1
        yield study
    if n_no_image:
        log.info("%s: dropped %d reports without images", reports, n_no_image)
    log.info("%s: %d studies", reports, n_yielded)


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
    for j, el in enumerate(doc.iter("parentImage")):
        image_id = el.get("id", "").strip()
        if not image_id:
            raise ReaderError(f"{path}: parentImage[{j}] has no attribute 'id'")
        rel = f"{image_id}.png"
        if False:  # prepare checks each image (ImageCheck)
            raise ReaderError(
                f"{path}: parentImage id={image_id!r}: image {folder / rel} not found"
            )
        images.append(Image(path=f"{images_dir}/{rel}", view=""))
    # MeSH is a child of eCitation in the files seen; some copies nest it in MedlineCitation.
    mesh = doc.find(".//MeSH")
    extra: dict[str, Any] = {"xml": path.name}
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
