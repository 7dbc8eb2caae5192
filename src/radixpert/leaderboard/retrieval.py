"""Image <-> report retrieval with a contrastive encoder: Recall@K, median and mean rank.

How well a model's contrastive image encoder (LLaVA-Rad stage 1, ``objective: contrastive``)
or an open_clip model (BiomedCLIP) matches the studies of a test set to their own reports::

    radixpert evaluate --retrieval --model MODEL --data STUDIES --split test [-o OUT]

    scores = retrieval_scores("runs/llava_rad/00-contrastive/bundle", "test.jsonl")
    scores["image_to_report"]["recall@1"]["value"]

Every study with an image and a non-empty report section is one query in each direction:
its first image (the image the contrastive stage trains on) against the gallery of reports,
its report against the gallery of images. Embeddings are L2-normalised; similarity is the
cosine. Conventions (``recall_at_k``):

- **Hit.** A query is a hit at K when a correct gallery item is among the K most similar.
  Its rank is 1 + the number of wrong items ranked above the best correct one; a wrong item
  with exactly the same score counts as above it (``ties="pessimistic"``), so an encoder
  that maps everything to one point ranks last, not first. ``ties="optimistic"`` is the
  other bound.
- **Identical reports** (``duplicates``). Normal studies often share a report word for word;
  no text encoder can tell such reports apart, and under strict pairing the result would
  hang on how ties are broken (an argsort's order). The default, ``"exact-text"``, follows
  CXR-CLIP's evaluator (kakaobrain/cxr-clip, ``cxrclip/evaluator.py``,
  ``retrieval_image_text``, used for its MIMIC-CXR / Open-I / CheXpert 5x200 R@1/5/10): the
  report gallery holds each distinct text once and an image's correct item is its text;
  report -> image counts every image whose study has that exact text as correct.
  ``"none"`` is strict pairing (one report per study in the gallery, only the study's own
  item correct; an identical report of another study then ties with it and, by the
  pessimistic rule, ranks above it). Texts are compared exactly (no normalisation).
- **K larger than the gallery** gives recall 1 by construction; it is reported and logged.
- **Confidence intervals**: percentile bootstrap over queries with the gallery fixed
  (``stats.bootstrap_replicates``: 500 resamples, seed 0, the same resamples as the report
  metrics' intervals), for each recall and the mean rank.
- **Per-sample vectors** (``per_sample``: rank and 0/1 hit@K per study id, in ``ids`` order)
  let ``radixpert.evaluate.compare.paired_bootstrap`` / ``approximate_randomization``
  compare two encoders scored on the same studies.
- ``chance`` is the expected recall of a random ranking (K/G with one correct item of G).

Literature protocols differ: ConVIRT and GLoRIA report Precision@K on CheXpert 8x200 /
5x200, where any report of the same class counts as correct; many MIMIC-CXR papers report
R@K on the full test split with strict pairing. Record the settings with the numbers (the
results hold them) and compare like with like.

The encoder of a radixpert bundle is its vision tower with the head the contrastive stage
trained (``radixpert.train.contrastive``): for an open_clip tower (BiomedCLIP) the open_clip
projection and the checkpoint's text tower (frozen in that stage), otherwise the head's
learned projections of the tower's pooled output and of the language model's mean-pooled
states. The head's weights are read from ``--head``, else ``contrastive_head.safetensors`` in
the bundle, else the stage's last training checkpoint beside the bundle
(``../train/checkpoints/step-N/model_1.safetensors``); an open_clip tower with none of these
uses its checkpoint's text tower; a language-model head with none is an error. A plain
open_clip model (``hf-hub:org/name`` or a local open_clip folder) is run with its own image
transform and tokenizer; hub files come through huggingface_hub, so ``HF_HUB_OFFLINE=1``
reads only the local cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radixpert.errors import ImageError, InputError, UsageError
from radixpert.evaluate.base import package_versions, progress, resolve_device, show_progress
from radixpert.evaluate.runner import write_results
from radixpert.evaluate.stats import bootstrap_replicates, percentile_interval
from radixpert.train.contrastive import HEAD_FILE  # the head a contrastive stage's bundle holds

logger = logging.getLogger(__name__)

VERSION = 1
"""Version of the retrieval task's protocol; results of one version compare."""


DUPLICATES = ("exact-text", "none")
TIES = ("pessimistic", "optimistic")
SECTIONS = ("findings", "impression", "findings+impression")
DIRECTIONS = ("image_to_report", "report_to_image")
_CHUNK = 1024  # query rows per block of the rank computation


