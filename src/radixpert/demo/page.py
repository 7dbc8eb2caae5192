"""The HTML report page of `radixpert demo`: one self-contained file that works offline.

Everything is inline: images as base64 PNG data URIs, boxes as SVG rectangles laid over them,
the loss curves as an SVG line chart drawn here (no matplotlib, no JavaScript, no external
URL). The page shows the metric table (model, image-shuffled control, difference), the run's
other scalars, the loss curves, and one card per sample with the true (green) and predicted
(orange, dashed) boxes, the generated, reference and control reports, and the finding labels
with matches marked. All text is HTML-escaped.

Usage::

    from radixpert.demo.page import Sample, write_page

    sample = Sample(
        study_id="phantom-000000", image=Path("out/ph/images/phantom-000000.png"),
        generated="Mild cardiomegaly.", reference="Cardiomegaly. No effusion.",
        true_boxes=[("Cardiomegaly", (0.30, 0.45, 0.75, 0.80))],
        pred_boxes=[("Cardiomegaly", (0.32, 0.47, 0.70, 0.78))],
        true_labels=["Cardiomegaly"], pred_labels=["Cardiomegaly"],
    )
    write_page(
        Path("out/demo/report.html"), title="radixpert demo",
        summary={"model": {"findings_f1": 0.61}, "control": {"findings_f1": 0.22},
                 "train_seconds": 95.2, "device": "cpu"},
        samples=[sample],
        curves={"model train loss": [(0, 2.3), (10, 1.1)], "control train loss": [(0, 2.3)]},
    )
"""

from __future__ import annotations

import base64
import errno
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["DISPLAY_WIDTH", "LEADING_METRICS", "Sample", "line_chart_svg", "write_page"]

DISPLAY_WIDTH = 256  # px; every sample image is shown this wide, boxes drawn at this scale
LEADING_METRICS = ("findings_f1", "grounding_map50", "laterality_acc")
MISSING = "–"  # en dash: a value that is absent, None or NaN
TRUE_COLOUR, PRED_COLOUR = "#1a9850", "#f46d43"
# Tableau 10: distinct on screen and in grayscale print.
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
)  # fmt: skip

Box = tuple[str, tuple[float, float, float, float]]


@dataclass
class Sample:
    """One study shown on the page.

    Attributes:
        study_id: the study's id, shown as the card's heading.
        image: a grayscale PNG on disk.
        generated: the model's report.
        reference: the true report.
        true_boxes: (label, (x1, y1, x2, y2)) in 0–1 image coordinates.
        pred_boxes: the model's boxes, same form.
        true_labels: the positive findings of the study.
        pred_labels: the positive findings the model reported.
        control_generated: the image-shuffled control model's report, if any.
    """

    study_id: str
    image: Path
    generated: str
    reference: str
    true_boxes: list[Box]
    pred_boxes: list[Box]
    true_labels: list[str]
    pred_labels: list[str]
    control_generated: str | None = None


# ----------------------------------------------------------------------------- numbers


def _number(v: Any) -> float | None:
    """`v` as a finite float, or None when it is None, NaN, infinite or not a number."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _fmt(v: Any) -> str:
    """A table cell: numbers to 3 decimals, None / NaN as a dash, anything else as text."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return MISSING
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return escape(str(v))
    return f"{v:.3f}"


def _ticks(lo: float, hi: float, n: int = 5) -> tuple[list[float], int]:
    """About `n` round tick values (1, 2 or 5 × 10^k apart) in [lo, hi], and their decimals."""
    raw = (hi - lo) / n
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if (hi - lo) / (m * mag) <= n)
    decimals = max(0, -math.floor(math.log10(step)))
    first = math.ceil(lo / step - 1e-9)
    ticks = [k * step for k in range(first, math.floor(hi / step + 1e-9) + 1)]
    return ticks, decimals


def _span(values: list[float], pad: float) -> tuple[float, float]:
    """The range of `values`, widened by `pad` of its length (or ±1 / ±10% when flat)."""
    lo, hi = min(values), max(values)
    if hi == lo:
        half = abs(lo) * 0.1 or 1.0
        return lo - half, hi + half
    return lo - pad * (hi - lo), hi + pad * (hi - lo)


# ----------------------------------------------------------------------------- chart


