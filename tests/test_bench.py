"""A short benchmark against the real local server: perf_analyzer accepts the input data
built from real images, the sweeps end with zero failed requests, and the CSVs, the
summary and the Markdown report hold numbers. No timing thresholds."""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import BRAINSCAN, phantom_slices, start_serve

from brainscan import contract
from brainscan.benchmarks import perf_analyzer
from brainscan.benchmarks.run import BenchConfig, network_onnx, run
from brainscan.serving import free_port

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


@pytest.fixture(scope="module")
def perf_command():
    """perf_analyzer as `make test` set it up beforehand (`brainscan bench setup`): the tests
    themselves never download anything."""
    command = perf_analyzer.find()
    if command is None:
        pytest.skip(reason="perf_analyzer is not set up here: `brainscan bench setup` downloads it (make test runs it)")
    return command


@pytest.mark.server
def short_bench(server, phantom_dir: Path, out: Path, files: int, **settings) -> BenchConfig:
    """A bench run of the test server from here: no repository here, ``files`` phantom slices,
    40 requests a window. A smoke test of the wiring: on a shared 2-core machine three windows
    need not agree within perf_analyzer's 10 %, and these tests must not depend on it (999 %)."""
    settings = {"request_count": 40, "stability_percentage": 999, **settings}
    return BenchConfig(
        url=server.grpc_url, repository=None, files=phantom_slices(phantom_dir, files), out=out, **settings
    )


def test_a_short_benchmark_of_the_served_ensemble(server, phantom_dir, runs, tmp_path, perf_command, monkeypatch):
    """As against any server (the production flavour's engines, a remote one): no repository
    here, the networks' ONNX for the baselines from the training runs, no key (statistics are
    open). One composing model whose windows never agree (preprocess, through a perf_analyzer
    that says so for it alone) is left out with a note after one doubling, and the rest is
    reported."""
    calls = tmp_path / "preprocess-calls"
    wrapper = tmp_path / "perf_analyzer"
    wrapper.write_text(f"""#!/bin/sh
case " $* " in
  *" -m {contract.PREPROCESS} "*) echo "$*" >> {calls}; echo "Failed to obtain stable measurement."; exit 1;;
esac
exec {shlex.join(perf_command)} "$@"
""")
    wrapper.chmod(0o755)
    monkeypatch.setattr(perf_analyzer, "find", lambda: [str(wrapper)])
    config = short_bench(
        server,
        phantom_dir,
        tmp_path,
        files=6,
        concurrency=(1, 2, 1),
        model_concurrency=(1, 1, 1),
        runs=runs[contract.CLASSIFIER].parent,
        baseline_seconds=0.5,
    )
    folder = run(config, log=lambda _: None)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["baseline_onnx"] == {n: str(runs[n] / "model.onnx") for n in contract.NETWORKS}
    assert summary["served_platforms"] == {
        contract.CLASSIFIER: "python",
        contract.SEGMENTER: "python",
    }  # the local flavour
    measured = list(contract.NETWORKS)
    assert set(summary["served"]) == {contract.ENSEMBLE, *measured}
    assert (
        len(calls.read_text().splitlines()) == 2
    )  # 40, then 80 requests per window (999 % is already looser than 30 %)
    (note,) = summary["notes"]
    assert note.startswith(f"{contract.PREPROCESS} alone: no stable measurement even at 999 %")
    assert note.endswith(f"left out of the report, see raw/{contract.PREPROCESS}.log")
    assert "Failed to obtain stable measurement" in (folder / "raw" / f"{contract.PREPROCESS}.log").read_text()
    logs = [p.read_text() for p in (folder / "raw").glob("*.log")]
    assert len(logs) == 4 and not any(" -H " in t for t in logs)  # perf_analyzer as a user runs it: no header
    for model in (contract.ENSEMBLE, *measured):
        served = summary["served"][model]
        assert (folder / "raw" / f"{model}.csv").exists()
        assert served["rows"] and all(r["Inferences/Second"] > 0 for r in served["rows"])
        assert all(stats["failed"] == 0 for stats in served["server"].values()), served["server"]
        assert served["server"][model]["requests"] > 0
    ensemble = summary["served"][contract.ENSEMBLE]
    assert [int(r["Concurrency"]) for r in ensemble["rows"]] == [1, 2]
    assert set(ensemble["server"]) == {contract.ENSEMBLE, *contract.COMPOSING_MODELS}  # the ensemble reached every step
    assert {(b["batch"], b["threads"]) for b in summary["in_process"]} == {(b, t) for b in (1, 4, 8) for t in (1, 2)}
    assert summary["keras"]["images_per_s"] > 0
    assert all(f > 0 for f in summary["flops_per_image"].values())
    report = (folder / "report.md").read_text()
    for heading in (
        "## The ensemble under load",
        "## Where the time goes",
        "## Baselines",
        "## Ratios and targets",
        "## FLOPs",
    ):
        assert heading in report
    assert "| 1 | " in report and "served / in-process throughput" in report
    assert (folder / "throughput.png").stat().st_size > 0 and (folder / "latency.png").stat().st_size > 0


