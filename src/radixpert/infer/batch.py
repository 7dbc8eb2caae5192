"""``radixpert generate``: a model's reports (or answers) for a whole test set, as one file.

    radixpert generate --model runs/demo/model/04-msa3/bundle \\
        --data runs/demo/data/phantoms/studies.jsonl --split test --out preds.json
    radixpert evaluate -r runs/demo/data/phantoms/studies.jsonl -c preds.json --section findings
    accelerate launch -m radixpert generate --model ... --data ... --out preds.json  # shards
    radixpert generate --shard 1/2 ...; radixpert generate --merge --out preds.json  # by hand

Inputs: Study records (JSONL/Parquet of ``radixpert data prepare`` / ``data phantoms``), each
asked for its report with the report task's own instruction (``instruct.tasks.ReportTask``:
its first wording, the indication before it when the study has one and the model's recipe
put it in training prompts, no prompt at all for an ``image_only`` stage), or conversations
(ShareGPT JSONL of ``radixpert data instruct``), answered at their last human turn. Relative
image paths are read under ``--image-root``, by default the data file's folder (as training
reads them, ``train.runner.stage_conversations``).

Output (``radixpert evaluate`` reads it, ``evaluate.io``): ReXrank-style JSON in input order,
``{id: {"findings": ...}}`` on the findings track; ``{id: {"findings": ..., "impression":
...}}`` on the findings + impression track when the text has section headers
(``data.reports.split_sections``), else ``{id: {"report": text}}`` (counted as unsplit, since
a headerless text cannot be cut without guessing); for conversations ``{id:
{"model_prediction": answer, "report": the conversation's own answer, "study_id", "task"}}``,
so one file serves as both ``-r`` and ``-c``. Beside it, ``<stem>.meta.json`` records the model
(manifest, file sizes, config hashes), every setting, the input's hash, counts, skipped
records and the package versions.

Resume and sharding: finished ids are appended to a journal beside the output
(``<stem>.journal.jsonl``, or ``<stem>.journal-K-of-N.jsonl`` per shard; fsync'd after every
batch); a rerun reads it and never generates them again, and refuses a journal made with other
settings. Shard K of N takes the records whose input position i has i % N == K (``--shard
K/N``, or the process index under ``accelerate launch``); when every shard is finished the
journals are merged by id into the output (automatically by the last shard, or by
``--merge``), written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from radixpert.errors import ConversationError, ImageError, InputError, UsageError
from radixpert.io import write_json

logger = logging.getLogger(__name__)

__all__ = [
    "GenerateSettings",
    "Item",
    "add_parser",
    "journal_path",
    "merge_journals",
    "read_items",
    "report_prompt",
    "run_generate",
]

TRACKS = ("findings", "findings+impression")
JOURNAL_FORMAT = "radixpert.generate.journal"
PREDICTIONS_FORMAT = "radixpert.predictions"
FORMAT_VERSION = 1
_VERSIONED = ("radixpert", "torch", "transformers", "peft", "accelerate", "tokenizers")


@dataclass
class GenerateSettings:
    """Everything that decides the generated text (a journal is resumed only under the same)."""

    track: str = "findings"
    max_new_tokens: int = 160
    num_beams: int = 1
    temperature: float = 0.0  # 0: greedy (or beam search); > 0: sampling
    top_p: float = 1.0
    seed: int = 0
    cache: str = "dynamic"
    batch_size: int = 16
    prompt: str | None = None  # the instruction; None: the report task's first wording
    with_indication: bool = True
    image_only: bool = False
    dtype: str = "float32"

    def generate_kwargs(self) -> dict[str, Any]:
        """The ``generate`` arguments beyond the token limit (greedy when none)."""
        kwargs: dict[str, Any] = {}
        if self.num_beams > 1:
            kwargs["num_beams"] = self.num_beams
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p)
        if self.cache == "static":
            kwargs["cache_implementation"] = "static"
        return kwargs


@dataclass
class Item:
    """One record to answer: its id, place in the input, images and prompt turns."""

    id: str
    index: int
    images: list[Path]
    prompt: list[dict[str, str]]
    where: str
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ inputs


def report_prompt(
    study: Any,
    track: str,
    *,
    prompt: str | None = None,
    with_indication: bool = True,
    image_only: bool = False,
) -> list[dict[str, str]]:
    """The human turn asking for ``study``'s report, as the report task words it in training.

    Args:
        study: A ``Study``.
        track: "findings" or "findings+impression".
        prompt: Another instruction in place of the report task's first wording.
        with_indication: Put ``Indication: ...`` first when the study has one (the report
            task's default; a recipe whose ``prompt_fields`` leave it out trains without).
        image_only: The prompt is the image alone (an ``image_only`` training stage).
    """
    from radixpert.instruct.conversation import IMAGE_TOKEN
    from radixpert.instruct.tasks import ReportTask

    if track not in TRACKS:
        raise UsageError(f"--track must be one of {', '.join(TRACKS)}, not {track!r}")
    if image_only:
        return [{"from": "human", "value": IMAGE_TOKEN}]
    what = "findings" if track == "findings" else "findings and impression"
    text = prompt if prompt is not None else ReportTask.PROMPTS[0].format(what=what)
    if with_indication and study.indication.strip():
        text = f"Indication: {study.indication.strip()}\n{text}"
    return [{"from": "human", "value": f"{IMAGE_TOKEN}\n{text}"}]


def _kind(path: Path) -> str:
    """ "studies" or "conversations", from the file's first record."""
    if path.suffix.lower() == ".parquet":
        return "studies"
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise InputError(f"{path}: unknown extension {path.suffix!r}; use .jsonl or .parquet")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                first = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
            if isinstance(first, dict) and "conversations" in first:
                return "conversations"
            if isinstance(first, dict) and "dataset" in first:
                return "studies"
            keys = ", ".join(map(str, first)) if isinstance(first, dict) else type(first).__name__
            raise InputError(
                f"{path}: line {n}: neither a Study record (id, dataset, images, ...) nor a "
                f"conversation (id, image, conversations); found {keys}"
            )
    raise InputError(f"{path}: no records")


def _conversations(path: Path, root: Path) -> Iterator[Item]:
    from radixpert.infer.generate import prompt_turns
    from radixpert.instruct.conversation import IMAGE_TOKEN, images_and_turns

    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}: line {n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConversationError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict) or "id" not in rec or "conversations" not in rec:
                raise ConversationError(f"{where}: expected an object with id and conversations")
            images, turns = images_and_turns(rec)
            if not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns):
                raise ConversationError(f"{where}: each turn needs 'from' and a text 'value'")
            try:
                prompt = prompt_turns(turns)
            except ValueError as e:
                raise ConversationError(f"{where}: {e}") from None
            placeholders = sum(t["value"].count(IMAGE_TOKEN) for t in prompt)
            if placeholders not in (0, len(images)):
                raise ConversationError(
                    f"{where}: {placeholders} {IMAGE_TOKEN} token(s) before the last question "
                    f"for {len(images)} image(s)"
                )
            answer = turns[len(prompt)]["value"] if len(turns) > len(prompt) else None
            extra = {"study_id": rec.get("study_id", ""), "task": rec.get("task", "")}
            if answer is not None:
                extra["reference"] = answer
            yield Item(str(rec["id"]), -1, [root / p for p in images], prompt, where, extra)


