"""ReXrank test sets and ReXGradient-160K, as rajpurkarlab/ReXrank and the ReXGradient release
ship them (see shared/reference/datasets.md §10).

* ReXrank: one JSON object keyed by study id, e.g. `iu_xray/ReXRank_IUXray_test.json`, with
  `image_path` (list), `frontal_lateral` (list), `section_findings`, `section_impression`,
  `context` ("Indication: ... Comparison: ..."), `report`, `split`, and for MIMIC an integer
  `subject_id`. The CheXpert Plus file contains bare `NaN`, which is read as an empty text.
* ReXGradient-160K: `metadata/{split}_metadata_view_position.json` keyed by study with
  `ImagePath`, `ImageViewPosition`, `Indication`, `Comparison`, `Findings`, `Impression`,
  `PatientID`, ...

    radixpert data prepare rexrank --root ReXrank/data/iu_xray --out iu_test.jsonl
    radixpert data prepare rexgradient --root ReXGradient-160K --out rexgradient.jsonl
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from radixpert.data.study import Image, Study
from radixpert.errors import ReaderError

_CONTEXT = re.compile(
    r"(?is)^\s*(?:<context>)?(?P<pre>.*?)(?:indication:\s*(?P<ind>.*?))?"
    r"(?:comparison:\s*(?P<cmp>.*?))?\s*(?:</context>)?\s*$"
)


def _text(v: Any, where: str, field: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if not isinstance(v, str):
        raise ReaderError(f"{where}: field {field!r} must be text, got {type(v).__name__}")
    return v.strip()


def split_context(context: str) -> tuple[str, str]:
    """(indication, comparison) from ReXrank's `context` ("Indication: ... Comparison: ...")."""
    m = _CONTEXT.match(context or "")
    if not m:
        return "", ""
    return (m.group("ind") or "").strip(), (m.group("cmp") or "").strip()


def _load(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))  # accepts the bare NaN of one file
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReaderError(f"{path}: cannot be read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ReaderError(f"{path}: expected a JSON object keyed by study id")
    return obj


def read(root: Path, *, files: str = "ReXRank_*.json", dataset: str = "rexrank") -> Iterator[Study]:
    """Studies of every ReXrank JSON under `root` (a file or a folder)."""
    root = Path(root)
    paths = [root] if root.is_file() else sorted(root.rglob(files))
    if not paths:
        raise ReaderError(f"{root}: no ReXrank JSON file ({files})")
    for path in paths:
        for sid, rec in _load(path).items():
            where = f"{path}: id {sid!r}"
            if not isinstance(rec, dict):
                raise ReaderError(f"{where}: expected an object")
            images = rec.get("image_path") or []
            views = rec.get("frontal_lateral")
            views = [""] * len(images) if views is None else views
            if (
                not isinstance(images, list)
                or not isinstance(views, list)
                or len(views) != len(images)
            ):
                raise ReaderError(
                    f"{where}: 'image_path' and 'frontal_lateral' must be lists of the same length"
                )
            ind, cmp_ = split_context(_text(rec.get("context"), where, "context"))
            split = _text(rec.get("split"), where, "split")
            yield Study(
                id=str(sid),
                dataset=dataset,
                split={"val": "validate", "valid": "validate"}.get(split, split),
                patient_id=str(rec.get("subject_id", "") or ""),
                images=[Image(str(p), str(v)) for p, v in zip(images, views)],
                indication=ind,
                comparison=cmp_,
                findings=_text(rec.get("section_findings"), where, "section_findings"),
                impression=_text(rec.get("section_impression"), where, "section_impression"),
                extra={"source_file": path.name, "key_image_path": rec.get("key_image_path", "")},
            ).validate(where)


def read_rexgradient(
    root: Path, *, splits: tuple[str, ...] = ("train", "valid", "test")
) -> Iterator[Study]:
    """Studies of ReXGradient-160K from `metadata/{split}_metadata_view_position.json`."""
    root = Path(root)
    found = False
    for split in splits:
        path = root / "metadata" / f"{split}_metadata_view_position.json"
        if not path.is_file():
            continue
        found = True
        for sid, rec in _load(path).items():
            where = f"{path}: id {sid!r}"
            if not isinstance(rec, dict):
                raise ReaderError(f"{where}: expected an object")
            for key in ("ImagePath", "PatientID"):
                if key not in rec:
                    raise ReaderError(f"{where}: missing field {key!r}")
            images = rec["ImagePath"] if isinstance(rec["ImagePath"], list) else [rec["ImagePath"]]
            views = rec.get("ImageViewPosition") or [""] * len(images)
            views = views if isinstance(views, list) else [views] * len(images)
            yield Study(
                id=str(sid),
                dataset="rexgradient",
                split={"valid": "validate"}.get(split, split),
                patient_id=str(rec["PatientID"]),
                images=[Image(str(p), str(v or "")) for p, v in zip(images, views)],
                indication=_text(rec.get("Indication"), where, "Indication"),
                comparison=_text(rec.get("Comparison"), where, "Comparison"),
                findings=_text(rec.get("Findings"), where, "Findings"),
                impression=_text(rec.get("Impression"), where, "Impression"),
                extra={k: rec[k] for k in ("PatientSex", "PatientAge", "StudyDate") if k in rec},
            ).validate(where)
    if not found:
        raise ReaderError(
            f"{root}/metadata: no {{split}}_metadata_view_position.json for "
            f"splits {', '.join(splits)}"
        )
