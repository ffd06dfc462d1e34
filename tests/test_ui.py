"""`brainscan ui` in a real browser: Debian's chromium, headless, driven by Playwright,
against the page served by the CLI and a real tritonserver behind it."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import BRAINSCAN, phantom_slices
from PIL import Image

from brainscan.serving import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
    ),
]
# Chromium on a machine without internet: no background connections, no sandbox as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


def start_ui(url: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [BRAINSCAN, "ui", "--url", url, "--port", str(port)], stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    address = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"brainscan ui exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(address, timeout=2) as response:
                if response.status == 200:
                    return process, address
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise AssertionError(f"brainscan ui did not answer within 90 s: {log.read_text()}")


@pytest.fixture
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def upload(page, path: Path) -> str:
    """Upload ``path`` (clearing the previous file first, as a user would) and wait for
    the result text to change; returns it."""
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():
        clear.click()
        page.wait_for_selector("#upload input[type=file]", state="attached")
        page.wait_for_function("() => document.querySelector('#result textarea').value.startsWith('Upload an MRI')")
    before = page.input_value("#result textarea")
    page.set_input_files("#upload input[type=file]", str(path))
    page.wait_for_function(
        (
            "before => { const t = document.querySelector('#result textarea'); return t && t.value && t.value !== "
            "before; }"
        ),
        arg=before,
        timeout=60_000,
    )
    return page.input_value("#result textarea")


def red_fraction(png: bytes) -> float:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    red = (pixels[..., 0] > pixels[..., 1] + 60) & (pixels[..., 0] > pixels[..., 2] + 60)
    return float(red.mean())


def test_upload_shows_label_probability_red_overlay_and_mask_and_a_bad_file_is_explained(
    bright_server, phantom_dir, browser, tmp_path
):
    pytest.importorskip("gradio", reason="the ui extra: pip install '.[ui]' in the checkout")
    process, address = start_ui(bright_server.grpc_url, tmp_path / "ui.log")
    try:
        page = browser.new_page()
        page.goto(address)
        text = upload(page, phantom_slices(phantom_dir, count=1)[0])
        assert "probability" in text and ("Tumour" in text or "No tumour" in text), text
        page.wait_for_selector("#overlay img", timeout=30_000)
        page.wait_for_selector("#mask img", timeout=30_000)
        # the bright-pixel segmenter marks a good part of the slice: it must show in red
        assert red_fraction(page.locator("#overlay img").screenshot()) > 0.02
        assert red_fraction(page.locator("#mask img").screenshot()) == 0.0  # the mask is black and white

        broken = tmp_path / "broken.png"
        broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
        text = upload(page, broken)
        assert text.startswith("Error") and "broken.png" in text and "image" in text, text
        page.wait_for_selector("#overlay img", state="detached", timeout=30_000)  # no stale overlay

        text = upload(page, phantom_slices(phantom_dir, count=2)[1])  # and the page still works
        assert "probability" in text
    finally:
        process.terminate()
        process.wait(30)


def test_an_unreachable_server_is_said_in_words(browser, phantom_dir, tmp_path):
    pytest.importorskip("gradio", reason="the ui extra: pip install '.[ui]' in the checkout")
    process, address = start_ui(f"127.0.0.1:{free_port()}", tmp_path / "ui.log")
    try:
        page = browser.new_page()
        page.goto(address)
        text = upload(page, phantom_slices(phantom_dir, count=1)[0])
        assert "does not answer" in text and "brainscan serve" in text, text
    finally:
        process.terminate()
        process.wait(30)


def test_an_image_outside_the_intended_use_gets_the_reason_instead_of_an_overlay(gated_server, browser, tmp_path):
    """Behind the tiny networks with their pixel gate: a photograph is refused for its pixels,
    the result box says so and why, and neither overlay nor mask is shown."""
    pytest.importorskip("gradio", reason="the ui extra: pip install '.[ui]' in the checkout")
    from brainscan.train.ood import bundled_photographs

    photo = tmp_path / "holiday.png"
    Image.fromarray(bundled_photographs()[1]).resize((256, 256)).save(photo)
    process, address = start_ui(gated_server.grpc_url, tmp_path / "ui.log")
    try:
        page = browser.new_page()
        page.goto(address)
        text = upload(page, photo)
        assert text.startswith("Not analysed: holiday.png is outside what the served models were made for (pixels)")
        assert "out-of-distribution score" in text and "No tumour finding, overlay or mask" in text, text
        assert page.locator("#overlay img").count() == 0 and page.locator("#mask img").count() == 0
    finally:
        process.terminate()
        process.wait(30)
