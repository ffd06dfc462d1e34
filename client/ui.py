"""`brainscan ui`: the web page of the original project, served by Gradio and answered by
Triton through the same client library as `brainscan predict`.

Upload an MRI slice (PNG, JPEG or TIFF, 8 or 16 bit; or a single-slice DICOM file) and see
the label and probability, the slice with the tumour tinted red, and the mask. A slice outside
the served models' intended use (``brainscan.intended_use``) is not analysed: the result box
says why, and no overlay or mask is shown. A bad file or an unreachable server is said in
words in the result box; the page keeps working.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np

from brainscan.client.triton.inference import Connection
from brainscan.errors import BrainscanError
from brainscan.intended_use import IntendedUse, Reason
from brainscan.layout import IMAGE_SUFFIXES

UPLOAD_TYPES = [*IMAGE_SUFFIXES, ".dcm"]
DEFAULT_PORT = 7860
MAX_UPLOAD_MB = 20
CACHE_SECONDS = 600  # what Gradio still holds (answers shown on the page) is deleted after this


class UiError(BrainscanError, ValueError):
    """The page cannot be served as asked (e.g. exposed without a login); the message says why."""


def read_logins(path: Path) -> list[tuple[str, str]]:
    """``user:password`` lines of an auth file (blank lines and # comments ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UiError(f"cannot read the auth file {path}: {exc.strerror}") from None
    logins = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, password = line.strip().partition(":")
        if not sep or not user or len(password) < 8:
            raise UiError(f"{path}, line {number}: write user:password, with a password of at least 8 characters")
        logins.append((user, password))
    if not logins:
        raise UiError(f"{path} holds no user:password line")
    return logins


def launch_options(host: str, port: int, logins: list[tuple[str, str]] | None, max_upload_mb: int) -> dict:
    """Gradio's launch options: a login is required on anything but loopback, uploads are
    bounded, nothing is shared through Gradio's tunnel."""
    loopback = host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
    if not loopback and not logins:
        raise UiError(
            f"--host {host} exposes the page to the network: give a login with --auth-file FILE "
            "(user:password lines), or keep the default 127.0.0.1"
        )
    return {
        "server_name": host,
        "server_port": port,
        "share": False,
        "inbrowser": False,
        "quiet": True,
        "auth": logins or None,
        "max_file_size": f"{max_upload_mb}mb",
        "enable_monitoring": False,
    }


def private_cache() -> Path:
    """Gradio keeps uploads and shown images in its cache folder: a private one, removed when
    the page stops, so scans do not outlive it."""
    folder = Path(tempfile.mkdtemp(prefix="brainscan-ui-"))  # mode 0700
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _payload(path: Path, use: IntendedUse) -> tuple[bytes | None, list[Reason]]:
    """The bytes to send (the file itself, or a DICOM slice as a 16-bit PNG), or None and why
    its headers are outside the intended use (a DICOM file's rules, an image's size)."""
    from brainscan.client.imaging.dicom import group_series, is_dicom, read_dicom_series
    from brainscan.client.imaging.volumes import VolumeError
    from brainscan.preprocessing import image_size

    if not is_dicom(path):
        data = path.read_bytes()
        size = image_size(data)
        reasons = use.check_image(*size) if size else []
        return (None if reasons else data), reasons
    series, rejected, ignored = group_series([path])
    if rejected or ignored:
        raise VolumeError((rejected or ignored)[0][1])
    reasons = use.check_series(series[0].header())
    if reasons:
        return None, reasons
    slices = read_dicom_series(series[0]).axial_png_slices()
    if len(slices) != 1:
        raise VolumeError(f"the DICOM file holds {len(slices)} slices; use `brainscan predict` for volumes")
    return slices[0], []


def refusal_text(name: str, reasons: list[Reason]) -> str:
    """What the page says instead of an overlay for a slice outside the intended use."""
    codes = ", ".join(str(r.code) for r in reasons)
    return (
        f"Not analysed: {name} is outside what the served models were made for ({codes}). "
        + "; ".join(r.text[0].upper() + r.text[1:] for r in reasons)
        + ". No tumour finding, overlay or mask is given for it."
    )


def analyse(connection: Connection, path: str | None) -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """One upload -> (result text, overlay RGB, mask) for the page; errors become text."""
    from brainscan.client.imaging.files import overlay
    from brainscan.client.imaging.volumes import VolumeError
    from brainscan.client.triton.inference import BrainscanClient, InferenceError, ServerUnavailableError
    from brainscan.preprocessing import decode_image

    if not path:
        return "Upload an MRI image to analyse it.", None, None
    name = Path(path).name
    try:
        with BrainscanClient(connection) as client:
            use = client.intended_use()
            data, reasons = _payload(Path(path), use)
            if data is None:
                return refusal_text(name, reasons), None, None
            prediction = client.infer(data)
    except ServerUnavailableError:
        return (
            f"Error: the Triton server at {connection.address} does not answer. Start it with "
            "`brainscan serve` (or check --url) and upload again.",
            None,
            None,
        )
    except (InferenceError, VolumeError, OSError) as exc:
        return f"Error: {name} could not be analysed: {exc}", None, None
    reasons = use.check_score(prediction.score if prediction.score is not None else 0.0)
    if reasons:
        return refusal_text(name, reasons), None, None
    text = (
        f"{prediction.label.capitalize()}: probability {prediction.probability:.3f} that a tumour is present; "
        f"tumour area {prediction.area_pixels} pixels ({100 * prediction.area_fraction:.2f} % of the slice). ({name})"
    )
    return text, overlay(decode_image(data), prediction.mask), prediction.mask * 255


def analyse_and_forget(connection: Connection, path: str | None):
    """``analyse``, then the uploaded scan is deleted from Gradio's cache, answered or not."""
    try:
        return analyse(connection, path)
    finally:
        if path:
            Path(path).unlink(missing_ok=True)


def build(connection: Connection):
    """The Gradio page."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    def run(path):
        return analyse_and_forget(connection, path)

    with gr.Blocks(title="brainscan", delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as page:
        gr.Markdown(
            "## brainscan: brain-tumour detection and segmentation on MRI\n"
            f"Upload one axial MRI slice. Answered by model `{connection.target}` at `{connection.address}`. "
            "Research use only: not a medical device."
        )
        with gr.Row():
            upload = gr.File(
                label="MRI slice (PNG, JPEG, TIFF, DICOM)", file_types=UPLOAD_TYPES, type="filepath", elem_id="upload"
            )
            result = gr.Textbox(label="Result", lines=3, interactive=False, elem_id="result")
        with gr.Row():
            highlighted = gr.Image(
                label="Tumour highlighted in red", type="numpy", format="png", interactive=False, elem_id="overlay"
            )
            mask = gr.Image(label="Mask", type="numpy", format="png", interactive=False, elem_id="mask")
        upload.change(run, inputs=upload, outputs=[result, highlighted, mask])
    return page


def serve(
    connection: Connection,
    host: str,
    port: int,
    logins: list[tuple[str, str]] | None = None,
    max_upload_mb: int = MAX_UPLOAD_MB,
) -> None:
    options = launch_options(host, port, logins, max_upload_mb)
    private_cache()

    def stop(_signum, _frame):  # SIGTERM ends the page like Ctrl-C, so the cache is removed
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    page = build(connection)
    page.queue(default_concurrency_limit=4)
    page.launch(**options)