def line_chart_svg(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    width: int = 640,
    height: int = 320,
    x_label: str = "step",
    y_label: str = "loss",
) -> str:
    """An inline SVG line chart: one polyline per series with data, linear axes, a legend.

    Points whose x or y is not finite are dropped, and the legend says how many. A series with
    no points is listed in the legend as "no data" and draws nothing; a single point is also
    marked with a dot, since a one-point polyline is invisible.

    Args:
        series: name -> (x, y) points, drawn in their given order.
        width: the SVG's width in px.
        height: the SVG's height in px (the legend takes a line per series from it).
        x_label: the x axis title.
        y_label: the y axis title.

    Returns:
        The `<svg>` element as a string.
    """
    clean: dict[str, list[tuple[float, float]]] = {}
    dropped: dict[str, int] = {}
    for name, points in series.items():
        ok = [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
        clean[name], dropped[name] = ok, len(points) - len(ok)
    left, right, top = 64, 16, 12
    bottom = 44 + 16 * len(clean)
    pw, ph = width - left - right, height - top - bottom
    if pw < 40 or ph < 40:
        raise ValueError(f"a {width}x{height} chart has no room for {len(clean)} series")
    out = [
        f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" font-family="sans-serif" font-size="11">'
    ]
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    if not xs:
        out.append(
            f'<text x="{left + pw / 2:.1f}" y="{top + ph / 2:.1f}" text-anchor="middle">'
            "no data</text>"
        )
    else:
        x0, x1 = _span(xs, 0.0)
        y0, y1 = _span(ys, 0.05)

        def sx(x: float) -> float:
            return left + (x - x0) / (x1 - x0) * pw

        def sy(y: float) -> float:
            return top + (y1 - y) / (y1 - y0) * ph

        ticks, dec = _ticks(x0, x1)
        for t in ticks:
            out.append(
                f'<line x1="{sx(t):.1f}" y1="{top + ph}" x2="{sx(t):.1f}" y2="{top + ph + 4}" '
                f'stroke="#333"/><text x="{sx(t):.1f}" y="{top + ph + 15}" '
                f'text-anchor="middle">{t:.{dec}f}</text>'
            )
        ticks, dec = _ticks(y0, y1)
        for t in ticks:
            out.append(
                f'<line x1="{left}" y1="{sy(t):.1f}" x2="{left + pw}" y2="{sy(t):.1f}" '
                f'stroke="#e5e5e5"/><text x="{left - 6}" y="{sy(t) + 4:.1f}" '
                f'text-anchor="end">{t:.{dec}f}</text>'
            )
        for i, (name, pts) in enumerate(clean.items()):
            if not pts:
                continue
            colour = PALETTE[i % len(PALETTE)]
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
            out.append(
                f'<polyline data-series="{escape(name)}" points="{coords}" fill="none" '
                f'stroke="{colour}" stroke-width="1.5"/>'
            )
            if len(pts) == 1:
                px, py = sx(pts[0][0]), sy(pts[0][1])
                out.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>')
    out.append(
        f'<path d="M{left},{top}V{top + ph}H{left + pw}" fill="none" stroke="#333"/>'
        f'<text x="{left + pw / 2:.1f}" y="{top + ph + 32}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text transform="translate(14,{top + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
        f"{escape(y_label)}</text>"
    )
    for i, (name, pts) in enumerate(clean.items()):
        y = top + ph + 50 + 16 * i
        note = " (no data)" if not pts else ""
        if dropped[name]:
            note += f" ({dropped[name]} non-finite points dropped)"
        out.append(
            f'<line x1="{left}" y1="{y - 4}" x2="{left + 24}" y2="{y - 4}" '
            f'stroke="{PALETTE[i % len(PALETTE)]}" stroke-width="3"/>'
            f'<text x="{left + 30}" y="{y}">{escape(name + note)}</text>'
        )
    out.append("</svg>")
    return "".join(out)


# ----------------------------------------------------------------------------- page parts


def _metric_table(summary: Mapping[str, Any]) -> str:
    model, control = summary.get("model") or {}, summary.get("control") or {}
    keys = set(model) | set(control)
    order = [k for k in LEADING_METRICS if k in keys] + sorted(keys - set(LEADING_METRICS))
    rows = []
    for k in order:
        m, c = _number(model.get(k)), _number(control.get(k))
        diff = MISSING if m is None or c is None else f"{m - c:+.3f}"
        rows.append(
            f'<tr data-metric="{escape(k)}"><th>{escape(k)}</th><td>{_fmt(model.get(k))}</td>'
            f"<td>{_fmt(control.get(k))}</td><td>{diff}</td></tr>"
        )
    head = "<tr><th>metric</th><th>model</th><th>control</th><th>model − control</th></tr>"
    return f'<table class="metrics">{head}{"".join(rows)}</table>'


def _finding_table(summary: Mapping[str, Any]) -> str:
    """F1 of the reports and AP@0.5 of the grounding answers, per finding, both models."""
    model, control = summary.get("model") or {}, summary.get("control") or {}
    names = sorted(
        {k.split("/", 1)[1] for k in (*model, *control) if k.startswith(("f1/", "ap50/"))}
    )
    rows = []
    for name in names:
        cells = "".join(
            f"<td>{_fmt(side.get(f'{kind}/{name}'))}</td>"
            for kind in ("f1", "ap50")
            for side in (model, control)
        )
        rows.append(f'<tr data-finding="{escape(name)}"><th>{escape(name)}</th>{cells}</tr>')
    head = (
        "<tr><th>finding</th><th>report F1, model</th><th>report F1, control</th>"
        "<th>AP@0.5, model</th><th>AP@0.5, control</th></tr>"
    )
    return f'<table class="metrics">{head}{"".join(rows)}</table>'


def _run_table(summary: Mapping[str, Any]) -> str:
    rows = []
    for k, v in summary.items():
        if k in ("model", "control"):
            continue
        if v is not None and not isinstance(v, (str, int, float, bool)):
            raise TypeError(f"summary[{k!r}] must be a scalar, got {type(v).__name__}")
        cell = str(v) if isinstance(v, int) and not isinstance(v, bool) else _fmt(v)  # steps: 40
        rows.append(f'<tr data-key="{escape(k)}"><th>{escape(k)}</th><td>{cell}</td></tr>')
    return f'<table class="run">{"".join(rows)}</table>' if rows else ""


def _png_data_uri(path: Path) -> tuple[str, int, int]:
    """The image at `path` as a PNG data URI, with its width and height in pixels."""
    from radixpert._optional import require

    require("PIL", purpose="embedding images in the demo page")
    from PIL import Image

    with Image.open(path) as im:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        w, h = im.size
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), w, h


