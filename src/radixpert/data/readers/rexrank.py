"""ReXrank test sets and ReXGradient-160K, as rajpurkarlab/ReXrank and the ReXGradient release
ship them (shared/reference/datasets.md §10; tests/data/fixtures/rexrank/README.md).

* ReXrank (github rajpurkarlab/ReXrank, `data/`): one JSON object keyed by study id per set:
  `iu_xray/ReXRank_IUXray_{test,valid}.json`, `mimic-cxr/ReXRank_MIMICCXR_test.json`,
  `chexpert_plus/ReXRank_CheXpertPlus.json`, with `image_path` (list), `key_image_path` (the
  frontal image), `frontal_lateral` (list), `section_findings`, `section_impression`, `context`
  (`Age:50-60.Gender:M.Indication: ...Comparison: ...`), `report`, `split`, and for MIMIC an
  integer `subject_id`. Images lie beside the JSON, in the folder `data/READMD.md` names:
  `mimic-cxr/files` (paths written `/p10/p10046166/s5.../<dicom_id>.jpg`), `iu_xray/images`,
  `chexpert_plus/PNG`.
* ReXGradient-160K: `metadata/{split}_metadata_view_position.json` keyed by study with
  `ImagePath` (list, `../deid_png/...` relative to `metadata/`), `ImageViewPosition`,
  `Indication`, `Comparison`, `Findings`, `Impression`, `PatientID`, ...

The irregularities of the real files are read, not fatal (each counted as a `Skip`):
46 of IU-Xray's 590 test records have `frontal_lateral` lists of another length than
`image_path` (1, 3 or 4 views for 2 images), so no view can be paired with an image by position:
the record keeps its images, `key_image_path` is marked frontal, the others unknown. MIMIC's
views are spelled `antero-posterior`, `postero-anterior`, `left lateral`, `lateral`, NaN and
`Erect` (not a view); CheXpert Plus's file writes `image_path`, `frontal_lateral` and `ap_pa` as
Python-list strings (`"['valid/patient64620/study1/view1_frontal.png']"`), bare `NaN` for
missing sections, and `Indication:nan` / `Indication:None` in its context.

    radixpert data prepare rexrank --root ReXrank/data -o rexrank.jsonl
    radixpert data prepare rexgradient --root ReXGradient-160K -o rexgradient.jsonl
"""

from __future__ import annotations

import ast
import json
import math
import posixpath
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from radixpert.data.readers import Skip
from radixpert.data.study import Image, Study
from radixpert.data.views import normalise_view
from radixpert.errors import ReaderError

# File name -> (dataset name, image folder beside the JSON), from ReXrank's data/READMD.md.
_SETS = {
    "iuxray": ("rexrank-iu-xray", "images"),
    "mimiccxr": ("rexrank-mimic-cxr", "files"),
    "chexpertplus": ("rexrank-chexpert-plus", "PNG"),
    "rexgradient": ("rexrank-rexgradient", "images"),
}

_CONTEXT = re.compile(
    r"(?is)^\s*(?:<context>)?(?P<pre>.*?)(?:indication:\s*(?P<ind>.*?))?"
    r"(?:comparison:\s*(?P<cmp>.*?))?\s*(?:</context>)?\s*$"
)
_MISSING = {"", "nan", "none", "null"}