def read_items(
    path: str | Path,
    settings: GenerateSettings,
    *,
    image_root: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> tuple[str, list[Item]]:
    """The records of ``path`` to answer, in file order: ``(kind, items)``.

    Args:
        path: Study records (.jsonl/.parquet) or conversations (.jsonl).
        settings: The track and prompt settings.
        image_root: Folder of relative image paths; default the data file's folder.
        split: Only studies (or conversations of studies) of this split (studies only).
        limit: Keep the first ``limit`` records.

    Raises:
        InputError, StudyError, ConversationError: A missing file, a malformed record, a
            duplicate id, a study without an image — naming the file and the record.
    """
    from radixpert.data.study import read_studies

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    root = Path(image_root) if image_root is not None else path.parent
    kind = _kind(path)
    items: list[Item] = []
    if kind == "studies":
        for n, study in enumerate(read_studies(path), 1):
            if split is not None and study.split != split:
                continue
            where = f"{path}: record {n} (id {study.id!r})"
            if not study.images:
                raise InputError(f"{where}: the study has no image to report on")
            prompt = report_prompt(
                study,
                settings.track,
                prompt=settings.prompt,
                with_indication=settings.with_indication,
                image_only=settings.image_only,
            )
            # The report task shows the model the study's first image (ReportTask.build).
            items.append(Item(study.id, -1, [root / study.images[0].path], prompt, where))
    else:
        if split is not None:
            raise UsageError("--split applies to Study records; conversations have no split")
        items = list(_conversations(path, root))
    if limit is not None:
        items = items[:limit]
    seen: dict[str, str] = {}
    for i, item in enumerate(items):
        if item.id in seen:
            raise InputError(f"{item.where}: duplicate id {item.id!r} (first at {seen[item.id]})")
        seen[item.id] = item.where
        item.index = i
    if not items:
        raise InputError(
            f"{path}: no records to answer" + (f" in split {split!r}" if split else "")
        )
    return kind, items


def prompt_style(model_dir: str | Path) -> dict[str, bool]:
    """How the bundle's training stage wrote report prompts (``with_indication``,
    ``image_only``), from its ``recipe.json``; the report task's defaults without one."""
    style = {"with_indication": True, "image_only": False}
    recipe_file = Path(model_dir) / "recipe.json"
    if not recipe_file.is_file():
        return style
    stages = json.loads(recipe_file.read_text(encoding="utf-8")).get("stages") or []
    if not stages:
        return style
    # A stage's bundle lives in OUT/NN-name/bundle; otherwise it is the recipe's last stage.
    match = re.fullmatch(r"\d+-(.+)", Path(model_dir).resolve().parent.name)
    stage = next((s for s in stages if match and s.get("name") == match.group(1)), stages[-1])
    fields = tuple(stage.get("prompt_fields") or ())
    if stage.get("input") == "image_only":
        return {"with_indication": False, "image_only": True}
    if fields:  # as train.runner.stage_conversations: only then the report task is replaced
        style["with_indication"] = "indication" in fields
    return style


# ------------------------------------------------------------------------------ journal


def journal_path(out: str | Path, shard: int = 0, shards: int = 1) -> Path:
    """The journal of one shard beside ``out``."""
    out = Path(out)
    tail = "journal.jsonl" if shards == 1 else f"journal-{shard}-of-{shards}.jsonl"
    return out.with_name(f"{out.stem}.{tail}")


def meta_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.meta.json")


def _read_journal(path: Path, repair: bool = False) -> tuple[dict[str, Any], list[dict]]:
    """(header, entries) of a journal; a torn last line (a crash mid-write) is dropped, and
    cut off the file when ``repair``."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a torn last line (an interrupted write)", path)
        data = data[:cut]
        if repair:
            with path.open("r+b") as f:
                f.truncate(cut)
    lines = data.decode("utf-8").splitlines()
    if not lines:
        raise InputError(f"{path}: empty journal; remove it")
    rows = []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: line {n}: not valid JSON ({e.msg}); remove it") from None
    header = rows[0]
    if not isinstance(header, dict) or header.get("format") != JOURNAL_FORMAT:
        raise InputError(f"{path}: not a radixpert generate journal (line 1)")
    return header, rows[1:]


class Journal:
    """The append-only record of one shard: a header line, then one line per finished (or
    skipped) record, flushed and fsync'd after each batch."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.done: dict[int, dict[str, Any]] = {}
        if path.is_file():
            before, entries = _read_journal(path, repair=True)
            changed = sorted(k for k in header if k != "format" and before.get(k) != header[k])
            if changed:
                raise UsageError(
                    f"{path} was written with other settings ({', '.join(changed)} differ); "
                    "use another --out, or remove the journal to start again"
                )
            for entry in entries:
                if "prediction" in entry:  # skipped records are tried again
                    self.done[int(entry["index"])] = entry
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("w", encoding="utf-8") as f:
                f.write(json.dumps(header, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())

    def append(self, entries: Sequence[dict[str, Any]]) -> None:
        if not entries:
            return
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        for e in entries:
            if "prediction" in e:
                self.done[int(e["index"])] = e


def merge_journals(out: str | Path, *, required: bool = True) -> dict[str, Any] | None:
    """Merges the shard journals beside ``out`` into ``out`` and its meta file, by id.

    Args:
        out: The predictions file.
        required: Raise when a shard is missing or unfinished; else return None then.

    Returns:
        The meta record written, or None when not every shard is finished (``required``
        False).

    Raises:
        UsageError: No journal, journals of other settings, or unfinished shards.
    """
    out = Path(out)
    found = sorted(out.parent.glob(f"{out.stem}.journal*.jsonl"))
    if not found:
        raise UsageError(f"no journal of {out} ({journal_path(out)} or {out.stem}.journal-K-of-N)")
    journals = {p: _read_journal(p) for p in found}
    headers = list(journals.values())
    first = headers[0][0]
    shards = int(first["shard"][1])
    for p, (h, _) in journals.items():
        differ = sorted(k for k in first if k != "shard" and h.get(k) != first[k])
        if differ or int(h["shard"][1]) != shards:
            raise UsageError(
                f"{p} and {found[0]} were written with other settings "
                f"({', '.join(differ) or 'number of shards'}); remove the stale journal"
            )
    have = {int(h["shard"][0]) for h, _ in headers}
    count = int(first["input"]["count"])
    entries: dict[int, dict[str, Any]] = {}
    for _, rows in journals.values():
        for e in rows:  # a later line for the same record wins; a prediction beats a skip
            i = int(e["index"])
            if "prediction" in e or "prediction" not in entries.get(i, {}):
                entries[i] = e
    missing = [i for i in range(count) if i not in entries]
    if missing or have != set(range(shards)):
        if not required:
            return None
        absent = sorted(set(range(shards)) - have)
        raise UsageError(
            f"{out}: not every shard is finished: {len(missing)} of {count} records have no "
            f"result yet" + (f"; no journal for shard(s) {absent} of {shards}" if absent else "")
        )
    ordered = [entries[i] for i in range(count)]
    predictions = {e["id"]: e["prediction"] for e in ordered if "prediction" in e}
    skipped = [{"id": e["id"], "reason": e["skipped"]} for e in ordered if "prediction" not in e]
    write_json(out, predictions)
    meta = {
        "format": PREDICTIONS_FORMAT,
        "format_version": FORMAT_VERSION,
        "predictions": str(out.name),
        "model": first["model"],
        "input": first["input"],
        "settings": first["settings"],
        "versions": first["versions"],
        "shards": shards,
        "counts": {
            "records": count,
            "predictions": len(predictions),
            "skipped": len(skipped),
            "unsplit": sum(1 for e in ordered if e.get("unsplit")),
        },
        "skipped": skipped,
    }
    write_json(meta_path(out), meta)
    return meta


# ------------------------------------------------------------------------------ generation


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_record(model_dir: Path) -> dict[str, Any]:
    """What identifies the bundle without hashing gigabytes: its manifest, the hashes of its
    small files and the sizes of its weight files."""
    from radixpert.models.bundle import read_manifest

    small = {}
    sizes = {}
    for p in sorted(model_dir.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(model_dir).as_posix()
        if p.suffix in (".safetensors", ".bin", ".pt"):
            sizes[rel] = p.stat().st_size
        elif p.suffix == ".json" and p.stat().st_size < (1 << 20):
            small[rel] = _sha256(p)
    return {
        "path": str(model_dir.resolve()),
        "manifest": read_manifest(model_dir),
        "file_sha256": small,
        "weight_bytes": sizes,
    }


def _versions() -> dict[str, str | None]:
    from radixpert.models.bundle import package_versions

    return package_versions(_VERSIONED)


def _prediction(kind: str, track: str, item: Item, text: str) -> tuple[dict[str, Any], bool]:
    """The output record of one answer, and whether a findings + impression text could not
    be cut into its sections."""
    if kind == "conversations":
        rec: dict[str, Any] = {"model_prediction": text}
        if "reference" in item.extra:
            rec["report"] = item.extra["reference"]
        rec.update(study_id=item.extra["study_id"], task=item.extra["task"])
        return rec, False
    if track == "findings":
        return {"findings": text}, False
    from radixpert.data.reports import split_sections

    sections = split_sections(text)
    if sections["findings"] or sections["impression"]:
        return {"findings": sections["findings"], "impression": sections["impression"]}, False
    return {"report": text}, True


def _shard_of(shard: str | None) -> tuple[int, int]:
    """(K, N): ``--shard K/N``, else the launcher's ``RANK`` / ``WORLD_SIZE``
    (``accelerate launch``, ``torchrun``), else (0, 1).

    The shards need no process group: each writes its own journal, and whichever finishes
    last finds every journal complete and merges them.
    """
    if shard is not None:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise UsageError(f"--shard must be K/N with 0 <= K < N, got {shard!r}")
        return int(m.group(1)), int(m.group(2))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        return int(os.environ.get("RANK", "0")), world
    return 0, 1


def _device(name: str | None) -> str:
    """The torch device: ``name``, else this process's GPU under a launcher, else cpu."""
    import torch

    if name:
        return name
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return "cpu"


def _load_images(item: Item, skip_bad: bool) -> tuple[list[Any] | None, str | None]:
    """The item's images as arrays, or (None, reason) for a bad one under ``skip_bad``."""
    from radixpert.data.images import load_image

    arrays = []
    for p in item.images:
        try:
            if not p.is_file():
                raise ImageError(f"{p}: no such image file")
            arrays.append(load_image(p))
        except ImageError as e:
            if not skip_bad:
                raise ImageError(f"{item.where}: {e} (--skip-bad skips such records)") from None
            return None, str(e)
    return arrays, None


def run_generate(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    settings: GenerateSettings | None = None,
    *,
    image_root: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    shard: str | None = None,
    skip_bad: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Generates (or resumes) the predictions of one shard; merges when all are finished.

    Args:
        model_dir: A bundle (``save_bundle``).
        data: Study records or conversations.
        out: The predictions JSON.
        settings: Track, decoding and prompt settings; ``with_indication`` and ``image_only``
            are taken from the bundle's recipe when ``settings`` is None.
        image_root: Folder of relative image paths (default: the data file's folder).
        split: Only studies of this split.
        limit: Only the first ``limit`` records.
        shard: ``"K/N"``; default the launcher's RANK / WORLD_SIZE, else one shard.
        skip_bad: Count and skip records whose image is missing or unreadable.
        device: Torch device; default this process's GPU (LOCAL_RANK) when present, else cpu.
        progress: Show a progress bar (rate and time left).

    Returns:
        ``{"shard", "shards", "generated", "resumed", "skipped", "seconds", "merged"}``;
        ``merged`` is the meta record when this call wrote the output.
    """
    import torch
    from tqdm.auto import tqdm

    from radixpert.infer import generate as gen
    from radixpert.models.bundle import load_bundle

    model_dir, data, out = Path(model_dir), Path(data), Path(out)
    if not (model_dir / "radixpert_bundle.json").is_file():
        raise InputError(f"{model_dir}: not a model bundle (no radixpert_bundle.json)")
    if settings is None:
        settings = GenerateSettings(**prompt_style(model_dir))
    _validate(settings)
    k, n = _shard_of(shard)
    kind, items = read_items(data, settings, image_root=image_root, split=split, limit=limit)
    header = {
        "format": JOURNAL_FORMAT,
        "version": FORMAT_VERSION,
        "settings": {**asdict(settings), "kind": kind},
        "input": {
            "path": str(data.resolve()),
            "sha256": _sha256(data),
            "count": len(items),
            "split": split,
            "limit": limit,
            "image_root": str(Path(image_root).resolve()) if image_root is not None else None,
        },
        "model": _model_record(model_dir),
        "versions": _versions(),
        "shard": [k, n],
    }
    journal = Journal(journal_path(out, k, n), header)
    mine = [it for it in items if it.index % n == k]
    todo = [it for it in mine if it.index not in journal.done]
    resumed = len(mine) - len(todo)
    tick = time.perf_counter()
    generated, skipped = 0, 0
    if todo:
        dtype = getattr(torch, settings.dtype)
        model, processor = load_bundle(model_dir, dtype=dtype)
        model.to(_device(device))
        gen.check_decoding(model, processor, settings.generate_kwargs())
        todo.sort(key=lambda it: (-_prompt_length(processor, it), it.index))
        bar = tqdm(
            total=len(mine),
            initial=resumed,
            desc=f"generate {k}/{n}" if n > 1 else "generate",
            unit="rec",
            disable=not progress,
            dynamic_ncols=True,
        )
        try:
            for start in range(0, len(todo), settings.batch_size):
                chunk = todo[start : start + settings.batch_size]
                entries, ready, images = [], [], []
                for it in chunk:
                    arrays, reason = _load_images(it, skip_bad)
                    if arrays is None:
                        entries.append({"index": it.index, "id": it.id, "skipped": reason})
                        skipped += 1
                    else:
                        ready.append(it)
                        images.append(arrays)
                if ready:
                    if settings.temperature > 0:  # seeded per batch: the same batch, same text
                        torch.manual_seed(settings.seed * 1_000_003 + ready[0].index)
                    texts = gen.generate_batch(
                        model,
                        processor,
                        images,
                        [it.prompt for it in ready],
                        max_new_tokens=settings.max_new_tokens,
                        **settings.generate_kwargs(),
                    )
                    for it, text in zip(ready, texts):
                        rec, unsplit = _prediction(kind, settings.track, it, text)
                        entry = {"index": it.index, "id": it.id, "prediction": rec}
                        if unsplit:
                            entry["unsplit"] = True
                        entries.append(entry)
                    generated += len(ready)
                journal.append(entries)
                bar.update(len(chunk))
                if skipped:
                    bar.set_postfix(skipped=skipped)
        finally:
            bar.close()
    seconds = time.perf_counter() - tick
    merged = merge_journals(out, required=False)  # None until every shard is finished
    return {
        "shard": k,
        "shards": n,
        "records": len(mine),
        "generated": generated,
        "resumed": resumed,
        "skipped": skipped,
        "seconds": seconds,
        "merged": merged,
    }


def _prompt_length(processor: Any, item: Item) -> int:
    """Tokens of the item's prompt (image tokens included): the key of length grouping."""
    if processor.config.family == "radscribe":
        return sum(len(t["value"]) for t in item.prompt)
    turns = [dict(t) for t in item.prompt]
    if item.images and not any("<image>" in t["value"] for t in turns):
        turns[0]["value"] = "<image>\n" * len(item.images) + turns[0]["value"]
    if processor.config.image_token != "<image>":
        for t in turns:
            t["value"] = t["value"].replace("<image>", processor.config.image_token)
    return len(processor.encode_conversation(turns, add_generation_prompt=True)[0])


def _validate(s: GenerateSettings) -> None:
    if s.track not in TRACKS:
        raise UsageError(f"--track must be one of {', '.join(TRACKS)}, not {s.track!r}")
    if s.cache not in ("dynamic", "static"):
        raise UsageError(f"--cache must be dynamic or static, not {s.cache!r}")
    for name in ("max_new_tokens", "num_beams", "batch_size"):
        if int(getattr(s, name)) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if s.temperature < 0 or not 0 < s.top_p <= 1:
        raise UsageError("--temperature must be >= 0 and --top-p in (0, 1]")
    if s.temperature > 0 and s.num_beams > 1:
        raise UsageError("choose sampling (--temperature > 0) or beam search, not both")
    if s.dtype not in ("float32", "bfloat16", "float16"):
        raise UsageError(f"--dtype must be float32, bfloat16 or float16, not {s.dtype!r}")


# ------------------------------------------------------------------------------ command line


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``generate`` subcommand."""
    p = sub.add_parser(
        "generate",
        help="write a model's reports (or answers) for a test set: batched, resumable, sharded",
        description="Reports for Study records (or answers to conversations' last questions) "
        "into a ReXrank-style prediction JSON that `radixpert evaluate` reads. Finished "
        "records are journalled beside --out; a rerun resumes. Under `accelerate launch` "
        "(or with --shard K/N) each process takes its share; the shards are merged by id.",
    )
    p.add_argument("--model", help="model bundle folder (as training writes it)")
    p.add_argument("--data", help="Study records (.jsonl/.parquet) or conversations (.jsonl)")
    p.add_argument("--out", "-o", required=True, help="predictions .json (written atomically)")
    p.add_argument("--track", default="findings", choices=TRACKS, help="what the report holds")
    p.add_argument("--split", default=None, help="only studies of this split (e.g. test)")
    p.add_argument("--limit", type=int, default=None, help="only the first N records")
    p.add_argument(
        "--image-root", default=None, help="folder of relative image paths (default: the data "
        "file's folder, as training reads them)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=16, help="records per generate call")
    p.add_argument("--max-new-tokens", type=int, default=160, help="most tokens per answer")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams")
    p.add_argument("--temperature", type=float, default=0.0, help="> 0 samples (default 0: greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument(
        "--cache", default="dynamic", choices=["dynamic", "static"],
        help="key/value cache; static: llava, mllama and onevision without HCF",
    )  # fmt: skip
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None, help="torch device (default: cuda if present)")
    p.add_argument(
        "--prompt", default=None, help="instruction in place of the report task's own wording"
    )
    p.add_argument(
        "--indication", default=None, choices=["yes", "no"],
        help="put the study's indication before the instruction (default: as the model's "
        "recipe trained)",
    )  # fmt: skip
    p.add_argument("--shard", default=None, metavar="K/N", help="take records i %% N == K")
    p.add_argument("--merge", action="store_true", help="only merge finished shard journals")
    p.add_argument(
        "--skip-bad", action="store_true",
        help="skip and count records whose image is missing or unreadable (default: stop)",
    )  # fmt: skip
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.merge:
        meta = merge_journals(args.out)
        assert meta is not None
        _say_merged(args.out, meta)
        return 0
    if not args.model or not args.data:
        raise UsageError("--model and --data are required (or --merge)")
    style = prompt_style(args.model) if Path(args.model).is_dir() else {}
    if args.indication is not None:
        style["with_indication"] = args.indication == "yes"
    settings = GenerateSettings(
        track=args.track,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        cache=args.cache,
        batch_size=args.batch_size,
        prompt=args.prompt,
        dtype=args.dtype,
        **style,
    )
    result = run_generate(
        args.model,
        args.data,
        args.out,
        settings,
        image_root=args.image_root,
        split=args.split,
        limit=args.limit,
        shard=args.shard,
        skip_bad=args.skip_bad,
        device=args.device,
        progress=not args.quiet,
    )
    k, n = result["shard"], result["shards"]
    rate = result["generated"] / result["seconds"] if result["seconds"] > 0 else 0.0
    print(
        f"shard {k}/{n}: "
        * (n > 1)
        + f"{result['generated']} generated ({rate:.2f}/s), {result['resumed']} already done, "
        f"{result['skipped']} skipped",
        file=sys.stderr,
    )
    if result["merged"] is not None:
        _say_merged(args.out, result["merged"])
    elif n > 1:
        print(
            f"shard {k}/{n} finished; {args.out} is written when every shard is "
            f"(by the last one, or `radixpert generate --merge --out {args.out}`)",
            file=sys.stderr,
        )
    return 0


def _say_merged(out: str, meta: dict[str, Any]) -> None:
    c = meta["counts"]
    print(f"{c['predictions']} predictions -> {out} (settings in {meta_path(out)})")
    if c["skipped"]:
        print(f"  {c['skipped']} record(s) skipped; listed in {meta_path(out)}")
    if c["unsplit"]:
        print(
            f"  {c['unsplit']} text(s) without FINDINGS/IMPRESSION headers written whole as "
            "'report' (score them with --section auto)"
        )