def _boxes_svg(sample: Sample, width: int, height: int) -> str:
    parts = []
    for boxes, colour, dash in (
        (sample.true_boxes, TRUE_COLOUR, ""),
        (sample.pred_boxes, PRED_COLOUR, ' stroke-dasharray="4 3"'),
    ):
        kind = "true" if colour == TRUE_COLOUR else "pred"
        for label, (x1, y1, x2, y2) in boxes:
            if not (0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0):
                raise ValueError(
                    f"sample {sample.study_id!r}: {kind} box {label!r} "
                    f"{(x1, y1, x2, y2)} is not 0 <= x1 <= x2 <= 1, 0 <= y1 <= y2 <= 1"
                )
            x, y = x1 * width, y1 * height
            w, h = (x2 - x1) * width, (y2 - y1) * height
            # the label above the box (below it at the top edge), kept inside the image
            ty = y - 3 if y >= 12 else y + h + 11
            tx, anchor = (x, "start") if x1 + x2 <= 1.0 else (x + w, "end")
            parts.append(
                f'<rect class="{kind}" x="{x:.2f}" y="{y:.2f}" width="{w:.2f}" height="{h:.2f}" '
                f'fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
                f'<text x="{tx:.2f}" y="{ty:.2f}" text-anchor="{anchor}" fill="{colour}">'
                f"{escape(label)}</text>"
            )
    return (
        f'<svg class="boxes" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'font-family="sans-serif" font-size="10">{"".join(parts)}</svg>'
    )


def _labels_html(true_labels: Sequence[str], pred_labels: Sequence[str]) -> str:
    """True labels marked ✓ (predicted) or missed; predicted labels not in the truth marked ✗."""
    true, pred = list(dict.fromkeys(true_labels)), list(dict.fromkeys(pred_labels))
    items = []
    for t in true:
        if t in pred:
            items.append(f'<li class="hit">✓ {escape(t)}</li>')
        else:
            items.append(f'<li class="missed">missed: {escape(t)}</li>')
    items += [f'<li class="wrong">✗ {escape(p)} (not in truth)</li>' for p in pred if p not in true]
    if not items:
        items = ['<li class="hit">✓ no findings, none predicted</li>']
    return f'<ul class="labels">{"".join(items)}</ul>'