# ---------------------------------------------------------------- ranks and recall


def recall_at_k(
    sim: np.ndarray,
    k_values: Sequence[int] = (1, 5, 10),
    *,
    positives: np.ndarray | None = None,
    ties: str = "pessimistic",
) -> dict[str, Any]:
    """Ranks of the correct items and Recall@K of a query x gallery similarity matrix.

    Args:
        sim: (queries, gallery) similarities, higher is closer; finite.
        k_values: The cut-offs K (integers >= 1).
        positives: The correct gallery items of each query: None for a square ``sim`` whose
            diagonal is correct; an int array (queries,) of one gallery index per query; or a
            boolean (queries, gallery) matrix with at least one True per row (a hit when any
            of them is in the top K).
        ties: ``"pessimistic"``: a wrong item scoring exactly as high as the best correct one
            ranks above it; ``"optimistic"``: below it.

    Returns:
        ``ranks`` (int array, 1 = best; 1 + wrong items above the best correct one),
        ``hits`` ({K: 0/1 float array}), ``recall`` ({K: mean hit}), ``chance`` ({K: the
        expected recall of a uniformly random ranking}), ``median_rank``, ``mean_rank``,
        ``gallery_size`` and ``trivial_k`` (the K >= gallery size, where recall is 1).

    Raises:
        ValueError: For a non-2-D or non-finite ``sim``, a non-square one without
            ``positives``, positives of the wrong shape, out of range or empty for a query,
            a K below 1, or an unknown ``ties``.
    """
    s = np.asarray(sim)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise ValueError(f"sim must be a non-empty (queries, gallery) matrix, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("sim holds NaN or infinite values")
    if ties not in TIES:
        raise ValueError(f"ties must be one of {TIES}, got {ties!r}")
    ks = _check_k(k_values)
    n_q, n_g = s.shape
    pos = _positives(positives, n_q, n_g)
    ranks = np.empty(n_q, dtype=np.int64)
    n_pos = np.empty(n_q, dtype=np.int64)
    for start in range(0, n_q, _CHUNK):
        block = s[start : start + _CHUNK]
        if isinstance(pos, np.ndarray) and pos.ndim == 1:
            rows = np.arange(block.shape[0])
            mask = np.zeros(block.shape, dtype=bool)
            mask[rows, pos[start : start + _CHUNK]] = True
        else:
            mask = pos[start : start + _CHUNK]
        best = np.where(mask, block, -np.inf).max(axis=1, keepdims=True)
        above = block >= best if ties == "pessimistic" else block > best
        ranks[start : start + len(block)] = 1 + (above & ~mask).sum(axis=1)
        n_pos[start : start + len(block)] = mask.sum(axis=1)
    hits = {k: (ranks <= k).astype(float) for k in ks}
    trivial = [k for k in ks if k >= n_g]
    if trivial:
        logger.warning("K %s >= gallery size %d: recall is 1 by construction", trivial, n_g)
    return {
        "ranks": ranks,
        "hits": hits,
        "recall": {k: float(h.mean()) for k, h in hits.items()},
        "chance": {k: float(np.mean(_chance(n_g, n_pos, k))) for k in ks},
        "median_rank": float(np.median(ranks)),
        "mean_rank": float(ranks.mean()),
        "gallery_size": n_g,
        "trivial_k": trivial,
    }


def _check_k(k_values: Sequence[int]) -> list[int]:
    ks = []
    for k in k_values:
        if isinstance(k, bool) or not float(k).is_integer() or k < 1:
            raise ValueError(f"k_values must be integers >= 1, got {list(k_values)}")
        ks.append(int(k))
    if not ks:
        raise ValueError("k_values is empty")
    return sorted(set(ks))


def _positives(positives: np.ndarray | None, n_q: int, n_g: int) -> np.ndarray:
    if positives is None:
        if n_q != n_g:
            raise ValueError(
                f"sim is {n_q} x {n_g}, not square: give positives (the correct gallery "
                "item(s) of each query)"
            )
        return np.arange(n_q)
    p = np.asarray(positives)
    if p.dtype == bool:
        if p.shape != (n_q, n_g):
            raise ValueError(f"positives mask must be {(n_q, n_g)}, got {p.shape}")
        empty = np.flatnonzero(~p.any(axis=1))
        if empty.size:
            raise ValueError(f"queries {empty[:5].tolist()} have no correct gallery item")
        return p
    if p.shape != (n_q,) or not np.issubdtype(p.dtype, np.integer):
        raise ValueError(f"positives must be {n_q} gallery indices or a boolean mask")
    if p.size and (p.min() < 0 or p.max() >= n_g):
        raise ValueError(f"positives index outside the gallery of {n_g}")
    return p


def _chance(n_g: int, n_pos: np.ndarray, k: int) -> np.ndarray:
    """P(some of m correct items among the first k of a random order of n_g):
    1 - C(n_g - m, k) / C(n_g, k)."""
    if k >= n_g:
        return np.ones_like(n_pos, dtype=float)
    out = np.empty(n_pos.shape, dtype=float)
    for m in np.unique(n_pos):
        i = np.arange(k)
        miss = float(np.prod(np.clip((n_g - m - i) / (n_g - i), 0.0, None)))
        out[n_pos == m] = k / n_g if m == 1 else 1.0 - miss  # exact for one correct item
    return out


# ---------------------------------------------------------------- encoders


class ContrastiveEncoder:
    """A llava-family model's contrastive encoder: its vision tower and a ``ContrastiveHead``.

    Args:
        model: The model (eval mode is set), on ``device``.
        processor: Its ``RadProcessor`` (image transform; the language model's tokenizer).
        head: The head the contrastive stage trained (``OpenClipTextHead`` or
            ``LanguageModelTextHead``); moved to ``device``.
        device: Torch device of the model.
        max_length: Report tokens kept, as ``contrastive_batch`` (training: 256).
    """

    def __init__(
        self, model: Any, processor: Any, head: Any, device: str, max_length: int = 256
    ) -> None:
        from radixpert.train.contrastive import OpenClipTextHead

        self.model, self.processor, self.max_length = model.eval(), processor, int(max_length)
        self.head = head.to(device).eval()
        self.open_clip = isinstance(head, OpenClipTextHead)
        self.image_token = getattr(processor.config, "image_token", "<image>")

    def encode_images(self, images: Sequence[np.ndarray]) -> Any:
        """(B, D) image embeddings (not normalised) of grayscale arrays in [0, 1]."""
        import torch

        from radixpert.train.contrastive import _llava_parts, image_features

        pixels = torch.stack([self.processor.preprocess_image(a) for a in images])
        if self.open_clip:
            tower, _ = _llava_parts(self.model)
            param = next(tower.parameters())
            return tower.get_image_features(pixels.to(param.device, param.dtype))
        weight = self.head.image_proj.weight
        return self.head.image_proj(image_features(self.model, pixels).to(weight.dtype))

    def encode_texts(self, texts: Sequence[str]) -> Any:
        """(B, D) report embeddings (not normalised), tokenized as in training."""
        from radixpert.train.contrastive import text_features

        for text in texts:
            if self.image_token in text:
                raise InputError(f"a report contains the image token {self.image_token!r}")
        tokens = self.head.tokenize(list(texts), self.max_length)
        if tokens is None:  # the language model's tokenizer, as contrastive_batch calls it
            tokens = self.processor.tokenizer(
                list(texts),
                padding="longest",
                truncation=True,
                max_length=self.max_length,
                padding_side="right",
                return_tensors="pt",
            )
        if self.open_clip:
            text = self.head.text
            return text(tokens["input_ids"].to(next(text.parameters()).device))
        weight = self.head.text_proj.weight
        pooled = text_features(self.model, tokens["input_ids"], tokens["attention_mask"])
        return self.head.text_proj(pooled.to(weight.device, weight.dtype))


class OpenClipEncoder:
    """An open_clip model (BiomedCLIP) with its own image transform and tokenizer.

    Args:
        clip: The open_clip model, on ``device``.
        transform: Its evaluation image transform (PIL image -> tensor).
        tokenizer: Its tokenizer (``open_clip.get_tokenizer``).
        device: Torch device of the model.
    """

    def __init__(self, clip: Any, transform: Any, tokenizer: Any, device: str) -> None:
        self.clip, self.transform, self.tokenizer = clip.eval(), transform, tokenizer
        self.device = device

    def encode_images(self, images: Sequence[np.ndarray]) -> Any:
        """(B, D) ``encode_image`` of grayscale arrays in [0, 1], as 8-bit RGB PIL images."""
        import torch
        from PIL import Image

        rgb = [
            Image.fromarray(np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)).convert("RGB")
            for a in images
        ]
        pixels = torch.stack([self.transform(im) for im in rgb]).to(self.device)
        param = next(self.clip.visual.parameters())
        return self.clip.encode_image(pixels.to(param.dtype))

    def encode_texts(self, texts: Sequence[str]) -> Any:
        """(B, D) ``encode_text`` of the reports (the tokenizer's context length)."""
        return self.clip.encode_text(self.tokenizer(list(texts)).to(self.device))


