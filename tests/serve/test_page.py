"""The web page of ``radixpert serve`` and the attention option of ``/v1/report``.

The routes and the attention maps are checked with FastAPI's TestClient on the tiny random-init
llava and Mllama bundles of ``tests.serve``. The page is driven end to end in a real browser
(Debian's chromium and chromedriver, through Selenium, nothing downloaded) against a real
uvicorn server holding a demo-size llava fitted for seconds, as tests/infer/test_chat.py fits
one, to a two-turn conversation about a phantom: the report prompt answered with the phantom's
findings (plus an HTML tag, which the page must show as text), then the phrase-grounding
question answered with the instruction builders' box. The page's report, box, follow-up,
copy, attention overlay and error messages are read back from the browser, and a screenshot
is kept (under tmp_path, and in ``$RADIXPERT_TEST_ARTIFACTS`` when set).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from radixpert.serve.app import REPORT_PROMPT, ServeSettings, create_app
from radixpert.serve.security import ImageLimits, decode_image
from tests.fitted import fit_llava
from tests.serve import png_data_url, served_models

TOKEN = "p" * 24
XSS = ' <img src=x onerror="document.title=1">'
SVG_NS = "http://www.w3.org/2000/svg"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return served_models(tmp_path_factory.getbasetemp() / "serve-models")


def _png(data_url: str) -> np.ndarray:
    from PIL import Image

    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


# ------------------------------------------------------------------------------ routes


def test_page_is_served_self_contained(registry: Any) -> None:
    with TestClient(create_app(registry, ServeSettings(token=TOKEN))) as client:
        page = client.get("/")
        script = client.get("/page.js")
        style = client.get("/page.css")
        config = client.get("/page/config").json()
        models = client.get("/v1/models")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    assert '<script src="/page.js"' in page.text and "<script>" not in page.text
    for asset in (page.text, script.text, style.text):
        # Nothing from the internet: the only URL is the SVG namespace (an identifier).
        assert re.findall(r"https?://[^\s\"'`]+", asset.replace(SVG_NS, "")) == []
        assert "@import" not in asset and "url(" not in asset
    assert "innerHTML" not in script.text and "insertAdjacentHTML" not in script.text
    assert "document.write" not in script.text
    assert config == {
        "report_prompt": REPORT_PROMPT,
        "token_required": True,
        "max_image_bytes": ImageLimits().max_bytes,
        "max_body_bytes": ServeSettings().max_body_bytes,
    }
    assert models.status_code == 401  # the page is public, the API is not


def test_page_decode_and_boxes(registry: Any) -> None:
    from radixpert.infer.grounding import parse_grounding
    from tests.serve.test_security import _dicom

    pytest.importorskip("pydicom")
    url = png_data_url(size=(40, 30))
    values = (np.arange(24 * 20, dtype=np.uint16) * 7 % 4096).reshape(24, 20)
    dicom = (
        "data:application/dicom;base64,"
        + base64.b64encode(_dicom(24, 20, values.tobytes())).decode()
    )
    auth = {"Authorization": f"Bearer {TOKEN}"}
    answer = "Nodule: [0.20, 0.30, 0.35, 0.45]; Effusion: [0.6, 0.5, 0.4, 0.9] and [0.1, 0.2]"
    with TestClient(create_app(registry, ServeSettings(token=TOKEN))) as client:
        shown = client.post("/page/decode", json={"image": url}, headers=auth).json()
        shown_dicom = client.post("/page/decode", json={"image": dicom}, headers=auth).json()
        bad = client.post(
            "/page/decode",
            json={"image": "data:image/png;base64," + base64.b64encode(b"no image").decode()},
            headers=auth,
        )
        anonymous = client.post("/page/decode", json={"image": url})
        boxes = client.post("/page/boxes", json={"text": answer}, headers=auth).json()
        no_boxes = client.post("/page/boxes", json={"text": answer})
    gray = decode_image(url, ImageLimits())
    assert (shown["width"], shown["height"], shown["dicom"]) == (40, 30, False)
    assert np.array_equal(_png(shown["png"]), (gray * 255).round().astype(np.uint8))
    dicom_gray = decode_image(dicom, ImageLimits())  # as the model reads it (windowed)
    assert (shown_dicom["width"], shown_dicom["height"], shown_dicom["dicom"]) == (20, 24, True)
    assert np.array_equal(_png(shown_dicom["png"]), (dicom_gray * 255).round().astype(np.uint8))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "image"
    assert anonymous.status_code == 401 and no_boxes.status_code == 401
    assert boxes == parse_grounding(answer).to_dict()
    assert [b["label"] for b in boxes["boxes"]] == ["Nodule"] and len(boxes["invalid"]) == 2


# ------------------------------------------------------------------------------ attention


def test_report_attention_is_explain_of_the_report(registry: Any) -> None:
    from radixpert.infer.attention import explain, overlay

    served = registry.get("llava")
    url = png_data_url(size=(40, 32))
    report = "there is a small left pleural effusion. the lungs are clear."
    phrases = ["pleural effusion", "pneumothorax"]
    with TestClient(create_app(registry, ServeSettings())) as client:
        r = client.post(
            "/v1/report",
            json={"image": url, "report": report, "attention": True, "phrases": phrases},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["report"] == report and body["usage"] is None  # nothing was generated
    att = body["attention"]
    assert att["generated"] is False and att["report"] == report
    assert att["aggregation"]["heads"] == "mean" and att["aggregation"]["layers"] == "max"
    assert att["geometry"]["original_height_width"] == [32, 40]
    assert [(m["kind"], m["text"], m["found"]) for m in att["maps"]] == [
        ("report", report, True),
        ("phrase", "pleural effusion", True),
        ("phrase", "pneumothorax", False),
        ("sentence", "there is a small left pleural effusion.", True),
        ("sentence", "the lungs are clear.", True),
    ]
    assert "overlay" not in att["maps"][2]
    direct = explain(
        served.model,
        served.processor,
        decode_image(url, ImageLimits()),
        report=report,
        prompt=REPORT_PROMPT,
        phrases=phrases,
    )
    whole = np.asarray(overlay(direct.image, direct.token_maps.mean(axis=0), direct.geometry))
    phrase = np.asarray(overlay(direct.image, direct.phrase_maps[0].grid, direct.geometry))
    assert _png(att["maps"][0]["overlay"]).shape == (32, 40, 3)
    assert np.array_equal(_png(att["maps"][0]["overlay"]), whole)
    assert np.array_equal(_png(att["maps"][1]["overlay"]), phrase)
    first = np.asarray(overlay(direct.image, direct.sentence_maps[0].grid, direct.geometry))
    assert np.array_equal(_png(att["maps"][3]["overlay"]), first)
    assert not np.array_equal(whole, phrase)
    assert att["maps"][0]["image_mass"] == pytest.approx(float(np.mean(direct.image_mass)))


def test_report_attention_of_a_generated_report_and_refusals(registry: Any) -> None:
    url = png_data_url(size=(1300, 1040))  # overlays come at most 1024 a side
    with TestClient(create_app(registry, ServeSettings())) as client:
        plain = client.post("/v1/report", json={"model": "mllama", "image": url, "max_tokens": 6})
        r = client.post(
            "/v1/report",
            json={"model": "mllama", "image": url, "max_tokens": 6, "attention": True},
        )
        empty = client.post("/v1/report", json={"image": url, "report": " ", "attention": True})
        lonely = client.post("/v1/report", json={"image": url, "report": "clear lungs"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["report"] == plain.json()["report"] and body["usage"] == plain.json()["usage"]
    att = body["attention"]
    assert att["generated"] is True and att["report"] == body["report"]
    assert "mllama cross-attention" in att["geometry"]["note"]
    assert _png(att["maps"][0]["overlay"]).shape == (819, 1024, 3)
    assert empty.status_code == 200 and "empty" in empty.json()["attention"]["error"]
    assert lonely.status_code == 400 and lonely.json()["error"]["param"] == "report"


# ------------------------------------------------------------------------------ the browser


@pytest.fixture(scope="module")
def answering(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A bundle whose greedy answers are a phantom's findings (to the report prompt) and the
    builders' box (to the grounding question that follows), fitted for seconds."""
    from radixpert.data.phantoms import generate_phantoms
    from radixpert.instruct.tasks import GroundingTask
    from radixpert.models.bundle import save_bundle

    root = tmp_path_factory.mktemp("page")
    studies = generate_phantoms(8, root / "ph", size=64)
    rng = random.Random(0)
    convs = [c for s in studies for c in GroundingTask("phrase").build(s, rng)]
    grounding = convs[0]
    study = next(s for s in studies if s.id == grounding.study_id)
    report = study.findings.strip() + XSS
    question = grounding.conversations[0]["value"].removeprefix("<image>\n")
    turns = [
        {"from": "human", "value": f"<image>\n{REPORT_PROMPT}"},
        {"from": "gpt", "value": report},
        {"from": "human", "value": question},
        grounding.conversations[1],
    ]
    image = root / "ph" / grounding.image[0]
    vocabulary = [t["value"] for c in convs for t in c.conversations] + [report, REPORT_PROMPT] * 3
    model, processor = fit_llava(image, [turns], vocabulary=vocabulary)
    wanted = [report, turns[3]["value"]]
    return {
        "bundle": save_bundle(model, processor, root / "bundle"),
        "image": image,
        "report": report,
        "question": question,
        "answer": wanted[1],
        "phrase": question.rsplit(":", 1)[-1].strip(),
    }