def _text(v: Any, where: str, field: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if not isinstance(v, str):
        raise ReaderError(f"{where}: field {field!r} must be text, got {type(v).__name__}")
    v = v.strip()
    return "" if v.lower() in _MISSING else v


def split_context(context: str) -> tuple[str, str]:
    """(indication, comparison) from ReXrank's `context` ("Indication: ... Comparison: ...");
    `nan` / `None` placeholders are empty."""
    m = _CONTEXT.match(context or "")
    if not m:
        return "", ""
    ind, cmp_ = (m.group("ind") or "").strip(), (m.group("cmp") or "").strip()
    return _placeholder(ind), _placeholder(cmp_)


def _placeholder(text: str) -> str:
    """ "" for the files' stand-ins for nothing: `nan`, `None`, `None.`."""
    return "" if text.rstrip(". ").lower() in _MISSING else text


def _demographics(context: str) -> dict[str, str]:
    found = re.findall(r"(Age|Gender):\s*([^.]*(?:\.\d+)?)\.", context or "")
    return {k.lower(): v for k, v in found if v.lower() not in _MISSING}


def _load(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))  # accepts the bare NaN of the files
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReaderError(f"{path}: cannot be read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ReaderError(f"{path}: expected a JSON object keyed by study id")
    return obj


def _as_list(value: Any, where: str, field: str) -> list[Any]:
    """A JSON list, or CheXpert Plus's Python-list string, or one value; None/NaN -> []."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = ast.literal_eval(text)  # literals only: never evaluates code
            except (ValueError, SyntaxError):
                raise ReaderError(
                    f"{where}: field {field!r} = {text[:80]!r} is not a list"
                ) from None
        else:
            return [text]
    if not isinstance(value, list):
        raise ReaderError(f"{where}: field {field!r} must be a list, got {type(value).__name__}")
    return value


def _set_of(path: Path) -> tuple[str, str]:
    key = re.sub(r"[^a-z]", "", path.stem.lower().removeprefix("rexrank_"))
    for name, found in _SETS.items():
        if key.startswith(name):
            return found
    return "rexrank", ""


def _views(
    rec: dict, images: list[str], where: str, key_image: str
) -> tuple[list[str], list[Skip]]:
    """One normalised view per image, and the Skips of what could not be read."""
    skips: list[Skip] = []
    listed = _as_list(rec.get("frontal_lateral"), where, "frontal_lateral")
    ap_pa = _as_list(rec.get("ap_pa"), where, "ap_pa")
    if len(listed) != len(images):
        skips.append(Skip("view list length differs from image list", where,
                          f"{len(images)} images, {len(listed)} views", part="view"))  # fmt: skip
        views = ["FRONTAL" if p == key_image else "" for p in images]
        return views, skips
    views = []
    for i, raw in enumerate(listed):
        view = normalise_view(raw)
        # CheXpert Plus: "Frontal" with ap_pa "AP"/"PA" is that projection.
        if view == "FRONTAL" and len(ap_pa) == len(listed):
            view = normalise_view(ap_pa[i]) or "FRONTAL"
            view = view if view in ("AP", "PA") else "FRONTAL"
        if view is None:
            skips.append(Skip("not a view", where, f"{raw!r} for image {i}", part="view"))
            view = ""
        if not view and images[i] == key_image:  # key_image_path is "the frontal image"
            view = "FRONTAL"
        views.append(view)
    return views, skips


def read(
    root: Path, *, files: str = "ReXRank_*.json", dataset: str = "", images: str = ""
) -> Iterator[Study | Skip]:
    """Studies of every ReXrank JSON under `root` (the repository's `data/` folder, one set's
    folder, or one file); image paths relative to `root`.

    Args:
        files: File name pattern searched below `root`.
        dataset: The studies' dataset name; default from the file name (`rexrank-iu-xray`,
            `rexrank-mimic-cxr`, `rexrank-chexpert-plus`), so that leakage is checked against
            the source dataset's patients.
        images: The image folder, relative to each JSON file's folder; default the one
            ReXrank's data/READMD.md names (`files`, `images`, `PNG`).
    """
    root = Path(root)
    base = root.parent if root.is_file() else root
    paths = [root] if root.is_file() else sorted(root.rglob(files))
    if not paths:
        raise ReaderError(f"{root}: no ReXrank JSON file ({files})")
    for path in paths:
        name, folder = _set_of(path)
        folder = images or folder
        prefix = path.parent.relative_to(base).as_posix()
        for sid, rec in _load(path).items():
            where = f"{path} record {sid}"
            if not isinstance(rec, dict):
                raise ReaderError(f"{where}: expected an object")
            raw = [str(p) for p in _as_list(rec.get("image_path"), where, "image_path")]
            if not raw:
                yield Skip("no image path", where)
                continue
            key_image = _text(rec.get("key_image_path"), where, "key_image_path")
            views, skips = _views(rec, raw, where, key_image)
            yield from skips
            context = _text(rec.get("context"), where, "context")
            ind, cmp_ = split_context(context)
            history = _text(rec.get("section_clinical_history"), where, "section_clinical_history")
            split = _text(rec.get("split"), where, "split") or "test"
            yield Study(
                id=str(sid),
                dataset=dataset or name,
                split={"val": "validate", "valid": "validate"}.get(split, split),
                patient_id=_patient(sid, rec, name),
                images=[
                    Image(posixpath.join(prefix, folder, p.lstrip("/")).removeprefix("./"), v)
                    for p, v in zip(raw, views, strict=True)
                ],
                indication=ind or history,
                comparison=cmp_,
                findings=_text(rec.get("section_findings"), where, "section_findings"),
                impression=_text(rec.get("section_impression"), where, "section_impression"),
                extra={
                    "source_file": path.name,
                    "key_image_path": key_image,
                    **_demographics(context),
                },
            ).validate(where)


def _patient(sid: str, rec: dict, name: str) -> str:
    if rec.get("subject_id") not in (None, ""):
        return str(rec["subject_id"])
    if name == "rexrank-chexpert-plus":  # ids are <patient>_<study>: patient64620_study1
        return str(sid).split("_study")[0]
    if name == "rexrank-mimic-cxr":
        m = re.search(r"/p(\d{8})/", str((rec.get("image_path") or [""])[0]))
        return m.group(1) if m else ""
    if name == "rexrank-iu-xray":  # ids are R2Gen's CXR<n>_IM-...; the iu-xray reader's patient
        m = re.match(r"(CXR\d+)_", str(sid))  # is CXR<n> (one report per patient)
        return m.group(1) if m else ""
    return ""


def read_rexgradient(
    root: Path, *, splits: tuple[str, ...] = ("train", "valid", "test")
) -> Iterator[Study | Skip]:
    """Studies of ReXGradient-160K from `metadata/{split}_metadata_view_position.json`; image
    paths (`../deid_png/...`, relative to `metadata/`) resolved to paths under `root`
    (`deid_png/<PatientID>/<AccessionNumber>/studies/.../instances/<uid>.png`, where the image
    parts unpack). Views are `ImageViewPosition`, one per image (`PA`, `POSTERO_ANTERIOR`,
    `LATERAL`, `LL`, `LAO`, `N/A`, `UNKNOWN`, null, ...); sections that are `None` or bare
    `NaN` are empty (tests/data/fixtures/rexgradient/README.md cites the layout).

    Args:
        splits: The split files to read (`train`, `valid`, `test`).
    """
    root = Path(root)
    found = False
    for split in splits:
        path = root / "metadata" / f"{split}_metadata_view_position.json"
        if not path.is_file():
            continue
        found = True
        for sid, rec in _load(path).items():
            where = f"{path} record {sid}"
            if not isinstance(rec, dict):
                raise ReaderError(f"{where}: expected an object")
            for key in ("ImagePath", "PatientID"):
                if key not in rec:
                    raise ReaderError(f"{where}: missing field {key!r}")
            paths = [str(p) for p in _as_list(rec["ImagePath"], where, "ImagePath")]
            listed = _as_list(rec.get("ImageViewPosition"), where, "ImageViewPosition")
            paired = len(listed) == len(paths)  # otherwise no view can be paired by position
            images = []
            for i, p in enumerate(paths):
                resolved = posixpath.normpath(posixpath.join("metadata", p))
                if resolved.startswith("../") or posixpath.isabs(resolved):
                    yield Skip("image path outside the release folder", where, p, part="image")
                    continue
                view = normalise_view(listed[i]) if paired else ""
                if view is None:
                    yield Skip("not a view", where, f"{listed[i]!r} for image {i}", part="view")
                    view = ""
                images.append(Image(resolved, view))
            if not paired:
                yield Skip("view list length differs from image list", where,
                           f"{len(paths)} images, {len(listed)} views", part="view")  # fmt: skip
            if not images:
                yield Skip("no image path", where)
                continue
            yield Study(
                id=str(sid),
                dataset="rexgradient",
                split={"valid": "validate"}.get(split, split),
                patient_id=str(rec["PatientID"]),
                images=images,
                indication=_text(rec.get("Indication"), where, "Indication"),
                comparison=_text(rec.get("Comparison"), where, "Comparison"),
                findings=_text(rec.get("Findings"), where, "Findings"),
                impression=_text(rec.get("Impression"), where, "Impression"),
                extra={k: rec[k] for k in ("PatientSex", "PatientAge", "StudyDate",
                                           "StudyInstanceUid", "AccessionNumber",
                                           "EthnicGroup") if k in rec},
            ).validate(where)  # fmt: skip
    if not found:
        raise ReaderError(
            f"{root}/metadata: no {{split}}_metadata_view_position.json for "
            f"splits {', '.join(splits)}"
        )
