"""The fault runs of `make soak` (tests/test_soak.py): python stubs and `brainscan serve`
killed under a running `predict`, and hostile files under an address-space limit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from soak_load import SoakReport
from test_faults import processes

from brainscan import contract


def faults(repository: Path, files: list[Path], report: SoakReport, work: Path) -> None:
    """Kill a stub twice, then `brainscan serve` itself, under one `brainscan predict` run."""
    from brainscan.serving import free_port

    brainscan = str(Path(sys.executable).parent / "brainscan")
    copy = Path(shutil.copytree(repository, work / "repository")).resolve()
    ports = [str(free_port()) for _ in range(3)]
    serve_command = [
        brainscan,
        "serve",
        "--repository",
        str(copy),
        "--grpc-port",
        ports[0],
        "--http-port",
        ports[1],
        "--metrics-port",
        ports[2],
        "--watchdog-interval",
        "1",
        "--log-file",
        str(work / "serve.log"),
    ]
    inputs = work / "inputs"
    inputs.mkdir()
    for k in range(1500):
        shutil.copyfile(files[k % len(files)], inputs / f"slice_{k:04d}{files[k % len(files)].suffix}")
    out = work / "out"
    events = []
    serve = subprocess.Popen(serve_command, stdout=subprocess.DEVNULL, stderr=open(work / "serve.err", "w"))
    try:
        subprocess.run(
            [brainscan, "health", "--url", f"127.0.0.1:{ports[0]}", "--wait", "120"], check=True, capture_output=True
        )
        predict = subprocess.Popen(
            [
                brainscan,
                "predict",
                str(inputs),
                "--url",
                f"127.0.0.1:{ports[0]}",
                "--out",
                str(out),
                "--format",
                "json",
                "--concurrency",
                "4",
                "--retries",
                "12",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = time.monotonic()
        for when, what in ((4, "stub"), (20, "stub"), (36, "serve")):
            while time.monotonic() - started < when and predict.poll() is None:
                time.sleep(0.2)
            if predict.poll() is not None:
                break
            if what == "stub":
                stubs = processes("triton_python_backend_stub", str(copy / "segmenter"))
                if stubs:
                    os.kill(stubs[0], signal.SIGKILL)
                    events.append(f"{time.monotonic() - started:.0f} s: kill -9 segmenter stub")
            else:
                serve.kill()
                serve.wait()
                events.append(f"{time.monotonic() - started:.0f} s: kill -9 brainscan serve")
                time.sleep(3)
                left = processes("tritonserver", f"--grpc-port={ports[0]}") + processes(
                    "triton_python_backend_stub", str(copy)
                )
                report.figures["orphans_after_serve_killed"] = len(left)
                for pid in left:
                    os.kill(pid, signal.SIGKILL)
                serve = subprocess.Popen(
                    serve_command, stdout=subprocess.DEVNULL, stderr=open(work / "serve2.err", "w")
                )
                events.append(f"{time.monotonic() - started:.0f} s: brainscan serve started again")
        stdout, stderr = predict.communicate(timeout=900)
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
    reported = [json.loads(line)["file"] for line in stdout.splitlines() if line.strip()]
    masks = answered(out)
    report.figures["faults"] = {
        "inputs": 1500,
        "exit": predict.returncode,
        "reported": len(reported),
        "distinct": len(set(reported)),
        "masks": masks,
        "events": events,
        "watchdog": [line for line in (work / "serve.err").read_text().splitlines() if "watchdog" in line],
    }
    report.add(
        "faults: 2 stubs killed, serve killed and restarted",
        f"{masks} of 1500 outputs, exit {predict.returncode}",
        "1500 outputs, each input once, exit 0",
        predict.returncode == 0 and masks == 1500 and len(reported) == len(set(reported)) == 1500,
    )
    report.add(
        "faults: processes left after kill -9 of serve",
        str(report.figures.get("orphans_after_serve_killed")),
        "0",
        report.figures.get("orphans_after_serve_killed") == 0,
    )


def hostile_files(server, files: list[Path], report: SoakReport, work: Path, address_space_gb: int = 4) -> None:
    """Malformed and oversized files beside good ones, `brainscan predict` under prlimit --as."""
    folder = work / "hostile"
    folder.mkdir()
    made = write_hostile_files(folder)
    for k, source in enumerate(files[:5]):
        shutil.copyfile(source, folder / f"good_{k}{source.suffix}")
    brainscan = str(Path(sys.executable).parent / "brainscan")
    if not shutil.which("prlimit"):
        report.add("hostile files", "prlimit missing", "prlimit (util-linux) present", False)
        return
    started = time.monotonic()
    # formats a folder walk does not pick up by their suffix are named on the command line
    odd = [str(p) for p in sorted(folder.iterdir()) if p.suffix in (".webp", ".mpo", ".psd")]
    result = subprocess.run(
        [
            "prlimit",
            f"--as={address_space_gb << 30}",
            brainscan,
            "predict",
            str(folder),
            *odd,
            "--url",
            server.grpc_url,
            "--out",
            str(work / "hostile-out"),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.monotonic() - started
    failures = json.loads((work / "hostile-out" / "failures.json").read_text())["failures"]
    good = answered(work / "hostile-out", "good_")
    report.figures["hostile"] = {
        "files": made,
        "address_space_gb": address_space_gb,
        "seconds": elapsed,
        "exit": result.returncode,
        "good_done": good,
        "failures": [
            {"file": Path(f["file"]).name, "status": f["status"], "error": f["error"][-160:]} for f in failures
        ],
    }
    report.add(
        f"hostile files under prlimit --as={address_space_gb}G",
        f"{len(failures)} failures named, {good} of 5 good done, exit {result.returncode}, {elapsed:.0f} s",
        "every hostile file one failure, every good file done, exit 1, no traceback",
        good == 5 and len(failures) == len(made) and result.returncode == 1 and "Traceback" not in result.stderr,
    )


def write_hostile_files(folder: Path) -> list[str]:
    """The files the README's table lists, written here."""
    import nibabel
    import pydicom
    from PIL import Image
    from pydicom.sequence import Sequence
    from pydicom.uid import DeflatedExplicitVRLittleEndian
    from volume_files import write_dicom_series, write_multiframe_dicom

    slices = [np.full((48, 40), 100 + k, np.uint16) for k in range(3)]
    (folder / "enhanced").mkdir()
    write_multiframe_dicom(folder / "enhanced" / "empty-groups.dcm", slices)
    ds = pydicom.dcmread(str(folder / "enhanced" / "empty-groups.dcm"))
    ds.SharedFunctionalGroupsSequence = Sequence([])
    ds.save_as(str(folder / "enhanced" / "empty-groups.dcm"))
    write_dicom_series(folder / "slope", slices)
    first = sorted((folder / "slope").iterdir())[0]
    ds = pydicom.dcmread(str(first))
    ds.RescaleSlope = [1, 2]
    ds.save_as(str(first))
    write_dicom_series(folder / "bomb", slices[:1])
    (source,) = sorted((folder / "bomb").iterdir())
    ds = pydicom.dcmread(str(source))
    ds.add_new(0x00091010, "OB", bytes(contract.MAX_INFLATED_DICOM_BYTES + (64 << 20)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(str(source), enforce_file_format=True)
    header = nibabel.Nifti1Header()
    header.set_data_shape((2048, 2048, 1024))
    header.set_data_dtype(np.int16)
    (folder / "claims-4G-voxels.nii").write_bytes(header.binaryblock + bytes(4) + bytes(256))
    pixels = np.full((64, 64), 100, np.float32)
    pixels[3, 3] = np.nan
    Image.fromarray(pixels, mode="F").save(folder / "nan.tiff")
    pages = [Image.fromarray(np.full((64, 64), 80 + k, np.uint8)) for k in range(3)]
    pages[0].save(folder / "pages.tiff", save_all=True, append_images=pages[1:])
    pages[0].convert("RGB").save(folder / "photo.webp")
    pages[0].convert("RGB").save(
        folder / "stereo.mpo", format="MPO", save_all=True, append_images=[p.convert("RGB") for p in pages[1:]]
    )
    (folder / "layers.psd").write_bytes(b"8BPS\x00\x01" + bytes(40))
    return [
        "enhanced DICOM, empty functional groups",
        "DICOM with RescaleSlope 1\\2",
        f"deflated DICOM inflating to {(contract.MAX_INFLATED_DICOM_BYTES >> 20) + 64} MB",
        "NIfTI header claiming 2048x2048x1024",
        "float TIFF with NaN",
        "3-page TIFF",
        "WebP",
        "MPO",
        "PSD",
    ]


def answered(out: Path, prefix: str = "") -> int:
    """Inputs answered under ``out``: a mask, or a refusal as outside the intended use (a
    phantom slice the demo's gate finds unlike its training slices is answered that way)."""
    return len(list(out.glob(f"{prefix}*.mask.png"))) + len(list(out.glob(f"{prefix}*.refused.json")))
