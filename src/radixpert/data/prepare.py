"""`radixpert data prepare DATASET --root DIR -o FILE [key=value ...]`: a dataset, as its
publisher ships it, into `Study` records (JSONL or Parquet).

Readers are registered by name as "module:function" strings and imported only when used.
Each reader streams; records are validated and written atomically, with progress on stderr.
What a reader skipped (`radixpert.data.readers.Skip`), and the images whose files are not
under ``--root`` (checked unless ``--no-check-images``), are counted per reason, printed, and
written beside the output (``train.jsonl`` -> ``train.skips.json``); ``--strict`` stops at the
first one instead.

A reader's options are its keyword-only parameters. `reader_options` lists them (name, type,
default and the text of the reader's docstring), and `parse_options` turns the command line's
`key=value` strings into those types: `true`/`false` for a flag, numbers, comma-separated
lists (`views=PA,AP`), `none` for an optional value. An unknown option or a value of the wrong
type is an error naming the option and the reader's options.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import importlib
import inspect
import logging
import re
import time
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from radixpert.data.readers import Skip, SkipLog
from radixpert.data.study import Image, Study, write_studies
from radixpert.errors import UnknownName, UsageError
from radixpert.io import write_json

log = logging.getLogger(__name__)

_R = "radixpert.data.readers"
READERS: dict[str, str] = {
    "mimic-cxr": f"{_R}.mimic_cxr:read",
    "iu-xray": f"{_R}.iu_xray:read",
    "chexpert": f"{_R}.chexpert:read",
    "rexrank": f"{_R}.rexrank:read",
    "rexgradient": f"{_R}.rexrank:read_rexgradient",
    "ms-cxr": f"{_R}.ms_cxr:read",
    "roco-v2": f"{_R}.roco:read",
    "vindr-cxr": f"{_R}.vindr_cxr:read",
    "chexpert-plus": f"{_R}.chexpert_plus:read",
    "padchest": f"{_R}.padchest:read",
    "imagenome": f"{_R}.imagenome:read",
    "padchest-gr": f"{_R}.padchest_gr:read",
    "labelled-csv": f"{_R}.labelled_csv:read",
}


def reader(name: str) -> Any:
    """The `read(root, **options)` function of dataset `name`."""
    if name not in READERS:
        raise UnknownName(f"unknown dataset {name!r}; known: {', '.join(READERS)}")
    module, _, attr = READERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class ReaderOption:
    """One keyword option of a reader: ``name=value`` on the command line."""

    name: str
    kind: str  # "bool", "int", "float", "str", "path" or "list" (comma-separated strings)
    optional: bool  # "none" is accepted and gives None
    default: Any
    help: str


_FALSE, _TRUE = ("false", "no", "0", "off"), ("true", "yes", "1", "on")
_LIST_ORIGINS = (tuple, list, collections.abc.Sequence, collections.abc.Collection)


def _kind(hint: Any) -> tuple[str, bool]:
    """(kind, optional) of a parameter's type hint."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        kind, _ = _kind(inner[0]) if len(inner) == 1 else ("str", False)
        return kind, type(None) in args
    if typing.get_origin(hint) in _LIST_ORIGINS:
        return "list", False
    return {bool: "bool", int: "int", float: "float", Path: "path"}.get(hint, "str"), False


def _arg_docs(doc: str) -> dict[str, str]:
    """``name -> text`` of the ``Args:`` section of a Google-style docstring."""
    out: dict[str, str] = {}
    section = re.search(r"\n\s*Args:\n(.*?)(?:\n\s*\n|\Z)", doc, re.S)
    name = None
    for line in (section.group(1) if section else "").splitlines():
        m = re.match(r"\s{4,8}(\w+)(?: \([^)]*\))?: ?(.*)", line)
        if m and len(line) - len(line.lstrip()) <= 8:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif name is not None:
            out[name] += " " + line.strip()
    return out


def reader_options(dataset: str) -> list[ReaderOption]:
    """The options of dataset ``dataset``'s reader, in signature order."""
    read = reader(dataset)
    hints = typing.get_type_hints(read)
    docs = _arg_docs(inspect.getdoc(read) or "")
    options = []
    for p in inspect.signature(read).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        kind, optional = _kind(hints.get(p.name, str))
        options.append(ReaderOption(p.name, kind, optional, p.default, docs.get(p.name, "")))
    return options