@dataclass
class Embeddings:
    """What ``embed`` returns.

    Attributes:
        images: (N, D) float32, L2-normalised: one row per embedded pair.
        texts: (U, D) float32, L2-normalised: one row per distinct report text.
        text_of: (N,) index into ``texts`` of each embedded pair's report.
        kept: Indices (into the input) of the pairs embedded.
        bad: ``(index, reason)`` of pairs left out for an unreadable image (``skip_bad``).
    """

    images: np.ndarray
    texts: np.ndarray
    text_of: np.ndarray
    kept: list[int]
    bad: list[tuple[int, str]] = field(default_factory=list)


def embed(
    encoder: ContrastiveEncoder | OpenClipEncoder,
    images: Sequence[str | Path | np.ndarray],
    reports: Sequence[str],
    *,
    batch_size: int = 32,
    skip_bad: bool = False,
) -> Embeddings:
    """Embeds image-report pairs in batches, with a progress bar (``evaluate.base.progress``).

    Each distinct report text is embedded once, so identical reports get identical
    embeddings (exact ties, whatever the batch they would have fallen in).

    Args:
        encoder: A ``ContrastiveEncoder`` or ``OpenClipEncoder`` (``load_encoder``).
        images: One image per pair: a file (PNG/JPEG/DICOM, read by
            ``radixpert.data.images.load_image``) or a grayscale array in [0, 1].
        reports: One non-empty report per pair.
        batch_size: Images (and reports) per forward pass.
        skip_bad: Leave out (and list in ``bad``) pairs whose image cannot be read; otherwise
            such an image is an error.

    Raises:
        ValueError: On a count mismatch, an empty report or ``batch_size`` < 1.
        ImageError: For an unreadable image without ``skip_bad``.
    """
    import torch

    from radixpert.data.images import load_image

    if len(images) != len(reports):
        raise ValueError(f"{len(images)} images but {len(reports)} reports")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    empty = [i for i, r in enumerate(reports) if not r.strip()]
    if empty:
        raise ValueError(f"reports {empty[:5]} are empty")
    kept: list[int] = []
    bad: list[tuple[int, str]] = []
    rows: list[np.ndarray] = []
    with torch.inference_mode(), progress(len(images), "retrieval images", "images") as bar:
        for start in range(0, len(images), batch_size):
            arrays, index = [], []
            for i in range(start, min(start + batch_size, len(images))):
                item = images[i]
                try:
                    arrays.append(item if isinstance(item, np.ndarray) else load_image(item))
                except ImageError as e:
                    if not skip_bad:
                        raise
                    bad.append((i, str(e)))
                    continue
                index.append(i)
            if arrays:
                rows.append(_normalised(encoder.encode_images(arrays)))
                kept.extend(index)
            bar.update(min(batch_size, len(images) - start))
    if not kept:
        raise ImageError(f"no image could be read ({len(bad)} failed; first: {bad[0][1]})")
    distinct = list(dict.fromkeys(reports[i] for i in kept))
    position = {text: j for j, text in enumerate(distinct)}
    order = sorted(range(len(distinct)), key=lambda j: -len(distinct[j]))  # less padding
    text_rows = np.empty((len(distinct), rows[0].shape[1]), dtype=np.float32)
    with torch.inference_mode(), progress(len(distinct), "retrieval reports") as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            text_rows[chunk] = _normalised(encoder.encode_texts([distinct[j] for j in chunk]))
            bar.update(len(chunk))
    return Embeddings(
        images=np.concatenate(rows),
        texts=text_rows,
        text_of=np.array([position[reports[i]] for i in kept], dtype=np.int64),
        kept=kept,
        bad=bad,
    )


