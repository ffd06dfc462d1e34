"""`make soak`: load, long-run and fault runs against servers started here on loopback, each
with a pass criterion; the figures go to benchmarks/results/<date>-soak/soak.md and
soak.json. Not part of `make test` (marker `soak`, deselected by default): they take
minutes. They run on the demo's networks (BRAINSCAN_SOAK_REPOSITORY, BRAINSCAN_SOAK_DATA).

- flood: 60 s at concurrency 64 mixing images at the pixel limit, normal slices and broken
  files; normal requests must be answered or refused within seconds (never stall), the
  server's memory must stay bounded, and latency must come back within seconds after.
- long run: 10 000 requests; the server's memory may not grow by 10 % after warm-up.
- faults: one `brainscan predict` run of 1500 slices while a python stub is killed twice and
  then `brainscan serve` itself is killed and started again: no input lost or written
  twice, no process left behind.
- hostile files under an address-space limit (prlimit): malformed DICOMs, a deflate bomb,
  a NIfTI claiming billions of voxels, odd images; each is one clear failure and the good
  files beside them finish.

Everything runs on 127.0.0.1, is bounded in count and time, and ends only the processes it
started, by pid.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from soak_faults import faults, hostile_files
from soak_load import SoakReport, flood, long_run

pytestmark = [pytest.mark.soak, pytest.mark.server]
ROOT = Path(__file__).resolve().parent.parent

# --- the runs as tests, sharing one server and one report --------------------------------------


NO_SOAK_INPUTS = "set BRAINSCAN_SOAK_REPOSITORY and BRAINSCAN_SOAK_DATA (`make soak` does, after `make demo`)"


def _soak_inputs() -> tuple[Path, list[Path]]:
    repository = Path(os.environ.get("BRAINSCAN_SOAK_REPOSITORY", ""))
    data = Path(os.environ.get("BRAINSCAN_SOAK_DATA", ""))
    if not (repository / "brainscan" / "config.pbtxt").exists() or not data.is_dir():
        pytest.skip(reason=NO_SOAK_INPUTS)
    files = sorted(p for p in data.rglob("*.tif") if not p.stem.endswith("_mask"))
    return repository, files


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    """The demo repository served on loopback, its slices, a scratch folder and the report;
    the report is written when the module's runs are done (passed or not)."""
    from brainscan.serving import Ports, TritonServer

    repository, files = _soak_inputs()
    work = tmp_path_factory.mktemp("soak")
    report = SoakReport()
    started = time.monotonic()
    ports = Ports.free()
    with TritonServer(repository, ports=ports, log_file=work / "tritonserver.log") as server:
        yield server, repository, files, work, report
    report.figures["total_minutes"] = round((time.monotonic() - started) / 60, 1)
    folder = ROOT / "benchmarks" / "results" / f"{time.strftime('%Y-%m-%d')}-soak"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "soak.json").write_text(
        json.dumps(
            {"passed": report.passed, "checks": [asdict(c) for c in report.checks], "figures": report.figures}, indent=2
        )
        + "\n"
    )
    (folder / "soak.md").write_text(report.markdown())


def _assert(report: SoakReport, prefix: str) -> None:
    failed = [c for c in report.checks if c.name.startswith(prefix) and not c.passed]
    assert not failed, failed


def test_a_flood_is_refused_fast_with_bounded_memory_and_latency_recovers(soak):
    server, _, files, _, report = soak
    flood(server, files, report)
    _assert(report, "flood")


def test_ten_thousand_requests_do_not_grow_the_server(soak):
    server, _, files, _, report = soak
    long_run(server, files, report)
    _assert(report, "long run")


def test_hostile_files_fail_alone_under_an_address_space_limit(soak):
    server, _, files, work, report = soak
    hostile_files(server, files, report, work)
    _assert(report, "hostile")


def test_killed_stubs_and_a_killed_serve_lose_nothing(soak):
    _, repository, files, work, report = soak
    faults(repository, files, report, work)
    _assert(report, "faults")
