"""The demo's HTML page: parsed back and checked against the phantoms it was built from."""

from __future__ import annotations

import base64
import io
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("PIL")
from PIL import Image

from radixpert.data.phantoms import generate_phantoms
from radixpert.demo import page
from radixpert.demo.page import DISPLAY_WIDTH, Sample, line_chart_svg, write_page

TITLE = "radixpert demo <tiny> & co"
NASTY = 'Heart <b>& lungs</b> normal. 5 < 7 & "quoted"'
SUMMARY = {
    "model": {
        "findings_f1": 0.61234,
        "bleu4": 0.0571,
        "laterality_acc": float("nan"),
        "rouge_l": 0.3,
        "grounding_map50": 0.25,
    },
    "control": {"findings_f1": 0.2229, "bleu4": None, "rouge_l": 0.35, "chexbert_f1": 0.1},
    "train_seconds": 12.3456,
    "steps": 40,
    "device": "cpu <x>",
    "loss_final": float("nan"),
}
CURVES = {
    "model train loss": [(0, 2.5), (10, 2.0), (20, 1.5), (30, 1.2), (40, 1.0)],
    "model val loss": [(20, 1.8), (40, 1.4)],
    "control train loss": [(0, 2.4)],
    "control val loss": [],
}


class _Page(HTMLParser):
    """Collects the elements (tag, attrs, enclosing sample id) and text by enclosing element."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str], str | None]] = []
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.texts: list[tuple[tuple[str, ...], str]] = []  # (enclosing classes/tags, text)

    def _sample(self) -> str | None:
        return next((a["data-study"] for _, a in self.stack if "data-study" in a), None)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a, self._sample()))
        if tag not in ("img", "meta", "rect", "line", "circle", "polyline", "path", "br"):
            self.stack.append((tag, a))

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, {k: v or "" for k, v in attrs}, self._sample()))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        path = tuple(x for t, a in self.stack for x in (t, *a.get("class", "").split()))
        self.texts.append((path, data))

    def find(self, tag: str, sample: str | None = ...) -> list[dict[str, str]]:
        return [a for t, a, s in self.elements if t == tag and (sample is ... or s == sample)]

    def text_in(self, *marks: str) -> list[str]:
        return [d for p, d in self.texts if all(m in p for m in marks)]


def _parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    return p


def _shift(box: tuple[float, ...], d: float) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (min(1.0, max(0.0, v + d)) for v in box)
    return x1, y1, x2, y2


@pytest.fixture(scope="module")
def samples(tmp_path_factory) -> list[Sample]:
    root = tmp_path_factory.mktemp("ph")
    studies = generate_phantoms(4, root, size=64)
    out = []
    for i, st in enumerate(studies[:3]):
        image = root / st.images[0].path
        if i == 2:  # a non-square image: the boxes must follow the displayed height
            image = root / "wide.png"
            with Image.open(root / st.images[0].path) as im:
                im.resize((64, 48)).save(image)
        true_boxes = [(b.label, (b.x1, b.y1, b.x2, b.y2)) for b in st.boxes]
        pred_boxes = [(label, _shift(xyxy, 0.03)) for label, xyxy in true_boxes]
        true_labels = [k for k, v in st.labels.items() if v == 1 and k != "No Finding"]
        pred_labels = list(true_labels)
        if i == 0:  # a false positive with its box
            pred_boxes.append(("Cardiomegaly", (0.3, 0.5, 0.8, 0.85)))
            pred_labels.append("Cardiomegaly")
        if i == 2:  # a missed finding
            pred_labels = []
        out.append(
            Sample(
                study_id=st.id,
                image=image,
                generated=NASTY if i == 0 else f"generated {i}",
                reference=st.findings,
                true_boxes=true_boxes,
                pred_boxes=pred_boxes,
                true_labels=true_labels,
                pred_labels=pred_labels,
                control_generated=f"control {i}" if i != 1 else None,
            )
        )
    assert sum(len(s.true_boxes) for s in out) >= 2, "the phantoms chosen should have boxes"
    return out


@pytest.fixture(scope="module")
def written(samples, tmp_path_factory) -> tuple[Path, _Page]:
    path = tmp_path_factory.mktemp("page") / "sub" / "report.html"
    notes = ["Phantom data, 40 steps <not a real model> & tiny."]
    got = write_page(
        path, title=TITLE, summary=SUMMARY, samples=samples, curves=CURVES, notes=notes
    )
    assert got == path
    return path, _parse(path)


def test_title_notes_and_escaping(written):
    path, p = written
    html = path.read_text(encoding="utf-8")
    assert p.text_in("title") == [TITLE]
    assert p.text_in("h1") == [TITLE]
    assert p.text_in("note") == ["Phantom data, 40 steps <not a real model> & tiny."]
    assert "<b>&" not in html and "&lt;b&gt;&amp; lungs&lt;/b&gt;" in html
    assert "<tiny>" not in html and "<not a real" not in html
    assert p.text_in("generated", "p") == [NASTY, "generated 1", "generated 2"]
    assert p.text_in("control", "p") == ["control 0", "control 2"]  # None: no control box


def test_self_contained(written):
    path, p = written
    html = path.read_text(encoding="utf-8")
    assert "://" not in html and "<script" not in html.lower() and "<link" not in html.lower()
    for tag, attrs, _ in p.elements:
        for key in ("src", "href"):
            assert attrs.get(key, "data:").startswith("data:"), (tag, attrs.get(key)[:60])


def _rows(p: _Page, table: str) -> dict[str, list[str]]:
    """The rows of a table by their first cell: [header, cell, cell, ...]."""
    rows: dict[str, list[str]] = {}
    cur: list[str] = []
    for path, d in p.texts:
        if table not in path or "tr" not in path:
            continue
        if path[-1] == "th":  # each row starts with its <th>
            cur = rows[d] = [d]
        else:
            cur.append(d)
    return rows


def test_metric_table(written):
    _, p = written
    metric_rows = [a["data-metric"] for a in p.find("tr") if "data-metric" in a]
    # leading metrics first in their fixed order, then the rest sorted; union of both columns
    assert metric_rows == [
        "findings_f1",
        "grounding_map50",
        "laterality_acc",
        "bleu4",
        "chexbert_f1",
        "rouge_l",
    ]
    rows = _rows(p, "metrics")
    assert rows["findings_f1"] == ["findings_f1", "0.612", "0.223", "+0.389"]
    assert rows["grounding_map50"] == ["grounding_map50", "0.250", "–", "–"]
    assert rows["laterality_acc"] == ["laterality_acc", "–", "–", "–"]  # NaN, missing
    assert rows["bleu4"] == ["bleu4", "0.057", "–", "–"]  # None in the control
    assert rows["chexbert_f1"] == ["chexbert_f1", "–", "0.100", "–"]
    assert rows["rouge_l"] == ["rouge_l", "0.300", "0.350", "-0.050"]
    run = _rows(p, "run")
    assert run == {
        "train_seconds": ["train_seconds", "12.346"],
        "steps": ["steps", "40"],
        "device": ["device", "cpu <x>"],
        "loss_final": ["loss_final", "–"],
    }


def test_images_embedded_at_display_size(written, samples):
    _, p = written
    for s in samples:
        imgs = p.find("img", s.study_id)
        assert len(imgs) == 1
        uri = imgs[0]["src"]
        prefix = "data:image/png;base64,"
        assert uri.startswith(prefix)
        data = base64.b64decode(uri[len(prefix) :], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(data)) as im, Image.open(s.image) as src:
            assert im.size == src.size
            w, h = src.size
        assert imgs[0]["width"] == str(DISPLAY_WIDTH)
        assert imgs[0]["height"] == str(round(DISPLAY_WIDTH * h / w))
    assert len(p.find("img")) == len(samples)
    assert p.find("img", samples[2].study_id)[0]["height"] == "192"  # 64x48 -> 256x192
    assert "image-rendering: pixelated" in written[0].read_text(encoding="utf-8")


def test_boxes_drawn_at_display_scale(written, samples):
    _, p = written
    total = 0
    for s in samples:
        rects = p.find("rect", s.study_id)
        assert len(rects) == len(s.true_boxes) + len(s.pred_boxes)
        (svg,) = p.find("svg", s.study_id)
        dw, dh = float(svg["width"]), float(svg["height"])
        assert svg["viewbox"] == f"0 0 {svg['width']} {svg['height']}"  # parser lower-cases
        assert (dw, dh) == (DISPLAY_WIDTH, float(p.find("img", s.study_id)[0]["height"]))
        expected = [("true", b) for b in s.true_boxes] + [("pred", b) for b in s.pred_boxes]
        for rect, (kind, (_, (x1, y1, x2, y2))) in zip(rects, expected):
            assert rect["class"] == kind
            got = [float(rect[k]) for k in ("x", "y", "width", "height")]
            want = [x1 * dw, y1 * dh, (x2 - x1) * dw, (y2 - y1) * dh]
            assert got == pytest.approx(want, abs=0.006)
            assert rect["stroke"] == (page.TRUE_COLOUR if kind == "true" else page.PRED_COLOUR)
            assert ("stroke-dasharray" in rect) == (kind == "pred")
        labels = [t for t in p.text_in("svg", "text") if t in {b[0] for b in s.true_boxes}]
        assert len(labels) >= len(s.true_boxes)
        total += len(rects)
    assert len(p.find("rect")) == total  # the chart draws no rectangles


def test_label_marks(written, samples):
    _, p = written
    s0, s1, s2 = samples
    assert s0.true_labels == ["Support Devices"] and s2.true_labels == ["Pleural Effusion"]
    items = [(a.get("class"), s) for t, a, s in p.elements if t == "li"]
    texts = p.text_in("labels", "li")
    assert len(items) == len(texts)
    marks = {}
    for (cls, sid), text in zip(items, texts):
        marks.setdefault(sid, []).append((cls, text))
    assert marks[s0.study_id] == [
        ("hit", "✓ Support Devices"),
        ("wrong", "✗ Cardiomegaly (not in truth)"),
    ]
    assert marks[s1.study_id] == [("hit", "✓ no findings, none predicted")]
    assert marks[s2.study_id] == [("missed", f"missed: {t}") for t in s2.true_labels]


def _points(attrs: dict[str, str]) -> list[tuple[float, float]]:
    return [tuple(map(float, xy.split(","))) for xy in attrs["points"].split()]


def test_chart_polylines(written):
    _, p = written
    lines = p.find("polyline")
    assert [a["data-series"] for a in lines] == [
        "model train loss",
        "model val loss",
        "control train loss",
    ]
    assert [len(_points(a)) for a in lines] == [5, 2, 1]
    assert len({a["stroke"] for a in lines}) == 3
    assert len(p.find("circle")) == 1  # the single point is marked
    (chart,) = [a for a in p.find("svg") if a.get("class") == "chart"]
    w, h = float(chart["width"]), float(chart["height"])
    train = _points(lines[0])
    assert all(0 < x < w and 0 < y < h for x, y in train)
    xs, ys = zip(*train)
    assert list(xs) == sorted(xs) and len(set(xs)) == 5  # step increases to the right
    assert list(ys) == sorted(ys)  # loss falls, so y (down the page) grows
    # equal steps are equal distances; the 20-step val point sits on the train point's x
    assert xs[2] - xs[1] == pytest.approx(xs[1] - xs[0], abs=0.11)
    assert _points(lines[1])[0][0] == pytest.approx(xs[2], abs=0.05)
    legend = p.text_in("chart", "text")
    assert "control val loss (no data)" in legend
    assert {"0", "10", "20", "30", "40"} <= set(legend)  # x tick labels
    assert {"1.0", "1.5", "2.0", "2.5"} <= set(legend)  # y tick labels


def test_line_chart_edge_cases():
    empty = line_chart_svg({"a": [], "b": []})
    assert "<polyline" not in empty and ">no data<" in empty
    assert line_chart_svg({}).count("<polyline") == 0
    one = line_chart_svg({"only": [(5, 0.7)]})
    assert one.count("<polyline") == 1 and one.count("<circle") == 1
    flat = line_chart_svg({"flat": [(0, 1.0), (10, 1.0)]})
    ys = {xy.split(",")[1] for xy in re.search(r'points="([^"]+)"', flat)[1].split()}
    assert len(ys) == 1  # a flat series is drawn flat, not divided by zero
    nan = line_chart_svg({"s": [(0, 1.0), (1, math.nan), (2, math.inf), (3, 0.5)]})
    assert len(re.search(r'points="([^"]+)"', nan)[1].split()) == 2
    assert "(2 non-finite points dropped)" in nan
    assert "a &lt;b&gt;" in line_chart_svg({"a <b>": [(0, 1.0)]})
    with pytest.raises(ValueError, match="no room"):
        line_chart_svg({"s": [(0, 1.0)]}, width=80, height=60)


def test_ticks_pinned():
    assert page._ticks(0, 100) == ([0, 20, 40, 60, 80, 100], 0)
    assert page._ticks(0.93, 2.57)[0] == pytest.approx([1.0, 1.5, 2.0, 2.5])
    assert page._ticks(0.93, 2.57)[1] == 1
    assert page._ticks(0.0012, 0.0049) == (pytest.approx([0.002, 0.003, 0.004]), 3)


def test_missing_image_fails_and_leaves_nothing(samples, tmp_path):
    missing = tmp_path / "nowhere" / "gone.png"
    bad = [samples[0], Sample(**{**vars(samples[1]), "image": missing})]
    out = tmp_path / "out" / "report.html"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as err:
        write_page(out, title="t", summary=SUMMARY, samples=bad, curves=CURVES)
    assert err.value.filename == str(missing)
    assert samples[1].study_id in str(err.value)
    assert not out.exists() and not any(tmp_path.rglob("*.part"))
    # an earlier page survives a failed rewrite untouched
    write_page(out, title="first", summary=SUMMARY, samples=samples[:1], curves=CURVES)
    before = out.read_bytes()
    with pytest.raises(FileNotFoundError):
        write_page(out, title="second", summary=SUMMARY, samples=bad, curves=CURVES)
    assert out.read_bytes() == before
    assert sorted(x.name for x in out.parent.iterdir()) == ["report.html"]


def test_failure_while_writing_removes_the_temporary_file(samples, tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    out = tmp_path / "report.html"
    with pytest.raises(OSError, match="disk full"):
        write_page(out, title="t", summary=SUMMARY, samples=samples, curves=CURVES)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_fail_loudly(samples, tmp_path):
    out = tmp_path / "report.html"
    flipped = Sample(**{**vars(samples[0]), "pred_boxes": [("X", (0.6, 0.1, 0.2, 0.3))]})
    with pytest.raises(ValueError, match="pred box 'X'"):
        write_page(out, title="t", summary=SUMMARY, samples=[flipped], curves={})
    with pytest.raises(TypeError, match=r"summary\['extra'\]"):
        write_page(out, title="t", summary={**SUMMARY, "extra": [1]}, samples=[], curves={})
    assert list(tmp_path.iterdir()) == []


def test_page_is_as_readable_as_any_new_file(written):
    from radixpert.io import default_file_mode

    path, _ = written
    assert path.stat().st_mode & 0o777 == default_file_mode()