def _convert(option: ReaderOption, text: str, dataset: str) -> Any:
    value = text.strip()
    if option.optional and value.lower() in ("none", "null"):
        return None
    if option.kind == "bool":
        if value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise UsageError(f"{dataset} option {option.name}={text!r}: expected true or false")
    if option.kind in ("int", "float"):
        try:
            return int(value) if option.kind == "int" else float(value)
        except ValueError:
            raise UsageError(
                f"{dataset} option {option.name}={text!r}: expected a number ({option.kind})"
            ) from None
    if option.kind == "list":
        items = tuple(v.strip() for v in value.split(",") if v.strip())
        if not items:
            raise UsageError(f"{dataset} option {option.name}: empty list (write a,b,c)")
        return items
    return Path(value) if option.kind == "path" else value


def parse_options(dataset: str, pairs: Sequence[str]) -> dict[str, Any]:
    """``["views=PA,AP", "check-images=false"]`` -> ``{"views": ("PA", "AP"), ...}``.

    Raises:
        UsageError: A pair without ``=``, or a value that does not convert to the option's type.
        UnknownName: An option the reader does not have (its options are listed).
    """
    known = {o.name: o for o in reader_options(dataset)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        name = key.strip().replace("-", "_")
        if not sep or not name:
            raise UsageError(f"{dataset} option {pair!r}: expected key=value")
        if name not in known:
            flags = {"check_images": "--no-check-images", "strict": "--strict"}
            hint = f" (the command's flag {flags[name]} does that)" if name in flags else ""
            raise UnknownName(
                f"{dataset} has no option {key.strip()!r}{hint}; its options: "
                + (", ".join(known) or "none")
            )
        out[name] = _convert(known[name], text, dataset)
    return out


def _show(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value) if value != "" else '""'


def describe_readers(width: int = 100) -> str:
    """Every reader and its options, as ``radixpert data prepare --help`` shows them."""
    import textwrap

    lines = ["datasets and their options (key=value after the dataset name):"]
    for dataset in READERS:
        lines.append(f"  {dataset}")
        for o in reader_options(dataset):
            kind = o.kind + (" | none" if o.optional else "")
            lines.append(f"    {o.name}={kind} (default {_show(o.default)})")
            if o.help:
                lines += textwrap.wrap(
                    o.help, width, initial_indent=" " * 8, subsequent_indent=" " * 8
                )
    return "\n".join(lines)


def _with_progress(studies: Iterator[Study], stream: TextIO | None) -> Iterator[Study]:
    t0 = last = time.perf_counter()
    for n, s in enumerate(studies, 1):
        now = time.perf_counter()
        if stream is not None and now - last >= 2.0:
            print(f"  {n:,} studies ({n / (now - t0):,.0f}/s)", file=stream, flush=True)
            last = now
        yield s


class PriorRemover:
    """Removes sentences about prior examinations from findings and impression.

    `mode="rules"` uses `radixpert.data.reports.remove_prior_references`; `mode="llm"` asks a
    local model (`radixpert.data.llm_passes`) and, where its answer does not parse, uses the
    rules for that study, says so in the study's `extra` and counts it. Removed sentences are
    kept in `extra["removed_prior_sentences"]`.
    """

    def __init__(self, mode: str = "rules", client: Any = None) -> None:
        if mode not in ("rules", "llm") or (mode == "llm" and client is None):
            raise ValueError("prior removal: mode 'rules', or 'llm' with a client")
        self.mode, self.client = mode, client
        self.counts: Counter[str] = Counter()

    def __call__(self, study: Study) -> Study:
        from radixpert.data.llm_passes import llm_prior_sentences
        from radixpert.data.reports import remove_prior_references
        from radixpert.errors import LLMError

        removed: dict[str, list[str]] = {}
        how = self.mode
        for name in ("findings", "impression"):
            text = getattr(study, name)
            if not text.strip():
                continue
            if self.mode == "llm":
                try:
                    kept, gone = llm_prior_sentences(text, self.client)
                except LLMError as e:
                    log.warning("%s: LLM prior-reference pass failed (%s); rules used", study.id, e)
                    self.counts["llm failed, rules used"] += 1
                    how = "rules (llm answer unusable)"
                    kept, gone = remove_prior_references(text)
            else:
                kept, gone = remove_prior_references(text)
            setattr(study, name, kept)
            if gone:
                removed[name] = gone
                self.counts["sentences removed"] += len(gone)
        study.extra["removed_prior_sentences"] = removed
        study.extra["prior_removal"] = how
        self.counts["studies"] += 1
        return study


def skips_path(out: str | Path) -> Path:
    """Where ``prepare`` writes the skip counts of ``out``: ``x.jsonl`` -> ``x.skips.json``."""
    out = Path(out)
    return out.with_name(out.stem + ".skips.json")


class ImageCheck:
    """Keeps the images of a study whose files exist under ``root``; counts the others.

    An image whose file is missing is left out (``Skip`` part "image"), with the boxes drawn on
    it (part "box"; the boxes of the images kept are renumbered); a study left without any
    image is skipped. Relative paths are relative to ``root``; absolute paths are taken as they
    are (a reader given a separate image folder writes them so).
    """

    def __init__(self, root: Path, log: SkipLog) -> None:
        self.root, self.log = Path(root), log

    def __call__(self, study: Study) -> Study | None:
        kept: list[Image] = []
        index: dict[int, int] = {}
        for i, image in enumerate(study.images):
            path = Path(image.path)
            if (path if path.is_absolute() else self.root / path).is_file():
                index[i] = len(kept)
                kept.append(image)
            else:
                self.log.add(Skip("image file missing", f"study {study.id}", image.path, "image"))
        if len(kept) == len(study.images):
            return study
        boxes = []
        for box in study.boxes:
            if box.image in index:
                boxes.append(dataclasses.replace(box, image=index[box.image]))
            else:
                detail = f"{box.label!r} on {study.images[box.image].path}"
                self.log.add(Skip("box on a missing image", f"study {study.id}", detail, "box"))
        if not kept:
            self.log.add(
                Skip("no image file found", f"study {study.id}", f"{len(study.images)} listed")
            )
            return None
        study.images, study.boxes = kept, boxes
        return study


def prepare(
    dataset: str,
    root: str | Path,
    out: str | Path,
    /,  # positional only: a reader may have an option named `dataset`
    progress: TextIO | None = None,
    transform: Callable[[Study], Study] | None = None,
    strict: bool = False,
    check_images: bool = True,
    **options: Any,
) -> int:
    """Read `dataset` under `root` and write its Study records to `out`; returns the count.

    What the reader skipped (and, with ``check_images``, the images whose files are missing
    under ``root``) is counted per reason, printed to ``progress`` and written to
    ``skips_path(out)``. `transform` (e.g. a `PriorRemover`) is applied to each study before it
    is written.

    Raises:
        ReaderError: With ``strict``, at the first skip, naming its file and line.
    """
    read = reader(dataset)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root is not a directory")
    t0 = time.perf_counter()
    log = SkipLog(strict=strict)
    studies: Iterator[Study] = log.studies(read(root, **options))
    if check_images:
        check = ImageCheck(root, log)
        studies = (s for s in map(check, studies) if s is not None)
    if transform is not None:
        studies = (transform(s) for s in studies)
    n = write_studies(_with_progress(studies, progress), out)
    took = time.perf_counter() - t0
    report = {
        "dataset": dataset,
        "studies_written": n,
        "images_checked": check_images,
        "options": {k: _show(v) for k, v in options.items()},
        **log.to_dict(),
    }
    write_json(skips_path(out), report)
    if progress is not None:
        print(f"{dataset}: {n:,} studies -> {out} in {took:.1f} s", file=progress, flush=True)
        if log.total:
            print(f"{dataset}: left out ({skips_path(out)}):", file=progress)
            print("\n".join(log.summary()), file=progress, flush=True)
        else:
            print(f"{dataset}: nothing skipped", file=progress, flush=True)
    return n