def _normalised(t: Any) -> np.ndarray:
    """L2-normalised float32 numpy rows of a (B, D) tensor."""
    x = t.detach().float().cpu().numpy()
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not (norms > 0).all() or not np.isfinite(x).all():
        raise ValueError("the encoder returned a zero or non-finite embedding")
    return (x / norms).astype(np.float32)


# ---------------------------------------------------------------- loading


def load_encoder(
    model: str | Path,
    *,
    device: str | None = None,
    dtype: str = "float32",
    head: str | Path | None = None,
    max_length: int = 256,
) -> tuple[ContrastiveEncoder | OpenClipEncoder, dict[str, Any]]:
    """The contrastive encoder of a radixpert bundle or an open_clip model.

    Args:
        model: A bundle folder (``radixpert_bundle.json``), a local open_clip folder
            (``open_clip_config.json``) or ``hf-hub:<org>/<name>`` (e.g.
            ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``).
        device: Torch device; None: cuda when visible, else cpu.
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the model's weights.
        head: A bundle's contrastive head weights: a ``.safetensors`` file of its
            ``state_dict``, an accelerate checkpoint folder (``model_1.safetensors``) or a
            stage's ``train`` folder (its ``checkpoint.json``); default: found beside the
            bundle (see the module docstring).
        max_length: Report tokens kept (a bundle's language-model tokenizer).

    Returns:
        (encoder, a record of what was loaded: kind, source, head).

    Raises:
        InputError: For a ``model`` that is none of these, or a bundle whose contrastive
            head cannot be found or does not fit.
    """
    import torch

    device = resolve_device(device)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise UsageError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    path = Path(model)
    if path.is_dir() and (path / "radixpert_bundle.json").is_file():
        from radixpert.models.bundle import load_bundle

        loaded, processor = load_bundle(path, dtype=getattr(torch, dtype))
        loaded.to(device)
        built, where = _bundle_head(loaded, path, head)
        encoder = ContrastiveEncoder(loaded, processor, built, device, max_length)
        return encoder, {"kind": "bundle", "source": str(path.resolve()), "head": where}
    if head is not None:
        raise UsageError("--head applies to a radixpert bundle, not to an open_clip model")
    return _open_clip(str(model), device, dtype)


