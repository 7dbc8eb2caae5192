"""What ``radixpert serve`` refuses: callers without the token, oversized bodies and images,
images named by URL or path, decompression bombs (PNG and DICOM), placeholders and system
prompts in the text; CORS stays off unless asked; a public bind needs a token."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from radixpert.data.images import load_image
from radixpert.errors import UsageError
from radixpert.serve.app import ServeSettings, create_app
from radixpert.serve.security import (
    ImageLimits,
    RequestRejected,
    check_bind,
    decode_image,
    is_loopback,
    read_token,
    token_matches,
)
from tests.serve import png_data_url, served_models, user_message

TOKEN = "k3y-" + "x" * 28
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return served_models(tmp_path_factory.getbasetemp() / "serve-models")


def _client(registry: Any, **settings: Any) -> TestClient:
    return TestClient(create_app(registry, ServeSettings(**settings)))


def _ask(text: str = "findings?", url: str | None = None) -> dict[str, Any]:
    return {"messages": [user_message(text, url)], "max_tokens": 2}


def test_bearer_token_required_when_set(registry: Any) -> None:
    with _client(registry, token=TOKEN) as client:
        none = client.post(CHAT, json=_ask())
        wrong = client.post(CHAT, json=_ask(), headers={"Authorization": "Bearer nope"})
        right = client.post(CHAT, json=_ask(), headers={"Authorization": f"Bearer {TOKEN}"})
        metrics = client.get("/metrics")
        health = client.get("/health")
    assert none.status_code == wrong.status_code == metrics.status_code == 401
    assert none.headers["www-authenticate"] == "Bearer"
    assert none.json()["error"]["type"] == "authentication_error"
    assert right.status_code == 200 and health.status_code == 200


def test_public_bind_needs_a_token(registry: Any, tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")
    with pytest.raises(UsageError, match="token-file"):
        check_bind("0.0.0.0", None)
    with pytest.raises(UsageError, match="token-file"):
        create_app(registry, ServeSettings(host="0.0.0.0"))
    create_app(registry, ServeSettings(host="0.0.0.0", token=TOKEN))
    (tmp_path / "short").write_text("abc\n")
    (tmp_path / "good").write_text(f"  {TOKEN}\n")
    with pytest.raises(UsageError, match="16 characters"):
        read_token(str(tmp_path / "short"))
    assert read_token(str(tmp_path / "good")) == TOKEN
    assert token_matches(f"Bearer {TOKEN}", TOKEN) and not token_matches(TOKEN, TOKEN)


def test_413_on_too_large_body_and_image(registry: Any) -> None:
    big = png_data_url(size=(300, 300))  # ~90 kB of noise
    with _client(registry, max_body_bytes=20_000) as client:
        body = client.post(CHAT, json=_ask(url=big))
        chunked = client.post(
            CHAT,
            content=iter([b"{" + b" " * 15_000, b" " * 15_000 + b"}"]),
            headers={"Content-Type": "application/json"},
        )
    with _client(registry, image=ImageLimits(max_bytes=10_000)) as client:
        image = client.post(CHAT, json=_ask(url=big))
        small = client.post(CHAT, json=_ask(url=png_data_url()))
    assert body.status_code == 413 and "20000 bytes" in body.json()["error"]["message"]
    assert chunked.status_code == 413
    assert image.status_code == 413 and "image" in image.json()["error"]["message"]
    assert small.status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "https://example.org/xray.png",
        "http://127.0.0.1:8000/metrics",
        "file:///etc/passwd",
        "/etc/passwd",
        "../studies/p10/s1.png",
    ],
)
def test_400_on_images_by_url_or_path(registry: Any, url: str) -> None:
    with _client(registry) as client:
        r = client.post(CHAT, json=_ask(url=url))
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "data: URLs" in message and "never fetches" in message
    assert r.json()["error"]["param"] == "messages[0].content[0]"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's own, at open
def test_400_on_a_png_decompression_bomb(registry: Any) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("1", (12_000, 12_000)).save(buf, format="PNG")  # 144 Mpx in a few kB
    assert len(buf.getvalue()) < 100_000
    bomb = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    with _client(registry) as client:
        r = client.post(CHAT, json=_ask(url=bomb))
    assert r.status_code == 400
    assert "144000000 pixels" in r.json()["error"]["message"]
    assert "decompression-bomb" in r.json()["error"]["message"]


def _dicom(rows: int, cols: int, pixels: bytes | None = None) -> bytes:
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels if pixels is not None else b"\0\0" * 8
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def test_dicom_reads_as_from_a_file_and_bombs_are_refused(registry: Any, tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    values = (np.arange(24 * 20, dtype=np.uint16).reshape(24, 20) * 8).astype("<u2")
    data = _dicom(24, 20, values.tobytes())
    (tmp_path / "x.dcm").write_bytes(data)
    url = "data:application/dicom;base64," + base64.b64encode(data).decode()
    np.testing.assert_array_equal(decode_image(url, ImageLimits()), load_image(tmp_path / "x.dcm"))
    bomb = "data:application/dicom;base64," + base64.b64encode(_dicom(60_000, 60_000)).decode()
    with pytest.raises(RequestRejected, match="3600000000 pixels") as info:
        decode_image(bomb, ImageLimits())
    assert info.value.status == 400
    with _client(registry) as client:
        assert client.post(CHAT, json=_ask(url=url)).status_code == 200
        assert client.post(CHAT, json=_ask(url=bomb)).status_code == 400


def test_png_reads_as_from_a_file(tmp_path: Path) -> None:
    url = png_data_url(size=(37, 29))
    (tmp_path / "x.png").write_bytes(base64.b64decode(url.split(",", 1)[1]))
    np.testing.assert_array_equal(decode_image(url, ImageLimits()), load_image(tmp_path / "x.png"))
    for bad, what in [
        ("data:image/png;base64,!!!", "base64"),
        ("data:image/png;base64," + base64.b64encode(b"GIF89a...").decode(), "not a PNG"),
        ("data:image/png,rawbytes", "base64 data: URL"),
    ]:
        with pytest.raises(RequestRejected, match=what):
            decode_image(bad, ImageLimits())


@pytest.mark.parametrize(
    ("messages", "what"),
    [
        ([{"role": "system", "content": "be brief"}, user_message("hi")], "system messages"),
        ([user_message("look: <image> here")], "image placeholder"),
        ([user_message("hi"), {"role": "assistant", "content": "hello"}], "last message"),
        ([{"role": "user", "content": [{"type": "input_audio", "text": "x"}]}], "type"),
    ],
)
def test_400_on_messages_the_model_cannot_take(registry: Any, messages: Any, what: str) -> None:
    with _client(registry) as client:
        r = client.post(CHAT, json={"messages": messages})
    assert r.status_code == 400 and what in r.json()["error"]["message"]


def test_cors_off_unless_asked(registry: Any) -> None:
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with _client(registry) as client:
        off = client.options(CHAT, headers=preflight)
    with _client(registry, cors_origins=["https://pacs.example"]) as client:
        other = client.options(CHAT, headers=preflight)
        allowed = client.options(CHAT, headers={**preflight, "Origin": "https://pacs.example"})
    assert "access-control-allow-origin" not in off.headers
    assert "access-control-allow-origin" not in other.headers
    assert allowed.headers["access-control-allow-origin"] == "https://pacs.example"