def _card(sample: Sample) -> str:
    uri, w, h = _png_data_uri(sample.image)
    dh = round(DISPLAY_WIDTH * h / w)
    reports = [("generated", sample.generated), ("reference", sample.reference)]
    if sample.control_generated is not None:
        reports.append(("control", sample.control_generated))
    texts = "".join(
        f'<div class="report {kind}"><h4>{kind}</h4><p>{escape(text)}</p></div>'
        for kind, text in reports
    )
    return (
        f'<section class="sample" data-study="{escape(sample.study_id)}">'
        f"<h3>{escape(sample.study_id)}</h3>"
        f'<div class="figure" style="width:{DISPLAY_WIDTH}px;height:{dh}px">'
        f'<img src="{uri}" width="{DISPLAY_WIDTH}" height="{dh}" alt="{escape(sample.study_id)}">'
        f"{_boxes_svg(sample, DISPLAY_WIDTH, dh)}</div>"
        f'<div class="reports">{texts}</div>'
        f"{_labels_html(sample.true_labels, sample.pred_labels)}</section>"
    )


CSS = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 1100px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td { font-variant-numeric: tabular-nums; text-align: right; }
.sample { border: 1px solid #ccc; border-radius: 6px; padding: 0.8em; margin: 1em 0; }
.figure { position: relative; }
.figure img { image-rendering: pixelated; position: absolute; left: 0; top: 0; }
.figure svg { position: absolute; left: 0; top: 0; }
.reports { display: grid; grid-template-columns: repeat(auto-fit, minmax(14em, 1fr));
           gap: 0.8em; margin-top: 0.8em; }
.report p { white-space: pre-wrap; margin: 0; }
.report h4 { margin: 0 0 0.3em; }
.labels { list-style: none; padding: 0; }
.hit { color: #1a9850; } .missed { color: #a50026; } .wrong { color: #d73027; }
.legend-true { color: #1a9850; } .legend-pred { color: #f46d43; }
"""


def write_page(
    path: Path,
    *,
    title: str,
    summary: Mapping[str, Any],
    samples: Sequence[Sample],
    curves: Mapping[str, Sequence[tuple[int, float]]],
    notes: Sequence[str] = (),
    reward_curves: Mapping[str, Sequence[tuple[int, float]]] | None = None,
) -> Path:
    """Write the demo's report page to `path`, atomically (temporary file + `os.replace`).

    Args:
        path: the HTML file to write; its folder is created.
        title: the page title and heading.
        summary: `{"model": {metric: value}, "control": {metric: value}, other: scalar, ...}`.
            Metrics are shown one row each (`LEADING_METRICS` first, then sorted) with the
            model − control difference; the other scalars in a key/value table.
        samples: the studies to show, one card each.
        curves: series name -> (global_step, loss) points, drawn in one line chart.
        notes: paragraphs shown under the title.
        reward_curves: series name -> (global_step, reward) points of a reinforcement
            (``grpo``) stage, drawn in a chart of their own when given.

    Returns:
        `path`.

    Raises:
        FileNotFoundError: a sample's image does not exist (the error names the file).
        ValueError: a box is not in 0–1 coordinates with x1 <= x2 and y1 <= y2.
        TypeError: a summary value other than "model" / "control" is not a scalar.
    """
    path = Path(path)
    for s in samples:  # before any work, so that nothing is written
        if not Path(s.image).is_file():
            raise FileNotFoundError(
                errno.ENOENT, f"image of sample {s.study_id!r} not found", str(s.image)
            )
    body = [f"<h1>{escape(title)}</h1>"]
    body += [f'<p class="note">{escape(n)}</p>' for n in notes]
    body += ["<h2>Metrics</h2>", _metric_table(summary), _run_table(summary)]
    body += ["<h2>Per finding: model against control</h2>", _finding_table(summary)]
    body += ["<h2>Loss curves</h2>", line_chart_svg(curves)]
    if reward_curves and any(reward_curves.values()):
        body += [
            "<h2>Reinforcement stage: rewards</h2>",
            line_chart_svg(reward_curves, y_label="reward"),
        ]
    body += [
        f"<h2>Samples ({len(samples)})</h2>",
        '<p><span class="legend-true">true boxes (solid)</span> &nbsp; '
        '<span class="legend-pred">predicted boxes (dashed)</span></p>',
    ]
    body += [_card(s) for s in samples]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
    from radixpert.io import atomic_write

    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(page)
    logger.info("wrote %s (%d samples, %d KiB)", path, len(samples), len(page) // 1024)
    return path