def _open_clip(name: str, device: str, dtype: str) -> tuple[OpenClipEncoder, dict[str, Any]]:
    from radixpert._optional import require
    from radixpert.models.open_clip_tower import create_open_clip, open_clip_model_name
    from radixpert.paths import offline

    require("open_clip", "PIL", purpose="retrieval with an open_clip model")
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    try:
        full = open_clip_model_name(name)
    except ValueError as e:
        raise InputError(
            f"{name}: not a radixpert bundle (no radixpert_bundle.json) and {e}"
        ) from None
    precision = {"float32": "fp32", "bfloat16": "pure_bf16", "float16": "pure_fp16"}[dtype]
    try:
        clip = create_open_clip(name, precision=precision, device=device)
    except (OSError, RuntimeError) as e:
        hint = " (HF_HUB_OFFLINE is set: only the local cache is read)" if offline() else ""
        raise InputError(f"cannot load open_clip model {full}{hint}: {e}") from e
    transform = image_transform_v2(PreprocessCfg(**clip.visual.preprocess_cfg), is_train=False)
    encoder = OpenClipEncoder(clip, transform, open_clip.get_tokenizer(full), device)
    return encoder, {"kind": "open_clip", "source": full, "head": "open_clip text tower"}


def _bundle_head(model: Any, bundle: Path, head: str | Path | None) -> tuple[Any, str]:
    """The contrastive head of a bundle's model, with its weights, and where they came from."""
    from radixpert.train.contrastive import ContrastiveHead, _llava_parts, is_open_clip_tower

    try:
        tower, _ = _llava_parts(model)
    except TypeError as e:
        raise InputError(f"{bundle}: {e}") from None
    open_clip = is_open_clip_tower(tower)
    found = _find_head_file(Path(head)) if head is not None else _beside(bundle, open_clip)
    if found is None:
        if open_clip:  # the stage keeps the text tower frozen: the checkpoint's is the one
            built = ContrastiveHead.for_model(model)
            return built, f"open_clip text tower of {built.source} (no trained head saved)"
        raise InputError(
            f"{bundle}: no contrastive head found (looked for {HEAD_FILE} in the bundle and "
            "the stage's last checkpoint in ../train); its projections are learned, so give "
            "the contrastive stage's head with --head (a .safetensors file or its "
            "train/checkpoints/step-N folder)"
        )
    state = _head_state(found)
    kwargs = {}
    if "image_proj.weight" in state:
        kwargs["embed_dim"] = int(state["image_proj.weight"].shape[0])
    built = ContrastiveHead.for_model(model, **kwargs)
    missing, unexpected = built.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InputError(
            f"{found}: not this model's contrastive head (missing {missing[:4]}, unexpected "
            f"{unexpected[:4]})"
        )
    return built, str(found)


