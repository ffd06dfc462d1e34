"""How the figures of README.md here were measured: `brainscan predict --dicomweb … --store`
on one 155-slice MR series held by a real Orthanc, through the PNG path (--slices png), the
pixels path with the gated segmenter (the default) and the pixels path with --segment-all,
alternated on one server of the demo's networks, each run timed end to end with the
client's CPU (the predict process) and the server's (tritonserver and its python stubs).
Run from the checkout after `make demo`, with Debian's orthanc and orthanc-dicomweb:

    .venv/bin/python benchmarks/results/2026-12-04-series/measure.py [REPEATS]

Everything runs on loopback and stops by itself; only the processes it started are ended."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tests"))

from orthanc import Orthanc  # noqa: E402  (the tests' real Orthanc)

from brainscan.benchmarks.free_networks import cpu_by_step  # noqa: E402
from brainscan.serving import Ports, TritonServer  # noqa: E402
from brainscan.train.phantom import render_patients  # noqa: E402
from brainscan.train.phantom_dicom import write_phantom_series  # noqa: E402

SLICES = 155
KEPT = ("label", "slices", "segmented_slices", "tumour_slices", "tumour_volume_ml")  # of each summary.json
MODES = {
    "png": ["--slices", "png"],
    "pixels, gated segmenter": [],
    "pixels, --segment-all": ["--segment-all"],
}


def series_folder(work: Path) -> Path:
    """155 phantom slices (4 new patients of 40, seed 2026, every one with a tumour) as one
    patient's TIFFs in slice order: the input of write_phantom_series."""
    folder = work / "PHANTOM_SERIES"
    folder.mkdir(parents=True)
    slices = [image for _, _, image, _ in render_patients(2026, 4, 40, tumour_fraction=1.0)][:SLICES]
    for k, image in enumerate(slices):
        Image.fromarray(image).save(folder / f"PHANTOM_SERIES_{k + 1}.tif")
    return folder


def drop_results(pacs: Orthanc, study: str) -> None:
    """Delete the SEG and SR series of the study, so that the next run is not skipped."""
    for series in pacs.get(f"/studies/{study}")["Series"]:
        if pacs.get(f"/series/{series}")["MainDicomTags"].get("Modality") in ("SEG", "SR"):
            pacs._request(f"/series/{series}", method="DELETE").close()


def main(repeats: int = 2) -> None:
    work = Path(tempfile.mkdtemp(prefix="brainscan-series-"))
    files = write_phantom_series(series_folder(work), work / "dicom")
    pacs = Orthanc(work / "orthanc").start()
    repository = (ROOT / "artifacts" / "model_repository").resolve()
    ports = Ports.free()
    rows = []
    try:
        pacs.upload(files)
        study_uid = str(pydicom.dcmread(files[0]).StudyInstanceUID)
        study = pacs.find_study(study_uid)
        with TritonServer(repository, ports=ports, log_file=work / "tritonserver.log") as server:
            brainscan = str(ROOT / ".venv" / "bin" / "brainscan")
            for repeat in range(repeats + 1):  # the first round warms the server up and is not kept
                for mode, extra in MODES.items():
                    drop_results(pacs, study)
                    out = work / f"out-{repeat}-{len(rows)}"
                    command = [brainscan, "predict", "--url", server.grpc_url, "--dicomweb", pacs.dicomweb]
                    command += ["--study", study_uid, "--store", "--out", str(out), *extra]
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    server_before, started = cpu_by_step(repository, ports.grpc), time.time()
                    done = subprocess.run(command, capture_output=True, text=True)
                    seconds = time.time() - started
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    server_after = cpu_by_step(repository, ports.grpc)
                    if done.returncode != 0:
                        raise RuntimeError(f"{mode}: exit {done.returncode}\n{done.stdout[-900:]}{done.stderr[-900:]}")
                    (summary,) = out.glob("*.summary.json")
                    record = json.loads(summary.read_text())
                    stored = [s for s in pacs.get(f"/studies/{study}")["Series"]]
                    client = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
                    server_cpu = {k: server_after.get(k, 0.0) - server_before.get(k, 0.0) for k in server_after}
                    row = {
                        "mode": mode,
                        "repeat": repeat,
                        "seconds": round(seconds, 2),
                        "client_cpu_s": round(client, 2),
                        "server_cpu_s": {k: round(v, 2) for k, v in server_cpu.items()},
                        "series_in_study": len(stored),
                        "record": {k: record.get(k) for k in KEPT},
                    }
                    print(json.dumps(row), flush=True)
                    if repeat:
                        rows.append(row)
    finally:
        pacs.stop()
    (Path(__file__).parent / "runs.json").write_text(json.dumps(rows, indent=1) + "\n")
    for mode in MODES:
        kept = [r for r in rows if r["mode"] == mode]
        seconds, client = (float(np.mean([r[key] for r in kept])) for key in ("seconds", "client_cpu_s"))
        server = float(np.mean([sum(r["server_cpu_s"].values()) for r in kept]))
        print(f"{mode}: {seconds:.2f} s, client CPU {client:.2f} s, server CPU {server:.2f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