def test_a_server_with_nothing_of_it_here_is_load_tested_alone(
    server, phantom_dir, tmp_path, perf_command, monkeypatch
):
    """`pip install '.[bench]'` and a server elsewhere: no repository, no runs. The load test
    and Triton's statistics are all there; the baselines are skipped with a note saying why."""
    monkeypatch.setattr(perf_analyzer, "find", lambda: perf_command)
    config = short_bench(server, phantom_dir, tmp_path, files=4, concurrency=(1, 1, 1), composing=False, runs=None)
    folder = run(config, log=lambda _: None)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["in_process"] == [] and summary["flops_per_image"] == {} and summary["keras"] is None
    assert summary["served"][contract.ENSEMBLE]["rows"][0]["Inferences/Second"] > 0
    (note,) = summary["notes"]
    assert note.startswith("in-process baselines and FLOPs skipped: no ONNX of the classifier found")
    report = (folder / "report.md").read_text()
    assert "## The ensemble under load" in report and "## Where the time goes" in report
    assert "## Baselines" not in report and "no in-process baselines" in report


def test_the_networks_come_from_the_served_repository_else_from_the_runs(tmp_path):
    repository, runs = tmp_path / "repository", tmp_path / "runs"
    for path in (
        repository / contract.SEGMENTER / "1" / "model.onnx",
        runs / contract.SEGMENTER / "model.onnx",
        runs / contract.CLASSIFIER / "model.onnx",
    ):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"onnx")
    assert network_onnx(repository, runs, contract.SEGMENTER) == repository / contract.SEGMENTER / "1" / "model.onnx"
    assert network_onnx(repository, runs, contract.CLASSIFIER) == runs / contract.CLASSIFIER / "model.onnx"
    with pytest.raises(FileNotFoundError, match="--runs"):
        network_onnx(repository, None, contract.CLASSIFIER)


def _documented_perf_analyzer(name: str = "alone") -> tuple[list[str], list[str]]:
    """The commands of docs/benchmarks.md's "perf_analyzer NAME" block: the input data, then
    the sweep (continuation lines joined)."""
    text = DOCS.read_text()
    block = re.search(rf"<!-- perf_analyzer {name} -->\s*```bash\n(.*?)```", text, re.S)
    assert block, f"docs/benchmarks.md lost its 'perf_analyzer {name}' block"
    lines = [line for line in block.group(1).replace("\\\n", " ").splitlines() if line and not line.startswith("#")]
    data, sweep = (shlex.split(line) for line in lines)
    return data, sweep