def _find_head_file(path: Path) -> Path | None:
    """The head weights named by ``--head``: a file, a checkpoint folder or a train folder."""
    from radixpert.train.loop import CHECKPOINT_POINTER

    if path.is_file():
        return path
    if (path / CHECKPOINT_POINTER).is_file():
        pointer = json.loads((path / CHECKPOINT_POINTER).read_text(encoding="utf-8"))
        path = path / pointer["checkpoint"]
    if (path / "model_1.safetensors").is_file():
        return path / "model_1.safetensors"
    raise InputError(
        f"--head {path}: no head weights there (a .safetensors file, a checkpoint folder with "
        "model_1.safetensors, or a train folder with checkpoint.json)"
    )


def _beside(bundle: Path, open_clip: bool) -> Path | None:
    """The head saved with a bundle, else in the last checkpoint of the stage that wrote it.

    ``train_stage`` prepares (model, head, optimizer) with accelerate, which saves the head as
    ``model_1.safetensors`` in each checkpoint. The final checkpoint's head goes with the
    bundle's tower unless early stopping restored an earlier step's weights into the model.
    """
    from radixpert.train.loop import CHECKPOINT_POINTER

    if (bundle / HEAD_FILE).is_file():
        return bundle / HEAD_FILE
    train = bundle.parent / "train"
    if not (train / CHECKPOINT_POINTER).is_file():
        return None
    pointer = json.loads((train / CHECKPOINT_POINTER).read_text(encoding="utf-8"))
    found = train / pointer["checkpoint"] / "model_1.safetensors"
    if not found.is_file():
        return None  # a language-model stage: no head in its checkpoints
    result = bundle.parent / "result.json"
    if result.is_file():
        best = (json.loads(result.read_text(encoding="utf-8")).get("best") or {}).get("step")
        if best is not None and best != pointer.get("step"):
            if open_clip:
                logger.warning(
                    "%s: head of step %s, tower of step %s (early stopping): using the "
                    "frozen open_clip text tower",
                    found,
                    pointer.get("step"),
                    best,
                )
                return None
            raise InputError(
                f"{found} is the head of step {pointer.get('step')} but early stopping put "
                f"step {best}'s weights in {bundle}: no saved head matches; give one with --head"
            )
    return found


