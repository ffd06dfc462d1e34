"""A screenshot of the web page refusing an image outside the models' intended use: starts
`brainscan ui` on 127.0.0.1 against a running server, uploads the image in headless Chromium
(Debian's, driven by Playwright) and saves the page.
    python docs/ui/screenshot.py OUT.png [--image IMAGE] [--url HOST:PORT]
Without --image it uploads the real sagittal MR slice that matplotlib ships
(brainscan.train.ood.sagittal_mri). `make ui-shot` runs it on the demo's server."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--url", default="127.0.0.1:8001")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    if args.image is None:
        from brainscan.train.ood import encode, sagittal_mri

        args.image = args.out.with_name("sagittal-mr.png")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.image.write_bytes(encode(sagittal_mri()))

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    brainscan = str(Path(sys.executable).with_name("brainscan"))
    page_server = subprocess.Popen([brainscan, "ui", "--url", args.url, "--port", str(port)])
    try:
        address = f"http://127.0.0.1:{port}/"
        for _ in range(300):
            try:
                urllib.request.urlopen(address, timeout=2).close()
                break
            except OSError:
                time.sleep(0.3)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            page.goto(address)
            page.set_input_files("#upload input[type=file]", str(args.image))
            page.wait_for_function("() => document.querySelector('#result textarea').value.startsWith('Not analysed')")
            page.wait_for_timeout(2500)  # Gradio fades the outputs in
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=True)
            browser.close()
    finally:
        page_server.terminate()
        page_server.wait(30)
    if args.image.name == "sagittal-mr.png" and args.image.parent == args.out.parent:
        args.image.unlink()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