@pytest.mark.server
@pytest.mark.parametrize("block", ["alone", "pixels"])
def test_the_documented_plain_perf_analyzer_run_works_against_a_default_server(
    local_repository, phantom_dir, tmp_path, perf_command, block
):
    """What a user runs after `make serve`, as docs/benchmarks.md shows it: `brainscan serve`
    with its defaults (no admin key), then perf_analyzer with no key and no header, on the
    ensemble of files and on the pixels path. Only the addresses and paths are this test's;
    the sweep must end with every request answered."""
    data, sweep = _documented_perf_analyzer(block)
    assert data[:3] == [".venv/bin/brainscan", "bench", "input-data"] and sweep[0] == "perf_analyzer"
    assert "-H" not in sweep and sweep[sweep.index("-u") + 1] == contract.DEFAULT_URL
    grpc = free_port()
    server = start_serve(
        local_repository, grpc, tmp_path / "tritonserver.log", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        subprocess.run(
            [BRAINSCAN, "health", "--url", f"127.0.0.1:{grpc}", "--wait", "180"],
            check=True,
            capture_output=True,
            timeout=240,
        )
        inputs, out = tmp_path / "input.json", tmp_path / "local.csv"
        documented = {"alone": ("input.json", "local.csv"), "pixels": ("pixels.json", "pixels.csv")}[block]
        given = {"artifacts/data/phantom": str(phantom_dir), f"artifacts/perf/{documented[0]}": str(inputs)}
        subprocess.run([BRAINSCAN, *[given.get(a, a) for a in data[1:]]], check=True, capture_output=True, timeout=120)
        given = {
            contract.DEFAULT_URL: f"127.0.0.1:{grpc}",
            f"artifacts/perf/{documented[0]}": str(inputs),
            f"artifacts/perf/{documented[1]}": str(out),
        }
        # the one addition: a shared 2-core machine's windows need not agree within perf_analyzer's 10 %
        result = subprocess.run(
            [*perf_command, *[given.get(a, a) for a in sweep[1:]], "--stability-percentage", "999"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.terminate()
        server.wait(60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "restricted" not in result.stdout + result.stderr
    rows = perf_analyzer.read_csv(out)
    swept = sweep[sweep.index("--concurrency-range") + 1].split(":")
    assert [int(r["Concurrency"]) for r in rows] == list(range(int(swept[0]), int(swept[1]) + 1))
    assert all(r["Inferences/Second"] > 0 for r in rows)


def fake_perf_analyzer(tmp_path: Path, refuse: str) -> tuple[Path, Path]:
    """A perf_analyzer stand-in that logs its arguments to ``calls``, runs the shell lines
    ``refuse`` (which may fail the call, with $CALLS the log), and otherwise writes a one-row CSV."""
    calls = tmp_path / "calls"
    script = tmp_path / "fake_perf_analyzer"
    script.write_text(f"""#!/bin/sh
CALLS={calls}
echo "$@" >> "$CALLS"
{refuse}
while [ $# -gt 0 ]; do [ "$1" = "-f" ] && out=$2; shift; done
printf 'Concurrency,Inferences/Second,p50 latency\\n1,10.0,1000\\n' > "$out"
""")
    script.chmod(0o755)
    return script, calls


def _sweep_with(script: Path, model: str, tmp_path: Path, **options):
    """perf_analyzer.sweep of ``model`` by a fake perf_analyzer: concurrency 1, 50 requests a window."""
    files = (tmp_path / "in.json", (1, 1, 1), tmp_path / "out.csv")
    return functools.partial(
        perf_analyzer.sweep, [str(script)], model, "127.0.0.1:1", *files, request_count=50, **options
    )


def test_an_unstable_measurement_is_retried_with_a_larger_window(tmp_path):
    """perf_analyzer itself is replaced by a script that reports an unstable measurement
    once, then succeeds: the sweep must run again with twice the request count."""
    script, calls = fake_perf_analyzer(
        tmp_path,
        'if [ $(wc -l < "$CALLS") -eq 1 ]; then\n'
        '  echo "Failed to obtain stable measurement within 10 measurement windows"; exit 1\nfi',
    )
    result = _sweep_with(script, "brainscan", tmp_path)()
    first, second = calls.read_text().splitlines()
    assert "--measurement-request-count 50" in first and "--measurement-request-count 100" in second
    assert result.retries == 1 and result.request_count == 100
    assert result.rows == [{"Concurrency": 1.0, "Inferences/Second": 10.0, "p50 latency": 1000.0}]


def test_windows_that_never_agree_are_measured_with_a_looser_stability_and_say_so(tmp_path):
    """A fake perf_analyzer that is stable only with --stability-percentage 30 (a shared
    2-core machine): the window doublings fail, the loosened run measures, and the sweep
    records the percentage it was measured with."""
    script, calls = fake_perf_analyzer(
        tmp_path,
        'case "$*" in *"--stability-percentage 30"*) ;; *) echo "Failed to obtain stable measurement."; exit 1;; esac',
    )
    sweep = _sweep_with(script, "preprocess", tmp_path, max_retries=2, stability=10)
    result = sweep(loosen_to=30)
    assert [line.split("--stability-percentage ")[1] for line in calls.read_text().splitlines()] == [
        "10",
        "10",
        "10",
        "30",
    ]
    assert result.stability == 30 and result.request_count == 200 and result.rows[0]["Inferences/Second"] == 10.0
    calls.unlink()
    with pytest.raises(perf_analyzer.UnstableMeasurement, match="even with 200 requests per window and 10 % stability"):
        sweep()


def test_other_perf_analyzer_failures_are_reported_not_retried(tmp_path):
    script = tmp_path / "fake_perf_analyzer"
    script.write_text("#!/bin/sh\necho 'error: failed to get model metadata: unknown model'; exit 1\n")
    script.chmod(0o755)
    with pytest.raises(perf_analyzer.PerfAnalyzerError, match="unknown model"):
        perf_analyzer.sweep([str(script)], "nope", "127.0.0.1:1", tmp_path / "in.json", (1, 1, 1), tmp_path / "o.csv")


def test_a_perf_analyzer_wheel_that_is_not_the_published_one_is_refused(tmp_path):
    """The binary is executed: its wheel must carry PyPI's published SHA-256."""
    wheel = tmp_path / f"perf_analyzer-{perf_analyzer.VERSION}-py3-none-{perf_analyzer.WHEEL_PLATFORM}.whl"
    wheel.write_bytes(b"PK\x03\x04 a wheel someone else built")
    with pytest.raises(perf_analyzer.PerfAnalyzerError, match="not the published 23ef56b1"):
        perf_analyzer.verify(wheel)
    assert not wheel.exists()
    cached = list((perf_analyzer.cache_root() / "downloads").glob("perf_analyzer-*.whl"))
    if cached:  # the one this machine downloaded passes
        perf_analyzer.verify(cached[0])


@pytest.mark.parametrize("design", ["python-steps", "in-graph"])
@pytest.mark.parametrize("network", list(contract.NETWORKS))
def test_the_free_networks_take_and_give_what_each_designs_networks_do(network, design, tmp_path):
    """The ceiling benchmark's stand-ins: the tensor names, types and shapes of the networks
    of each design, and answers computable by hand (mean and threshold)."""
    import numpy as np
    import onnxruntime as ort

    from brainscan.benchmarks.free_networks import write_free_network

    session = ort.InferenceSession(str(write_free_network(tmp_path / "free.onnx", network, design)))
    (given,), given_out = session.get_inputs(), session.get_outputs()[0]
    size = contract.CLASSIFIER_SIZE if network == contract.CLASSIFIER else contract.SEGMENTER_SIZE
    if design == "in-graph":  # the served networks' outputs: the classifier's score too (zeros: no gate)
        assert given.name == contract.PIXELS and given_out.name == contract.NETWORK_OUTPUT_SPEC[network].name
        assert [o.name for o in session.get_outputs()] == [s.name for s in contract.NETWORK_OUTPUTS[network]]
        pixels = np.zeros((2, 30, 40, 1), np.float32)
        pixels[:, :10] = 200.0  # a bright top third
    else:
        assert given.name == contract.NETWORK_INPUT[network]
        pixels = np.zeros((2, size, size, 3), np.float32)
        pixels[:, : size // 3] = 200.0
    answer = session.run(None, {given.name: pixels})[0]
    if network == contract.CLASSIFIER:
        assert answer.shape == (2, 1) and answer.dtype == np.float32
        mean = pixels.mean()
        np.testing.assert_allclose(answer, np.full((2, 1), 1 / (1 + np.exp(-(mean - 128)))), atol=1e-6)
    elif design == "in-graph":
        assert answer.shape == (2, 30, 40) and answer.dtype == np.uint8
        assert answer[:, :10].all() and not answer[:, 10:].any()
    else:
        assert answer.shape == (2, size, size, 1) and answer.dtype == np.float32
        assert (answer[:, : size // 3] > 0.5).all() and (answer[:, size // 3 :] < 0.5).all()


@pytest.mark.server
def test_a_short_ceiling_measurement_of_both_designs(phantom_dir, tmp_path, perf_command):
    """Free networks, one python instance, the previous design (python resize and mask
    steps) and the current one (python decodes): each served by its own Triton on loopback;
    every request answered and every process's CPU counted."""
    from brainscan.benchmarks.ceiling import PREVIOUS_POSTPROCESS, CeilingConfig, measure

    folder = measure(
        CeilingConfig(
            files=phantom_slices(phantom_dir, 6),
            out=tmp_path,
            instances=(1,),
            concurrency=(1, 1, 1),
            request_count=30,
            stability_percentage=999,
            series_slices=20,
        ),
        log=lambda _: None,
    )
    summary = json.loads((folder / "ceiling.json").read_text())
    assert [(r["instances"], r["design"]) for r in summary["runs"]] == [(1, "python-steps"), (1, "in-graph")]
    # a series of 20 slices three ways: the PNG path decodes every slice in preprocess, the pixels
    # paths (over gRPC, through shared memory) none
    png, pixels, shared = summary["series"]
    assert [c["path"] for c in summary["series"]] == ["png", "pixels", "pixels-shm"]
    assert {c["slices"] for c in summary["series"]} == {20}
    assert png["server_ms"][contract.PREPROCESS] > 0
    assert max(c["server_ms"].get(contract.PREPROCESS, 0.0) for c in (pixels, shared)) < 0.05
    assert png["client_ms"] > 0 and pixels["client_ms"] > 0 and shared["client_ms"] > 0
    steps = {
        "python-steps": {"tritonserver", *contract.COMPOSING_MODELS, PREVIOUS_POSTPROCESS},
        "in-graph": {"tritonserver", *contract.COMPOSING_MODELS},
    }
    for measured in summary["runs"]:
        assert measured["images"] > 0 and all(s["failed"] == 0 for s in measured["server"].values())
        assert set(measured["cpu_ms_per_image"]) == steps[measured["design"]]
        assert all(ms > 0 for ms in measured["cpu_ms_per_image"].values()), measured["cpu_ms_per_image"]
        outside = sum(v for k, v in measured["cpu_ms_per_image"].items() if k not in contract.NETWORKS)
        assert measured["outside_networks_ms"] == pytest.approx(outside)
    report = (folder / "ceiling.md").read_text()
    assert "| python instances | python-steps | in-graph |" in report and "| in-graph | 1 |" in report
    assert "## A series: CPU ms per slice, the PNG path and the pixels path" in report and "| pixels | 20 |" in report


def test_a_summary_from_an_earlier_kit_still_makes_its_report_and_other_json_is_refused(tmp_path):
    """The committed 2026-11-21 summary predates two fields: it reads with them empty and its
    report names the served ensemble's figures; a JSON that is not a summary is named."""
    from brainscan.benchmarks.report import write_report
    from brainscan.benchmarks.summary import BenchSummary
    from brainscan.errors import DataError

    committed = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "2026-11-21-vm" / "summary.json"
    summary = BenchSummary.read(committed)
    assert summary.served_platforms == {} and summary.served[contract.ENSEMBLE]["rows"]
    text = write_report(tmp_path, summary).read_text()
    best = max(r["Inferences/Second"] for r in json.loads(committed.read_text())["served"][contract.ENSEMBLE]["rows"])
    assert f"{best:.1f}" in text and "networks: unknown" in text
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"url": "x", "images_per_second": 3}))
    with pytest.raises(DataError, match="not a benchmark summary"):
        BenchSummary.read(other)