def _head_state(path: Path) -> dict[str, Any]:
    """A head state dict from safetensors, without an accelerate/DDP ``module.`` prefix."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    return {k.removeprefix("module."): v for k, v in state.items()}


# ---------------------------------------------------------------- the task


def read_pairs(
    studies_path: str | Path,
    split: str | None = "test",
    *,
    section: str = "findings",
    image_root: str | Path | None = None,
    limit: int | None = None,
) -> tuple[list[str], list[Path], list[str], dict[str, int]]:
    """(ids, first-image paths, report texts, skipped counts) of a Study file's split.

    Args:
        studies_path: Study records (``radixpert data prepare`` output; JSONL or Parquet).
        split: Only studies of this split; None: all.
        section: ``findings`` (what the contrastive stage trains on), ``impression`` or
            ``findings+impression`` (joined by a space, as the report task does).
        image_root: Folder of relative image paths (default: the studies file's folder).
        limit: Keep the first ``limit`` pairs.

    Raises:
        InputError: For a missing file, repeated ids, or no study in the split.
    """
    from radixpert.data.study import read_studies

    if section not in SECTIONS:
        raise UsageError(f"section must be one of {SECTIONS}, got {section!r}")
    path = Path(studies_path)
    if not path.is_file():
        raise InputError(f"{path}: no such studies file")
    root = Path(image_root) if image_root is not None else path.parent
    ids, images, texts = [], [], []
    skipped = {"other_split": 0, "no_image": 0, "no_report": 0}
    splits: set[str] = set()
    for study in read_studies(path):
        splits.add(study.split)
        if split is not None and study.split != split:
            skipped["other_split"] += 1
            continue
        parts = {
            "findings": [study.findings],
            "impression": [study.impression],
            "findings+impression": [study.findings, study.impression],
        }[section]
        text = " ".join(t.strip() for t in parts if t.strip())
        if not study.images:
            skipped["no_image"] += 1
        elif not text:
            skipped["no_report"] += 1
        else:
            ids.append(study.id)
            images.append(root / study.images[0].path)
            texts.append(text)
        if limit is not None and len(ids) >= limit:
            break
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: study ids repeat; retrieval needs one record per study")
    if not ids:
        raise InputError(
            f"{path}: no study of split {split!r} has an image and a {section} text "
            f"(splits: {sorted(splits)}; skipped {skipped})"
        )
    return ids, images, texts, skipped


def score_embeddings(
    emb: Embeddings,
    k: Sequence[int] = (1, 5, 10),
    *,
    duplicates: str = "exact-text",
    ties: str = "pessimistic",
    bootstrap: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Both directions' recall, ranks, intervals and per-sample vectors of ``embed`` output.

    Raises:
        ValueError: For an unknown ``duplicates`` (and as ``recall_at_k``).
    """
    if duplicates not in DUPLICATES:
        raise ValueError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
    same_text = emb.text_of[:, None] == emb.text_of[None, :]
    if duplicates == "exact-text":  # report gallery: the distinct texts
        i2t = recall_at_k(emb.images @ emb.texts.T, k, positives=emb.text_of, ties=ties)
        t2i_pos = same_text
    else:  # report gallery: one report per study (identical ones tie)
        i2t = recall_at_k(emb.images @ emb.texts[emb.text_of].T, k, ties=ties)
        t2i_pos = None
    t2i = recall_at_k(emb.texts[emb.text_of] @ emb.images.T, k, positives=t2i_pos, ties=ties)
    return {name: _summary(r, bootstrap, seed) for name, r in zip(DIRECTIONS, (i2t, t2i))}


def _summary(r: Mapping[str, Any], resamples: int, seed: int) -> dict[str, Any]:
    def interval(values: np.ndarray) -> dict[str, Any] | None:
        if resamples <= 0:
            return None
        return percentile_interval(bootstrap_replicates(values, resamples, seed)).as_dict()

    out: dict[str, Any] = {}
    for kk, hits in r["hits"].items():
        out[f"recall@{kk}"] = {
            "value": r["recall"][kk],
            "ci": interval(hits),
            "chance": r["chance"][kk],
        }
    ranks = r["ranks"]
    out["median_rank"] = r["median_rank"]
    out["mean_rank"] = {"value": r["mean_rank"], "ci": interval(ranks.astype(float))}
    out["gallery_size"] = r["gallery_size"]
    out["trivial_k"] = r["trivial_k"]
    hit_lists = {f"hit@{kk}": h.astype(int).tolist() for kk, h in r["hits"].items()}
    out["per_sample"] = {"rank": ranks.tolist(), **hit_lists}
    return out


def retrieval_scores(
    model_dir_or_id: str | Path,
    studies_path: str | Path,
    split: str | None = "test",
    k: Sequence[int] = (1, 5, 10),
    *,
    duplicates: str = "exact-text",
    ties: str = "pessimistic",
    section: str = "findings",
    image_root: str | Path | None = None,
    head: str | Path | None = None,
    batch_size: int = 32,
    device: str | None = None,
    dtype: str = "float32",
    max_length: int = 256,
    bootstrap: int = 500,
    seed: int = 0,
    limit: int | None = None,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Image -> report and report -> image retrieval of a test set (see the module docstring).

    Args:
        model_dir_or_id: A bundle, a local open_clip folder or ``hf-hub:<org>/<name>``.
        studies_path: Study records; images are read relative to ``image_root``.
        split: The split to score (None: every study).
        k: The cut-offs of Recall@K.
        duplicates: ``"exact-text"`` (default: an identical report text counts as correct)
            or ``"none"`` (strict pairing).
        ties: ``"pessimistic"`` (default) or ``"optimistic"``.
        section: The report text (``findings``, ``impression``, ``findings+impression``).
        image_root: Folder of relative image paths (default: the studies file's folder).
        head: A bundle's contrastive head weights (``load_encoder``).
        batch_size: Pairs per forward pass.
        device: Torch device (default cuda when visible, else cpu).
        dtype: Weights' dtype (``float32``, ``bfloat16``, ``float16``).
        max_length: Report tokens kept (a bundle's language-model tokenizer).
        bootstrap: Bootstrap resamples for the intervals (0: none).
        seed: Bootstrap seed.
        limit: Only the first ``limit`` pairs.
        skip_bad: Leave out (and count) studies whose image cannot be read.

    Returns:
        The results: ``task``, ``version``, ``model``, ``data``, ``settings``,
        ``confidence``, ``image_to_report`` and ``report_to_image`` (``recall@K`` with
        ``value``, ``ci``, ``chance``; ``median_rank``; ``mean_rank``; ``gallery_size``;
        ``per_sample``), ``ids`` (the queries' study ids), ``seconds``, ``versions``.
    """
    tick = time.perf_counter()
    if duplicates not in DUPLICATES:
        raise UsageError(f"duplicates must be one of {DUPLICATES}, got {duplicates!r}")
    if ties not in TIES:
        raise UsageError(f"ties must be one of {TIES}, got {ties!r}")
    ks = _check_k(k)
    ids, images, texts, skipped = read_pairs(
        studies_path, split, section=section, image_root=image_root, limit=limit
    )
    encoder, record = load_encoder(
        model_dir_or_id, device=device, dtype=dtype, head=head, max_length=max_length
    )
    emb = embed(encoder, images, texts, batch_size=batch_size, skip_bad=skip_bad)
    skipped["bad_image"] = len(emb.bad)
    for index, reason in emb.bad[:10]:
        logger.warning("skipped %s: %s", ids[index], reason)
    scores = score_embeddings(
        emb, ks, duplicates=duplicates, ties=ties, bootstrap=bootstrap, seed=seed
    )
    data = Path(studies_path)
    return {
        "task": "retrieval",
        "version": VERSION,
        "model": record,
        "data": {
            "path": str(data.resolve()),
            "sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
            "split": split,
            "section": section,
            "image": "first image of each study",
            "pairs": len(emb.kept),
            "distinct_reports": int(emb.texts.shape[0]),
            "skipped": skipped,
        },
        "settings": {
            "k": ks,
            "duplicates": duplicates,
            "ties": ties,
            "similarity": "cosine",
            "batch_size": batch_size,
            "device": resolve_device(device),
            "dtype": dtype,
            "max_length": max_length,
            "limit": limit,
        },
        "confidence": {
            "level": 0.95,
            "bootstrap_resamples": bootstrap,
            "bootstrap_seed": seed,
            "method": "percentile bootstrap over queries, gallery fixed",
        },
        **scores,
        "ids": [ids[i] for i in emb.kept],
        "seconds": time.perf_counter() - tick,
        "versions": package_versions("radixpert", "torch", "transformers", "open_clip_torch"),
    }


def format_table(results: Mapping[str, Any]) -> str:
    """The recalls (with intervals) and ranks of both directions, as text lines."""
    ks = results["settings"]["k"]
    head = f"{'direction':18s}" + "".join(f"{'R@' + str(kk):>22s}" for kk in ks)
    lines = [head + f"{'median':>8s}{'mean rank':>11s}"]
    for direction in DIRECTIONS:
        r = results[direction]
        cells = []
        for kk in ks:
            value, ci = r[f"recall@{kk}"]["value"], r[f"recall@{kk}"]["ci"]
            band = f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci else ""
            cells.append(f"{value:.3f}{band}".rjust(22))
        mean = r["mean_rank"]["value"]
        lines.append(f"{direction:18s}{''.join(cells)}{r['median_rank']:8.1f}{mean:11.1f}")
    data = results["data"]
    lines.append(
        f"{data['pairs']} pairs, {data['distinct_reports']} distinct reports; "
        f"duplicates={results['settings']['duplicates']}, ties={results['settings']['ties']}"
    )
    return "\n".join(lines)


def main(
    model: str,
    data: str,
    *,
    split: str | None = "test",
    out: str | None = None,
    k: Sequence[int] = (1, 5, 10),
    duplicates: str = "exact-text",
    ties: str = "pessimistic",
    section: str = "findings",
    image_root: str | None = None,
    head: str | None = None,
    batch_size: int = 32,
    device: str | None = None,
    dtype: str = "float32",
    bootstrap: int = 500,
    seed: int = 0,
    limit: int | None = None,
    skip_bad: bool = False,
    quiet: bool = False,
) -> int:
    """``radixpert evaluate --retrieval``: scores, prints the table, writes ``out`` atomically.

    Arguments as ``retrieval_scores``; ``quiet`` turns the progress bars off. Returns 0.
    """
    show_progress(not quiet)
    try:
        results = retrieval_scores(
            model,
            data,
            split,
            k,
            duplicates=duplicates,
            ties=ties,
            section=section,
            image_root=image_root,
            head=head,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            bootstrap=bootstrap,
            seed=seed,
            limit=limit,
            skip_bad=skip_bad,
        )
    finally:
        show_progress(False)
    if out:
        write_results(results, out)
    sys.stdout.write(format_table(results) + "\n")
    if out:
        sys.stdout.write(f"\nresults: {out}\n")
    return 0


__all__ = [
    "DUPLICATES",
    "HEAD_FILE",
    "SECTIONS",
    "TIES",
    "VERSION",
    "ContrastiveEncoder",
    "Embeddings",
    "OpenClipEncoder",
    "embed",
    "format_table",
    "load_encoder",
    "main",
    "read_pairs",
    "recall_at_k",
    "retrieval_scores",
    "score_embeddings",
]