def _wait(condition: Any, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def server(answering: dict[str, Any]) -> Any:
    import uvicorn

    from radixpert.serve.models import ModelRegistry

    registry = ModelRegistry.load([f"page={answering['bundle']}"])
    settings = ServeSettings(token=TOKEN, image=ImageLimits(max_bytes=100_000))
    app = create_app(registry, settings)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        _wait(lambda: srv.started, 30, "the server")
        port = srv.servers[0].sockets[0].getsockname()[1]
        yield app, f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(30)


def test_page_in_a_real_browser(
    browser: Any, server: Any, answering: dict[str, Any], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from radixpert.infer.grounding import parse_grounding

    app, base = server
    d = browser
    by_id = lambda name: d.find_element(By.ID, name)  # noqa: E731
    text_of = lambda name: by_id(name).get_attribute("textContent")  # noqa: E731
    with contextlib.suppress(Exception):  # an older chromium: the page's fallback copies
        d.execute_cdp_cmd(
            "Browser.grantPermissions",
            {"origin": base, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
        )
    d.get(base + "/")
    # No token yet: the page says so.
    _wait(lambda: "bearer token" in text_of("error"), 15, "the 401 message")
    by_id("token").send_keys(TOKEN)
    by_id("save-token").click()
    _wait(lambda: by_id("model").get_attribute("value") == "page", 15, "the model list")
    assert by_id("error").get_attribute("hidden") is not None
    assert d.execute_script("return sessionStorage.getItem('radixpert.token')") == TOKEN

    # Upload: the image is shown, the report streams in.
    by_id("file").send_keys(str(answering["image"]))
    report = by_id("report")
    _wait(lambda: report.get_attribute("data-state") == "done", 30, "the report")
    assert text_of("report") == answering["report"]
    assert int(report.get_attribute("data-chunks")) > 1  # streamed in pieces
    # The model's HTML tag is text: no element was made of it, its handler never ran.
    assert d.execute_script("return arguments[0].children.length", report) == 0
    assert d.execute_script("return document.querySelectorAll('main img').length") == 2
    assert d.title == "radixpert" and "<img src=x onerror=" in text_of("report")
    assert d.execute_script("return document.getElementById('image').naturalWidth") == 64

    # A follow-up question in the same conversation: the answer's box is drawn and listed.
    by_id("question").send_keys(answering["question"])
    by_id("ask").click()
    answer = _wait(
        lambda: d.find_elements(By.CSS_SELECTOR, "#turns .answer[data-state='done']"),
        30,
        "the answer",
    )[0]
    assert answer.get_attribute("textContent") == answering["answer"]
    wanted = [list(b.coords) for b in parse_grounding(answering["answer"]).boxes]
    assert wanted  # the answer holds a box
    rects = _wait(lambda: d.find_elements(By.CSS_SELECTOR, "#boxes-layer rect"), 10, "a box")
    assert [json.loads(r.get_attribute("data-box")) for r in rects] == wanted
    x1, y1, x2, y2 = wanted[0]
    assert float(rects[0].get_attribute("x")) == pytest.approx(x1 * 64)
    assert float(rects[0].get_attribute("width")) == pytest.approx((x2 - x1) * 64)
    assert float(rects[0].get_attribute("height")) == pytest.approx((y2 - y1) * 64)
    # On screen the box lies where it should on the displayed image.
    img_box, rect_box = d.execute_script(
        "const r = (e) => e.getBoundingClientRect().toJSON();"
        "return [r(document.getElementById('image')), r(arguments[0])];",
        rects[0],
    )
    assert (rect_box["x"] - img_box["x"]) / img_box["width"] == pytest.approx(x1, abs=0.02)
    assert (rect_box["bottom"] - img_box["y"]) / img_box["height"] == pytest.approx(y2, abs=0.02)
    items = d.find_elements(By.CSS_SELECTOR, "#boxes li")
    assert len(items) == 1 and items[0].text.endswith(answering["answer"])

    # Copy the report.
    by_id("copy").click()
    _wait(lambda: "copied" in text_of("status"), 10, "the copy")
    assert f"({len(answering['report'])} characters)" in text_of("status")
    if by_id("copy").get_attribute("data-copied") == "clipboard":
        pasted = d.execute_async_script(
            "navigator.clipboard.readText().then(arguments[0], () => arguments[0](null));"
        )
        assert pasted in (None, answering["report"])

    # Attention: the whole report, and the phrase of the grounding question.
    by_id("phrase").send_keys(answering["phrase"])
    by_id("attention").click()
    overlay = by_id("attention-overlay")
    _wait(lambda: overlay.is_displayed(), 30, "the attention overlay")
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    assert overlay.get_attribute("data-map") == "report"
    assert d.execute_script("return arguments[0].naturalWidth", overlay) == 64
    assert "mean over heads, max over layers" in text_of("attention-info")
    options = d.find_elements(By.CSS_SELECTOR, "#attention-choice option")
    sentences = options[2:]  # then one map per sentence of the report
    assert [o.get_attribute("disabled") is None for o in options] == [
        True,
        answering["phrase"].lower() in answering["report"].lower(),
    ] + [True] * len(sentences)
    assert len(sentences) >= 2 and all(o.text.startswith("sentence: ") for o in sentences)
    first = sentences[0].text.removeprefix("sentence: ")
    assert answering["report"].startswith(first)
    Select(by_id("attention-choice")).select_by_index(2)
    _wait(lambda: overlay.get_attribute("data-map") == first, 10, "the sentence's overlay")
    Select(by_id("attention-choice")).select_by_index(0)
    shot = tmp_path / "radixpert-page.png"
    assert d.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("RADIXPERT_TEST_ARTIFACTS"):
        out = Path(os.environ["RADIXPERT_TEST_ARTIFACTS"])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, out / shot.name)

    # A full queue: a clear 503 message, and the question can be asked again.
    queue = app.state.queue
    queue.max_waiting = 0
    try:
        by_id("question").send_keys("Is there a pneumothorax?")
        by_id("ask").click()
        _wait(lambda: "server is busy" in text_of("error"), 15, "the 503 message")
    finally:
        queue.max_waiting = 64

    # Bad files: not an image, and over the server's image limit.
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are notes, not a radiograph")
    by_id("file").send_keys(str(bad))
    _wait(lambda: "not an image the server can read" in text_of("error"), 15, "the bad image")
    assert by_id("stage").get_attribute("hidden") is not None
    big = tmp_path / "big.png"
    from PIL import Image

    noise = (np.random.default_rng(0).random((400, 400)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(big)
    by_id("file").send_keys(str(big))
    _wait(lambda: "too large" in text_of("error"), 15, "the 413 message")
