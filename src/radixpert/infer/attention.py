"""Attention maps: where the model looked, per word of its report (``radixpert explain``).

    from radixpert.infer.attention import explain, write_explanation
    model, processor = load_bundle("runs/demo/model/04-msa3/bundle")
    result = explain(model, processor, "chest.png", phrases=["pleural effusion"])
    result.word_maps[0].grid            # (grid_h, grid_w) attention over the image patches
    write_explanation(result, "explain/chest")   # PNG per word and phrase, sheet, maps, JSON

    radixpert explain --model BUNDLE --image chest.png [--report TEXT] [--out DIR]
                      [--phrase "pleural effusion"] [--heads mean|max] [--layers max|mean|last]

What is measured. The report (generated greedily by ``generate_answers``, or the one given with
``--report``) is scored teacher-forced in one forward pass with ``output_attentions=True`` under
the eager attention implementation (transformers 5 returns no attention weights from SDPA).
A token's map is the attention of the step that generated it: the query at the position before
the token (its logits come from there), over the image's keys:

- llava (plain and HCF) and OneVision: the language model's self-attention at the image-token
  positions (``input_ids == image_token_index``). The patch grid is the vision tower's
  ``image_size / patch_size``; a CLS token among the image tokens (``"full"`` feature strategy on
  a tower with one) is dropped. OneVision: the base view only (its first grid x grid image
  tokens: the letterboxed square at the tower's size); the anyres tiles and their newline tokens
  are left out of the map (their attention is counted in ``image_mass``). HCF: the fused tokens
  take the patches' positions one to one, so they map the same way.
- mllama (plain and HCF): the cross-attention layers' attention over the vision tokens, laid out
  (images, tiles, 1 + patches): the CLS token of each tile is dropped, and the tiles the image
  uses are assembled into the canvas (letterbox processing: tile 0 holds the letterboxed image;
  the checkpoint's own tiling: the aspect ratio's rows x columns, row-major). Tiles masked out
  by ``cross_attention_mask`` get no weight. Self-attention layers are not used.

Aggregation (recorded in ``explain.json``): per layer the mean over heads (``--heads max``: the
largest head), then over layers the max (as LLaVA-Rad's analysis; ``--layers mean`` or
``last``). A word is the tokens whose characters overlap it (words: runs of letters and digits,
with inner ``'`` or ``-``; special tokens belong to none) and its map the mean of their maps; a
phrase's map is the mean over the tokens of all its words, at every place it occurs; a
sentence's (ended by ``.``, ``!`` or ``?`` before white space, or by a line break) the mean
over its words' tokens. Sentences are mapped because a finding's place shows in the words the
image decides (its side, size, severity: "Right pleural effusion, small."), while its noun
often follows from the words before it. Grids keep the raw attention weights (with ``--heads
mean --layers last|mean`` the cells of a grid sum to the attention mass on the mapped image
tokens, at most 1).

Geometry: the map covers the processed canvas (the letterboxed square, or mllama's tiled
canvas); it is upsampled bilinearly to the canvas, the padding cropped away, and the content
resized to the original image's pixels, so an overlay has exactly the input's size and lies on
it as the model saw it. Overlays colour the map (scaled to its own maximum) with a perceptual
colormap whose opacity grows with the attention.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROMPT",
    "HEADS",
    "LAYERS",
    "Explanation",
    "Geometry",
    "Span",
    "add_parser",
    "box_densities",
    "contact_sheet",
    "explain",
    "overlay",
    "project",
    "write_explanation",
]

HEADS: tuple[str, ...] = ("mean", "max")
LAYERS: tuple[str, ...] = ("max", "mean", "last")
DEFAULT_PROMPT = "Write the findings of the radiology report for this chest X-ray."
_WORD = re.compile(r"[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*")
# A sentence ends at . ! or ? followed by white space or the end (not the point of "0.66"), or
# at a line break.
_SENTENCE = re.compile(r"\S.*?(?:[.!?](?=\s|$)|(?=\n)|$)", re.S)
# Anchors of matplotlib's "inferno" (black - purple - orange - pale yellow), interpolated.
_INFERNO = np.array(
    [
        [0, 0, 4],
        [40, 11, 84],
        [101, 21, 110],
        [159, 42, 99],
        [212, 72, 66],
        [245, 125, 21],
        [250, 193, 39],
        [252, 255, 164],
    ],
    dtype=np.float64,
)


@dataclass
class Geometry:
    """Where the map lies on the original image.

    Attributes:
        grid: (rows, columns) of the attention map.
        canvas: (height, width) in pixels of what the grid covers (the processed image).
        content: (top, left, height, width) of the original image inside the canvas, pixels.
        original: (height, width) of the input image.
        note: How the grid was read from the model, in words.
    """

    grid: tuple[int, int]
    canvas: tuple[int, int]
    content: tuple[int, int, int, int]
    original: tuple[int, int]
    note: str


@dataclass
class Span:
    """A word or phrase of the report and its attention map.

    Attributes:
        text: The word or phrase.
        tokens: Indices into ``Explanation.tokens`` of its tokens.
        grid: (rows, columns) attention weights, the mean of its tokens' maps.
        start: Character offset in the report (a phrase: its first occurrence; -1 if absent).
    """

    text: str
    tokens: list[int]
    grid: np.ndarray
    start: int = -1


@dataclass
class Explanation:
    """Attention maps of one report on one image.

    Attributes:
        report: The report the maps are of (decoded, as the model's tokens spell it).
        generated: True if the model wrote it, False if it was given (teacher-forced).
        prompt: The question asked.
        tokens: The report's tokens, decoded one by one.
        token_maps: (tokens, rows, columns) per-token maps.
        image_mass: Per token, its attention mass on all image tokens (mean over heads, of the
            layer the aggregation over layers would pick for the map: for ``max`` the mean over
            layers is given).
        word_maps: One ``Span`` per word, in order.
        phrase_maps: One ``Span`` per requested phrase (empty ``tokens`` if not in the report).
        sentence_maps: One ``Span`` per sentence, in order: a finding with its laterality, size
            and severity words ("Right pleural effusion, small."). Those words are the ones
            the image decides, while a finding's noun often follows from the words before it,
            so the sentence's map is the better picture of where a finding was seen
            (``benchmarks/attention_in_box.py``).
        geometry: How the grid lies on the image.
        aggregation: The settings used, as written to ``explain.json``.
        family: The model family.
        image: The input image (2-D float in [0, 1]).
    """

    report: str
    generated: bool
    prompt: str
    tokens: list[str]
    token_maps: np.ndarray
    image_mass: list[float]
    word_maps: list[Span]
    phrase_maps: list[Span]
    sentence_maps: list[Span]
    geometry: Geometry
    aggregation: dict[str, str]
    family: str
    image: np.ndarray = field(repr=False)


# --------------------------------------------------------------------------------------------
# Running the model
# --------------------------------------------------------------------------------------------


def _aggregate(rows: Any, heads: str, layers: str) -> Any:
    """(layers, heads, keys) -> (keys): heads then layers, as configured."""
    per_layer = rows.mean(dim=1) if heads == "mean" else rows.amax(dim=1)
    if layers == "max":
        return per_layer.amax(dim=0)
    if layers == "mean":
        return per_layer.mean(dim=0)
    return per_layer[-1]


def _eager(model: Any) -> str | None:
    """Switches the model to eager attention; returns the implementation it had."""
    from radixpert.models.families import unwrap

    base = unwrap(model)
    before = getattr(base.config, "_attn_implementation", None)
    if before != "eager":
        base.set_attn_implementation("eager")
    return before


def _restore(model: Any, before: str | None) -> None:
    from radixpert.models.families import unwrap

    if before not in (None, "eager"):
        try:
            unwrap(model).set_attn_implementation(before)
        except (ValueError, ImportError) as err:  # pragma: no cover - environment specific
            logger.warning("could not restore attention implementation %s: %s", before, err)


def _vision_grid(vision_config: Any) -> int | None:
    size, patch = (
        getattr(vision_config, "image_size", None),
        getattr(vision_config, "patch_size", None),
    )
    if isinstance(size, int) and isinstance(patch, int) and patch > 0:
        return size // patch
    return None


def _llava_keys(model: Any, input_ids: Any, family: str) -> tuple[Any, Any, str]:
    """(all image positions, mapped positions row-major, note) for llava and OneVision."""
    from radixpert.models.families import unwrap

    config = unwrap(model).config
    token = getattr(config, "image_token_index", None)
    if token is None:
        token = config.image_token_id
    positions = (input_ids[0] == int(token)).nonzero().flatten()
    n = int(positions.numel())
    if n == 0:
        raise ValueError("the prompt holds no image tokens: nothing to map")
    side = _vision_grid(config.vision_config)
    if family == "llava_onevision":
        if side is None or side * side > n:
            raise ValueError(f"OneVision: {n} image tokens, cannot find the base grid")
        mapped = positions[: side * side]
        note = (
            f"OneVision base view: the first {side}x{side} of {n} image tokens (the "
            "letterboxed square); anyres tiles and newline tokens not mapped"
        )
        return positions, mapped, note
    if side is None or side * side not in (n, n - 1):
        root = math.isqrt(n)
        side = root if root * root == n else math.isqrt(n - 1)
        if side * side not in (n, n - 1):
            raise ValueError(f"{n} image tokens are not a square patch grid (with or without CLS)")
    cls = n == side * side + 1
    mapped = positions[1:] if cls else positions
    note = f"llava image tokens: {side}x{side} patches" + (" (CLS token dropped)" if cls else "")
    return positions, mapped, note


def _mllama_layout(
    processor: Any, batch: dict[str, Any], vision_config: Any
) -> tuple[int, int, int, int]:
    """(tile rows, tile columns, tiles, patches per tile incl. CLS) of the one image."""
    side = _vision_grid(vision_config)
    if side is None:
        raise ValueError("mllama vision config without image_size / patch_size")
    tiles = int(batch["pixel_values"].shape[2])
    ratio = int(batch["aspect_ratio_ids"][0, 0])
    if processor.config.image_transform == "native":
        from transformers.models.mllama.image_processing_mllama import (
            get_all_supported_aspect_ratios,
        )

        rows, cols = get_all_supported_aspect_ratios(tiles)[ratio - 1]
    else:
        rows, cols = 1, 1
    return rows, cols, tiles, side * side + 1


def _target_positions(batch: dict[str, Any], tokenizer: Any) -> list[int]:
    """Positions of the answer's tokens (labels set), special tokens left out."""
    from radixpert.models.connectors import IGNORE_INDEX

    labels = batch["labels"][0]
    # Markup (eos, end-of-turn, image tokens) is special or added; it belongs to no word.
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    return [
        int(p)
        for p in (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        if int(batch["input_ids"][0, p]) not in special
    ]


def _spans(tokenizer: Any, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded answer and each token's character span in it (incremental decoding, so it
    works for byte-level, Metaspace and WordPiece tokenizers alike)."""
    spans: list[tuple[int, int]] = []
    previous = ""
    for k in range(len(ids)):
        text = tokenizer.decode(list(ids[: k + 1]), skip_special_tokens=True)
        common = 0
        while common < min(len(previous), len(text)) and previous[common] == text[common]:
            common += 1
        start = min(common, len(previous))
        spans.append((start, len(text)))
        previous = text
    return previous, spans


def _words(text: str, spans: list[tuple[int, int]]) -> list[tuple[str, int, list[int]]]:
    """(word, start, token indices) for each word of ``text``."""
    out = []
    for m in _WORD.finditer(text):
        tokens = [k for k, (a, b) in enumerate(spans) if a < m.end() and b > m.start()]
        if tokens:
            out.append((m.group(0), m.start(), tokens))
    return out


def _phrase(phrase: str, words: list[tuple[str, int, list[int]]]) -> tuple[list[int], int]:
    """Token indices of every occurrence of ``phrase`` (as a word sequence) and the first start."""
    wanted = [w.lower() for w in _WORD.findall(phrase)]
    if not wanted:
        raise ValueError(f"--phrase {phrase!r}: no words in it")
    lower = [w.lower() for w, _, _ in words]
    tokens: list[int] = []
    first = -1
    for i in range(len(lower) - len(wanted) + 1):
        if lower[i : i + len(wanted)] == wanted:
            first = words[i][1] if first < 0 else first
            for _, _, toks in words[i : i + len(wanted)]:
                tokens.extend(t for t in toks if t not in tokens)
    return tokens, first


def _as_gray(image: Any) -> np.ndarray:
    from radixpert.models.processor import _as_gray as gray

    return gray(image)


def _geometry(
    processor: Any,
    gray: np.ndarray,
    grid: tuple[int, int],
    note: str,
    layout: tuple[int, int] | None = None,
) -> Geometry:
    """Canvas and content box of the processed image."""
    from radixpert.data.images import resize_letterbox

    size = int(processor.config.image_size)
    src_h, src_w = gray.shape
    if layout is not None and processor.config.image_transform == "native":
        from transformers.models.mllama.image_processing_mllama import (
            get_image_size_fit_to_canvas,
        )

        rows, cols = layout
        canvas = (rows * size, cols * size)
        new_h, new_w = get_image_size_fit_to_canvas(src_h, src_w, canvas[0], canvas[1], size)
        return Geometry(
            grid,
            canvas,
            (0, 0, int(new_h), int(new_w)),
            (src_h, src_w),
            note + "; the checkpoint's tiling: image at the top left, padded right and below",
        )
    _, tf = resize_letterbox(gray, size, resample=processor.config.resample)
    return Geometry(
        grid,
        (tf.out_h, tf.out_w),
        (tf.pad_top, tf.pad_left, tf.new_h, tf.new_w),
        (src_h, src_w),
        note + "; letterboxed square, padding cropped",
    )


def explain(
    model: Any,
    processor: Any,
    image: Any,
    *,
    report: str | None = None,
    prompt: str = DEFAULT_PROMPT,
    phrases: Sequence[str] = (),
    heads: str = "mean",
    layers: str = "max",
    max_new_tokens: int = 160,
) -> Explanation:
    """Attention maps of a report on an image, per token, word and phrase.

    Args:
        model: A llava (plain or HCF), OneVision or mllama (plain or HCF) model, peft or not.
        processor: Its ``RadProcessor``.
        image: A path (PNG/JPEG/DICOM), a 2-D array or a PIL image.
        report: The report to score teacher-forced; None generates one greedily (then
            ``image`` must be a path, as ``generate_answers`` reads it).
        prompt: The question (an ``<image>`` placeholder is put before it).
        phrases: Phrases whose maps to give as well.
        heads: ``"mean"`` or ``"max"`` over the heads of a layer.
        layers: ``"max"``, ``"mean"`` or ``"last"`` over the layers.
        max_new_tokens: Most tokens of a generated report.

    Returns:
        The ``Explanation``.

    Raises:
        ValueError: An unknown aggregation, an empty report, a family without image tokens
            (RadScribe) or a prompt without image tokens.
    """
    import torch

    from radixpert.models.families import family_of, unwrap

    if heads not in HEADS:
        raise ValueError(f"heads must be one of {HEADS}, got {heads!r}")
    if layers not in LAYERS:
        raise ValueError(f"layers must be one of {LAYERS}, got {layers!r}")
    family = family_of(model)
    if family == "radscribe":
        raise ValueError("RadScribe has no image tokens in a language model: no attention maps")
    gray = _as_gray(image)
    human = {"from": "human", "value": f"<image>\n{prompt}"}
    generated = report is None
    if report is None:
        if not isinstance(image, str | Path):
            raise ValueError("to generate the report, give the image as a file (or give report)")
        from radixpert.infer.generate import generate_answers

        path = Path(image).resolve()
        conv = {"image": str(path), "conversations": [human]}
        report = generate_answers(
            model, processor, [conv], batch_size=1, max_new_tokens=max_new_tokens, progress=False
        )[0]
    if not report.strip():
        raise ValueError("the report is empty: nothing to map")
    batch = processor([gray], [[human, {"from": "gpt", "value": report}]])
    tokenizer = processor.tokenizer
    targets = _target_positions(batch, tokenizer)
    if not targets:
        raise ValueError("the report has no tokens after encoding (cut by max_length?)")
    param = next(model.parameters())
    inputs = {
        k: v.to(param.device, param.dtype) if v.is_floating_point() else v.to(param.device)
        for k, v in batch.items()
        if k != "labels"
    }
    base = unwrap(model)
    was_training = model.training
    model.eval()
    before = _eager(model)
    try:
        with torch.no_grad():
            out = model(**inputs, output_attentions=True, use_cache=False)
    finally:
        _restore(model, before)
        model.train(was_training)
    length = int(inputs["input_ids"].shape[1])
    # The language model's layers only (their queries are the text positions).
    attentions = [a for a in (out.attentions or ()) if a is not None and a.shape[-2] == length]
    depth = int(base.config.text_config.num_hidden_layers)
    if len(attentions) != depth:
        raise RuntimeError(
            f"{type(base).__name__} returned {len(attentions)} attention maps "
            f"for {depth} language-model layers"
        )
    queries = torch.tensor([p - 1 for p in targets])
    layout = None
    if family == "mllama":
        cross = list(base.config.text_config.cross_attention_layers or [])
        stacked = torch.stack([attentions[i][0][:, queries].float() for i in cross])
        rows, cols, tiles, per_tile = _mllama_layout(processor, batch, base.config.vision_config)
        keys = stacked.shape[-1]
        if keys % (tiles * per_tile):
            raise ValueError(f"{keys} vision keys are not images x {tiles} tiles x {per_tile}")
        side = math.isqrt(per_tile - 1)
        # (layers, heads, queries, images, tiles, 1 + patches): image 0, the used tiles, no CLS.
        shaped = stacked.reshape(*stacked.shape[:3], -1, tiles, per_tile)[:, :, :, 0]
        mass_keys = shaped[..., : rows * cols, :].flatten(-2)
        patches = shaped[..., : rows * cols, 1:]
        grid = (rows * side, cols * side)
        patches = patches.reshape(*patches.shape[:3], rows, cols, side, side)
        patches = patches.permute(0, 1, 2, 3, 5, 4, 6).reshape(*patches.shape[:3], -1)
        note = (
            f"mllama cross-attention layers {cross}: {rows}x{cols} tile(s) of "
            f"{side}x{side} patches (CLS dropped)"
        )
        layout = (rows, cols)
    else:
        all_pos, mapped, note = _llava_keys(base, batch["input_ids"], family)
        stacked = torch.stack([a[0][:, queries].float() for a in attentions])
        mass_keys = stacked[..., all_pos]
        patches = stacked[..., mapped]
        side = math.isqrt(int(mapped.numel()))
        grid = (side, side)
    # (layers, heads, queries, keys) -> per query (keys,)
    maps = torch.stack([_aggregate(patches[:, :, q], heads, layers) for q in range(len(targets))])
    per_layer_mass = mass_keys.sum(-1).mean(dim=1)  # (layers, queries), mean over heads
    mass = per_layer_mass[-1] if layers == "last" else per_layer_mass.mean(dim=0)
    token_maps = maps.reshape(len(targets), *grid).numpy().astype(np.float32)
    ids = [int(batch["input_ids"][0, p]) for p in targets]
    text, spans = _spans(tokenizer, ids)
    # End-of-turn markup that a tokenizer spells out in ordinary tokens follows the report.
    where = text.find(report.strip())
    if where >= 0:
        end = where + len(report.strip())
        keep = [k for k, (a, _) in enumerate(spans) if a < end] or list(range(len(spans)))
        token_maps, spans = token_maps[keep], [spans[k] for k in keep]
        mass = mass[keep]
        text = text[:end]
    tokens = [text[a:b] for a, b in spans]
    words = _words(text, spans)
    word_maps = [Span(w, toks, token_maps[toks].mean(axis=0), start) for w, start, toks in words]
    phrase_maps = []
    for phrase in phrases:
        toks, start = _phrase(phrase, words)
        empty = np.zeros(grid, dtype=np.float32)
        phrase_maps.append(
            Span(phrase, toks, token_maps[toks].mean(axis=0) if toks else empty, start)
        )
    sentence_maps = []
    for m in _SENTENCE.finditer(text):
        toks = [t for _, start, ts in words if m.start() <= start < m.end() for t in ts]
        if toks:
            sentence_maps.append(Span(m.group(0).strip(), toks, token_maps[toks].mean(axis=0),
                                      m.start()))  # fmt: skip
    return Explanation(
        report=text.strip(),
        generated=generated,
        prompt=prompt,
        tokens=tokens,
        token_maps=token_maps,
        image_mass=[float(m) for m in mass],
        word_maps=word_maps,
        phrase_maps=phrase_maps,
        sentence_maps=sentence_maps,
        geometry=_geometry(processor, gray, grid, note, layout),
        aggregation={
            "heads": heads,
            "layers": layers,
            "query": "the position before each token (the step that generated it)",
            "word": "mean over the word's tokens",
            "phrase": "mean over the tokens of all its words, every occurrence",
            "sentence": "mean over the tokens of its words",
            "overlay": "map scaled to its maximum; inferno colormap, opacity with attention",
        },
        family=family,
        image=gray,
    )


# --------------------------------------------------------------------------------------------
# Maps on the image
# --------------------------------------------------------------------------------------------


def _resize(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image as PILImage

    img = PILImage.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), PILImage.Resampling.BILINEAR), dtype=np.float32)


def project(grid: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A grid map on the original image's pixels: upsampled to the canvas, the padding
    cropped, the content resized to the original size. Shape ``geometry.original``."""
    canvas = _resize(grid, *geometry.canvas)
    top, left, h, w = geometry.content
    content = canvas[top : top + h, left : left + w]
    return _resize(content, *geometry.original)


def _colormap(values: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8, inferno."""
    x = np.clip(values, 0.0, 1.0) * (len(_INFERNO) - 1)
    low = np.floor(x).astype(int)
    high = np.minimum(low + 1, len(_INFERNO) - 1)
    frac = (x - low)[..., None]
    return (_INFERNO[low] * (1 - frac) + _INFERNO[high] * frac).round().astype(np.uint8)


def overlay(image: np.ndarray, grid: np.ndarray, geometry: Geometry, alpha: float = 0.6) -> Any:
    """The map over the image (a PIL RGB image of the original's size).

    Args:
        image: The original 2-D image in [0, 1].
        grid: A (rows, columns) map.
        geometry: Where the grid lies (``Explanation.geometry``).
        alpha: Opacity at the map's maximum (it falls to 0 with the attention).
    """
    from PIL import Image as PILImage

    heat = np.clip(project(grid, geometry), 0.0, None)
    peak = float(heat.max())
    heat = heat / peak if peak > 0 else heat
    base = np.repeat((np.clip(image, 0, 1) * 255.0)[..., None], 3, axis=-1)
    weight = (alpha * heat)[..., None]
    mixed = base * (1 - weight) + _colormap(heat).astype(np.float64) * weight
    return PILImage.fromarray(mixed.round().clip(0, 255).astype(np.uint8), mode="RGB")


def contact_sheet(
    images: Sequence[Any], labels: Sequence[str], *, thumb: int = 256, columns: int = 6
) -> Any:
    """The overlays side by side, each captioned, as one PIL image."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    caption = 18
    sheet = PILImage.new("RGB", (columns * thumb, rows * (thumb + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, label) in enumerate(zip(images, labels)):
        r, c = divmod(i, columns)
        scale = thumb / max(img.width, img.height)  # small images are enlarged too
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        small = img.resize(size, PILImage.Resampling.BILINEAR)
        x, y = c * thumb, r * (thumb + caption)
        sheet.paste(small, (x + (thumb - small.width) // 2, y + (thumb - small.height) // 2))
        draw.text((x + 4, y + thumb + 2), label[:40], fill="black")
    return sheet


def box_densities(heat: np.ndarray, box: Sequence[float]) -> tuple[float, float]:
    """(mass per pixel inside, mass per pixel outside) a 0-1 box (x1, y1, x2, y2) of a map on
    the image (``project``); negative values count as 0."""
    heat = np.clip(np.asarray(heat, dtype=np.float64), 0.0, None)
    h, w = heat.shape
    x1, y1, x2, y2 = box
    inside = np.zeros_like(heat, dtype=bool)
    c0, c1 = math.floor(x1 * w), math.ceil(x2 * w)
    r0, r1 = math.floor(y1 * h), math.ceil(y2 * h)
    inside[max(r0, 0) : min(r1, h), max(c0, 0) : min(c1, w)] = True
    n_in, n_out = int(inside.sum()), int((~inside).sum())
    if n_in == 0 or n_out == 0:
        raise ValueError(f"box {tuple(box)} covers none or all of the {h}x{w} map")
    return float(heat[inside].sum() / n_in), float(heat[~inside].sum() / n_out)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _shorten(text: str, most: int = 28) -> str:
    """A sheet label: the text, cut at a word with an ellipsis when longer than ``most``."""
    if len(text) <= most:
        return text
    return text[: most - 1].rsplit(" ", 1)[0] + "\u2026"


def _slug(text: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "token"
    name, k = base, 2
    while name in used:
        name, k = f"{base}-{k}", k + 1
    used.add(name)
    return name


def _png_bytes(img: Any) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_explanation(
    result: Explanation, out_dir: str | Path, *, source: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Writes the overlays, the sheet, the raw maps and ``explain.json`` into ``out_dir``.

    The folder is written aside and renamed into place when complete (``io.atomic_dir``).

    Layout: ``words/NN-word.png`` (one per word, in report order), ``phrases/phrase.png``,
    ``sentences/NN-sentence.png``, ``sheet.png`` (phrases first, then sentences, then words),
    ``token_maps.npy`` (tokens, rows, columns), ``maps.json`` (every word's, phrase's and
    sentence's grid) and ``explain.json`` (report, tokens, aggregation, geometry, files, per
    word, phrase and sentence its tokens and image mass).

    Returns:
        The ``explain.json`` content.
    """
    import io

    from radixpert.io import atomic_dir

    geometry = result.geometry
    used: set[str] = set()
    sheet: dict[str, list[tuple[Any, str]]] = {"phrase": [], "sentence": [], "word": []}

    def write(tmp: Path, kind: str, span: Span, name: str, label: str) -> dict[str, Any]:
        """One span's overlay file and its ``explain.json`` entry."""
        entry: dict[str, Any] = {
            "kind": kind, "text": span.text, "start": span.start, "tokens": span.tokens,
        }  # fmt: skip
        if kind == "phrase":
            entry["found"] = bool(span.tokens)
        if span.tokens:
            img = overlay(result.image, span.grid, geometry)
            (tmp / name).write_bytes(_png_bytes(img))
            entry["file"] = name
            entry["image_mass"] = float(np.mean([result.image_mass[t] for t in span.tokens]))
            sheet[kind].append((img, label))
        return entry

    with atomic_dir(out_dir) as tmp:
        (tmp / "words").mkdir()
        entries = [
            write(tmp, "word", span, f"words/{i:03d}-{_slug(span.text, used)}.png", span.text)
            for i, span in enumerate(result.word_maps)
        ]
        if any(span.tokens for span in result.phrase_maps):
            (tmp / "phrases").mkdir()
        phrase_entries = [
            write(tmp, "phrase", span, f"phrases/{_slug(span.text, used)}.png", f'"{span.text}"')
            for span in result.phrase_maps
        ]
        if result.sentence_maps:
            (tmp / "sentences").mkdir()
        sentence_entries = [
            write(
                tmp,
                "sentence",
                span,
                f"sentences/{i:02d}-{_slug(span.text, used)}.png",
                _shorten(span.text),
            )
            for i, span in enumerate(result.sentence_maps)
        ]
        # The sheet: phrases first, then sentences, then words.
        ordered = sheet["phrase"] + sheet["sentence"] + sheet["word"]
        sheet_images, sheet_labels = [img for img, _ in ordered], [lab for _, lab in ordered]
        if sheet_images:
            (tmp / "sheet.png").write_bytes(_png_bytes(contact_sheet(sheet_images, sheet_labels)))
        buf = io.BytesIO()
        np.save(buf, result.token_maps)
        (tmp / "token_maps.npy").write_bytes(buf.getvalue())
        maps = {
            "grid": list(geometry.grid),
            "words": [{"text": s.text, "grid": s.grid.tolist()} for s in result.word_maps],
            "phrases": [{"text": s.text, "grid": s.grid.tolist()} for s in result.phrase_maps],
            "sentences": [{"text": s.text, "grid": s.grid.tolist()} for s in result.sentence_maps],
        }
        (tmp / "maps.json").write_text(json.dumps(maps) + "\n", encoding="utf-8")
        summary = {
            "format": "radixpert.explain",
            "format_version": 1,
            **(source or {}),
            "family": result.family,
            "report": result.report,
            "generated": result.generated,
            "prompt": result.prompt,
            "tokens": result.tokens,
            "image_mass": result.image_mass,
            "aggregation": result.aggregation,
            "geometry": {
                "grid": list(geometry.grid),
                "canvas": list(geometry.canvas),
                "content_top_left_height_width": list(geometry.content),
                "original_height_width": list(geometry.original),
                "note": geometry.note,
            },
            "words": entries,
            "phrases": phrase_entries,
            "sentences": sentence_entries,
            "files": {
                "sheet": "sheet.png" if sheet_images else None,
                "token_maps": "token_maps.npy",
                "maps": "maps.json",
            },
        }
        (tmp / "explain.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Registers ``radixpert explain``."""
    p = sub.add_parser(
        "explain",
        help="attention maps of a report over the image, per word and phrase (PNG overlays)",
        description=(
            "Write where the model looked for each word of its report: the attention from the "
            "word's tokens to the image tokens (llava, OneVision: the language model's "
            "self-attention; mllama: its cross-attention layers), mean over heads and max over "
            "layers by default, overlaid on the image as one PNG per word and phrase, plus a "
            "contact sheet, the raw maps and explain.json."
        ),
    )
    p.add_argument("--model", required=True, help="a model bundle folder (radixpert train)")
    p.add_argument("--image", required=True, help="the radiograph (PNG, JPEG or DICOM)")
    p.add_argument("--report", help="score this report teacher-forced instead of generating one")
    p.add_argument("--out", "-o", help="output folder (default: explain-<image name>)")
    p.add_argument(
        "--phrase",
        action="append",
        default=[],
        help="a phrase of the report to map as a whole (repeatable)",
    )
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question asked with the image")
    p.add_argument("--heads", choices=HEADS, default="mean", help="over the heads of a layer")
    p.add_argument("--layers", choices=LAYERS, default="max", help="over the layers")
    p.add_argument("--max-new-tokens", type=int, default=160, help="longest generated report")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from radixpert.data.images import load_image
    from radixpert.errors import UsageError
    from radixpert.models.bundle import MANIFEST_FILE, load_bundle

    model_dir, image_path = Path(args.model), Path(args.image)
    if not (model_dir / MANIFEST_FILE).is_file():
        raise UsageError(f"--model {model_dir}: not a model bundle (no {MANIFEST_FILE})")
    image = load_image(image_path)  # ImageError names the file
    out = Path(args.out) if args.out else Path(f"explain-{image_path.stem}")
    model, processor = load_bundle(model_dir)
    try:
        result = explain(
            model,
            processor,
            image_path if args.report is None else image,
            report=args.report,
            prompt=args.prompt,
            phrases=args.phrase,
            heads=args.heads,
            layers=args.layers,
            max_new_tokens=args.max_new_tokens,
        )
    except ValueError as err:
        raise UsageError(f"explain {image_path}: {err}") from err
    summary = write_explanation(
        result, out, source={"model": str(model_dir), "image": str(image_path)}
    )
    print(f"report: {result.report}")
    for entry in summary["phrases"]:
        if not entry["found"]:
            print(f"phrase {entry['text']!r} is not in the report", file=sys.stderr)
    print(
        f"{len(summary['words'])} word maps, {len(summary['sentences'])} sentence maps, "
        f"{sum(e['found'] for e in summary['phrases'])} phrase maps -> {out}"
    )
    return 0
