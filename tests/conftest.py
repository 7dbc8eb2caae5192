"""Test-wide settings: no hub access, an artifact root per session, shared fixtures."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

# A stray download must fail at once instead of hanging (tests never reach a hub).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# A hub cache of the session's own, set before transformers and huggingface_hub are imported
# (they read HF_HOME at import): tests/hub writes tiny checkpoints there under their real ids,
# and a developer's own cache is never read or written.
if not os.environ.get("RADIXPERT_TEST_HF_HOME"):
    os.environ["RADIXPERT_TEST_HF_HOME"] = tempfile.mkdtemp(prefix="radixpert-hf-home-")
    atexit.register(shutil.rmtree, os.environ["RADIXPERT_TEST_HF_HOME"], ignore_errors=True)
os.environ["HF_HOME"] = os.environ["RADIXPERT_TEST_HF_HOME"]
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("HUGGINGFACE_HUB_CACHE", None)


@pytest.fixture(autouse=True)
def _radixpert_home(tmp_path_factory, monkeypatch):
    """Each test session writes caches and weights under its own temporary RADIXPERT_HOME."""
    home = tmp_path_factory.getbasetemp() / "radixpert_home"
    monkeypatch.setenv("RADIXPERT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def hub_checkpoint():
    """``hub_checkpoint(repo_id)``: a tiny checkpoint of that hub repository in the session's
    hub cache, loadable by its id offline (``tests/hub``); returns its snapshot folder."""
    from tests.hub import hub_checkpoint as make

    return make


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on two shared cores several times faster for models this small; restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def browser(monkeypatch):
    """Headless Debian chromium driven by Selenium through Debian's chromedriver (nothing is
    downloaded: Selenium Manager is kept offline); skips when either is not installed."""
    from pathlib import Path

    chromium, chromedriver = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
    if not (chromium.is_file() and chromedriver.is_file()):
        pytest.skip("install Debian's chromium and chromium-driver (apt)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager never downloads a browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--disable-extensions", "--no-first-run"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(chromedriver)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
