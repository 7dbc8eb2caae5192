"""Boxes in a model's answer: parsed, validated and drawn on the image.

    from radixpert.infer.grounding import parse_grounding, save_overlay
    found = parse_grounding("Support Devices: [0.44, 0.00, 0.56, 0.26]")
    found.boxes      # [GroundedBox(0.44, 0.0, 0.56, 0.26, label='Support Devices')]
    found.invalid    # boxes that do not describe a region, each with its reason
    save_overlay(gray_image, found.boxes, "overlay.png")

Boxes are the instruction sets' ``[x1, y1, x2, y2]`` in 0-1 image coordinates (see
``radixpert.instruct.tasks``): the four numbers are read by ``instruct.tasks.parse_boxes``, the
parser that grades grounding answers, so chat lists exactly the boxes a grader counts. A label
is the text before a colon that leads up to the box (the detection task's ``"Label: [box]"``,
items separated by ``;``), else none. A box is valid when 0 <= x1 < x2 <= 1 and
0 <= y1 < y2 <= 1; any other is kept in ``invalid`` with the reason, never silently dropped.
A bracketed list of numbers that is not four long is reported as invalid too.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radixpert.instruct.tasks import format_box, parse_boxes

__all__ = [
    "GroundedBox",
    "Grounding",
    "InvalidBox",
    "box_problem",
    "draw_boxes",
    "parse_grounding",
    "save_overlay",
]

# A bracket without nested brackets; parse_boxes decides whether it holds a box.
_BRACKET = re.compile(r"\[[^\[\]]*\]")
_NUMBER_LIST = re.compile(r"\s*-?\d*\.?\d+(\s*,\s*-?\d*\.?\d+)*\s*")
_LABEL_MAX = 60  # a longer "label" is a sentence that happens to end with a colon
# Colour-blind-safe colours (Okabe & Ito), one per box in turn.
COLOURS = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)


@dataclass(frozen=True)
class GroundedBox:
    """A valid box, 0-1 image coordinates, with the label written before it (or None)."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str | None = None

    @property
    def coords(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def __str__(self) -> str:
        box = format_box(self.coords)
        return f"{self.label}: {box}" if self.label else box


@dataclass(frozen=True)
class InvalidBox:
    """Text in the answer that is meant as a box but is not a valid one, and why."""

    text: str
    reason: str
    label: str | None = None


@dataclass
class Grounding:
    """The boxes of one answer, in the order written."""

    boxes: list[GroundedBox] = field(default_factory=list)
    invalid: list[InvalidBox] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"boxes": [{"box": [x1, y1, x2, y2], "label": ...}], "invalid": ...}``."""
        return {
            "boxes": [{"box": list(b.coords), "label": b.label} for b in self.boxes],
            "invalid": [
                {"text": b.text, "reason": b.reason, "label": b.label} for b in self.invalid
            ],
        }


def box_problem(x1: float, y1: float, x2: float, y2: float) -> str | None:
    """Why ``[x1, y1, x2, y2]`` is not a box in 0-1 image coordinates, or None if it is."""
    for name, value in (("x1", x1), ("y1", y1), ("x2", x2), ("y2", y2)):
        if not 0.0 <= value <= 1.0:
            return f"{name} = {value:g} is outside 0-1"
    if not x1 < x2:
        return f"x1 = {x1:g} is not less than x2 = {x2:g} (no width)"
    if not y1 < y2:
        return f"y1 = {y1:g} is not less than y2 = {y2:g} (no height)"
    return None


def _label_before(text: str) -> str | None:
    """The label of a box: what follows the last ``;`` or line break before it, up to a colon
    right before the box."""
    segment = re.split(r"[;\n]", text)[-1].rstrip()
    if not segment.endswith(":"):
        return None
    label = segment[:-1].strip().strip("*-").strip()
    return label if label and len(label) <= _LABEL_MAX else None


def parse_grounding(answer: str) -> Grounding:
    """Every box written in ``answer``, valid ones in ``boxes``, the rest in ``invalid``.

    Args:
        answer: A model's answer, e.g. ``"[0.44, 0.00, 0.56, 0.26]"`` (phrase grounding),
            ``"[0.1, 0.6, 0.2, 0.8] [0.7, 0.6, 0.9, 0.8]"`` (abnormality grounding) or
            ``"Nodule: [0.2, 0.3, 0.3, 0.4]; Pneumothorax: [...]"`` (detection).

    Returns:
        A ``Grounding``; a box's label is the text before ``:`` leading up to it, if any.
    """
    out = Grounding()
    end = 0
    for match in _BRACKET.finditer(answer):
        text = match.group(0)
        label = _label_before(answer[end : match.start()])
        end = match.end()
        found = parse_boxes(text)
        if not found:
            inner = text[1:-1]
            if _NUMBER_LIST.fullmatch(inner):
                count = len(inner.split(","))
                out.invalid.append(
                    InvalidBox(text, f"{count} numbers; a box is [x1, y1, x2, y2]", label)
                )
            continue
        coords = found[0]
        problem = box_problem(*coords)
        if problem:
            out.invalid.append(InvalidBox(text, problem, label))
        else:
            out.boxes.append(GroundedBox(*coords, label=label))
    return out


def draw_boxes(image: Any, boxes: list[GroundedBox], *, min_side: int = 512) -> Any:
    """The image in colour with each box outlined and labelled (its label, else its number).

    Args:
        image: A 2-D grayscale array (float in [0, 1] or uint8, as ``data.images.load_image``
            gives), or a PIL image.
        boxes: Valid boxes in 0-1 coordinates of ``image``.
        min_side: A smaller image is enlarged (by a whole factor) to at least this longer
            side, so that outlines and labels stay legible on a 64-pixel phantom.

    Returns:
        A PIL RGB image. Every coloured pixel lies inside a box; the image itself stays grey.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    if isinstance(image, Image.Image):
        base = image.convert("L")
    else:
        arr = np.asarray(image)
        if arr.ndim != 2:
            raise ValueError(f"expected a 2-D grayscale image, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
        base = Image.fromarray(np.ascontiguousarray(arr))  # uint8 2-D: mode L
    scale = max(1, -(-min_side // max(base.size)))
    if scale > 1:
        base = base.resize((base.width * scale, base.height * scale), Image.Resampling.NEAREST)
    canvas = base.convert("RGB")
    draw = ImageDraw.Draw(canvas)
    w, h = canvas.size
    width = max(2, round(max(w, h) / 256))
    font = ImageFont.load_default(size=max(10, round(max(w, h) / 40)))
    for k, box in enumerate(boxes):
        colour = COLOURS[k % len(COLOURS)]
        # Pixel columns/rows the box covers: [x1 * w, x2 * w) and likewise in y.
        left, top = min(w - 1, int(box.x1 * w)), min(h - 1, int(box.y1 * h))
        right = max(left, min(w - 1, math.ceil(box.x2 * w) - 1))
        bottom = max(top, min(h - 1, math.ceil(box.y2 * h) - 1))
        draw.rectangle((left, top, right, bottom), outline=colour, width=width)
        caption = box.label or f"box {k + 1}"
        # The caption sits inside the box's top-left corner, cut to the box, so that nothing
        # is drawn outside it (a box at the image's edge keeps its caption).
        mask = Image.new("L", canvas.size, 0)
        ImageDraw.Draw(mask).text((left + width + 1, top + width + 1), caption, 255, font=font)
        inside = np.zeros((h, w), dtype=bool)
        inside[top : bottom + 1, left : right + 1] = True
        mask = Image.fromarray(np.where(inside, np.asarray(mask), 0).astype(np.uint8))
        canvas.paste(Image.new("RGB", canvas.size, colour), (0, 0), mask)
    return canvas


def save_overlay(
    image: Any, boxes: list[GroundedBox], path: str | Path, *, min_side: int = 512
) -> Path:
    """``draw_boxes`` written to ``path`` as a PNG, atomically; returns the path."""
    import io

    from radixpert.io import write_bytes

    buffer = io.BytesIO()
    draw_boxes(image, boxes, min_side=min_side).save(buffer, format="PNG")
    return write_bytes(path, buffer.getvalue())
