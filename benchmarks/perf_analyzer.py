"""perf_analyzer: find or install it, run a concurrency sweep, read its CSV.

The PyPI ``perf-analyzer`` wheel is a manylinux_2_38 binary (glibc 2.38, GCC 13's
libstdc++). On older systems (Debian 12 has glibc 2.36) ``install()`` puts the binary and
the C runtime of Debian 13 (libc6, libstdc++6, libgcc-s1, fetched with ``apt-get
download`` through a private sources list and unpacked with ``dpkg -x``) into a cache
folder, and the binary runs through that runtime's own dynamic loader. Nothing is
installed system-wide. Where a working ``perf_analyzer`` is on PATH (the NGC ``-sdk``
image, Ubuntu 24.04+) it is used as is.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from brainscan import contract
from brainscan.errors import BrainscanError

VERSION = "2.60.0"
WHEEL_PLATFORM = "manylinux_2_38_x86_64"
# The wheel's SHA-256 as PyPI publishes it (pypi.org/simple/perf-analyzer/): a binary that is
# executed must be the one expected. (The Debian runtime packages are verified by apt
# itself, against Debian's signed release files and the system keyring.)
WHEEL_SHA256 = "23ef56b107ae9233e5cf09fbdf508dd9b936a52f1bae2f63f53c8117087b3f25"
RUNTIME_PACKAGES = ("libc6", "libstdc++6", "libgcc-s1")
RUNTIME_SUITE = "trixie"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
UNSTABLE = "Failed to obtain stable measurement"


class PerfAnalyzerError(BrainscanError, RuntimeError):
    """perf_analyzer is missing, could not be installed, or failed; the message says which."""


class UnstableMeasurement(PerfAnalyzerError):
    """perf_analyzer's windows never agreed, whatever the window and the percentage."""


def cache_root() -> Path:
    return contract.cache_dir() / f"perf_analyzer-{VERSION}"


def _works(command: list[str]) -> bool:
    try:
        return subprocess.run([*command, "--version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _installed(root: Path) -> list[str] | None:
    binary = root / "wheel" / "perf_analyzer" / "bin" / "perf_analyzer"
    libs = root / "runtime" / "usr" / "lib" / "x86_64-linux-gnu"
    if not binary.exists():
        return None
    direct = [str(binary)]
    if _works(direct):
        return direct
    loader = libs / "ld-linux-x86-64.so.2"
    if loader.exists():
        command = [str(loader), "--library-path", str(libs), str(binary)]
        if _works(command):
            return command
    return None


def find() -> list[str] | None:
    """The command that runs perf_analyzer here, or None."""
    on_path = shutil.which("perf_analyzer")
    if on_path and _works([on_path]):
        return [on_path]
    return _installed(cache_root())


def _run(command: list[str], what: str, cwd: Path | None = None) -> None:
    result = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=600)
    if result.returncode != 0:
        raise PerfAnalyzerError(f"{what} failed ({' '.join(command[:4])} …): {result.stderr.strip()[-800:]}")


def verify(wheel: Path, expected: str = WHEEL_SHA256) -> None:
    """Refuse (and delete) a downloaded wheel whose SHA-256 is not the published one."""
    from brainscan.digest import sha256_file

    found = sha256_file(wheel)
    if found != expected:
        Path(wheel).unlink(missing_ok=True)
        raise PerfAnalyzerError(
            f"{Path(wheel).name} has SHA-256 {found}, not the published {expected}: "
            "refused (a damaged download, or not the file PyPI publishes)"
        )


def install(root: Path | None = None) -> list[str]:
    """Download the perf-analyzer wheel and, if the binary does not run as is, a newer C
    runtime beside it. Idempotent; returns the command that runs perf_analyzer."""
    root = Path(root or cache_root())
    found = _installed(root)
    if found:
        return found
    binary = _unpack_wheel(root)
    if _works([str(binary)]):
        return [str(binary)]
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        raise PerfAnalyzerError(
            "perf_analyzer needs glibc 2.38 and this system is older, without apt-get to fetch a newer runtime: "
            "run perf_analyzer in the NGC tritonserver -sdk image (docs/benchmarks.md)"
        )
    _unpack_runtime(root)
    found = _installed(root)
    if not found:
        raise PerfAnalyzerError(f"perf_analyzer still does not run with the {RUNTIME_SUITE} runtime in {root}")
    return found


def _unpack_wheel(root: Path) -> Path:
    """The published wheel, checked against its SHA-256 and unpacked into ``root``: its binary."""
    downloads = root / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    target = ["--platform", WHEEL_PLATFORM, "--python-version", "3.11", "--dest", str(downloads)]
    _run([*pip, *target, f"perf-analyzer=={VERSION}"], "pip download perf-analyzer")
    (wheel,) = downloads.glob("perf_analyzer-*.whl")
    verify(wheel)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(root / "wheel")
    binary = root / "wheel" / "perf_analyzer" / "bin" / "perf_analyzer"
    binary.chmod(0o755)
    return binary


def _unpack_runtime(root: Path) -> None:
    """Debian's RUNTIME_PACKAGES of RUNTIME_SUITE, fetched by apt (which checks them against
    Debian's signed release files) through a private sources list, unpacked into root/runtime."""
    apt = root / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb [signed-by={KEYRING}] http://deb.debian.org/debian {RUNTIME_SUITE} main\n")
    options = [
        f"-o=Dir::Etc::sourcelist={apt / 'sources.list'}",
        "-o=Dir::Etc::sourceparts=/dev/null",
        f"-o=Dir::State::Lists={apt / 'lists'}",
        f"-o=Dir::Cache={apt / 'cache'}",
        "-o=Debug::NoLocking=1",
    ]
    if os.geteuid() == 0:  # root's apt drops to user _apt, who cannot write into this cache folder
        options.append("-o=APT::Sandbox::User=root")
    _run(["apt-get", *options, "update"], f"apt-get update ({RUNTIME_SUITE})")
    debs = root / "debs"
    debs.mkdir(exist_ok=True)
    _run(["apt-get", *options, "download", *RUNTIME_PACKAGES], "apt-get download", cwd=debs)
    for deb in debs.glob("*.deb"):
        _run(["dpkg", "-x", str(deb), str(root / "runtime")], f"dpkg -x {deb.name}")


@dataclass
class Sweep:
    model: str
    csv: Path
    rows: list[dict]
    retries: int
    request_count: int
    log: str
    stability: float | None = None  # the --stability-percentage it was measured with, if given


def read_csv(path: Path) -> list[dict]:
    """perf_analyzer's CSV as dicts of floats (latencies in µs), sorted by concurrency."""
    with open(path, newline="") as handle:
        rows = [
            {k.strip(): float(v) for k, v in row.items() if k and v not in (None, "")} for row in csv.DictReader(handle)
        ]
    return sorted(rows, key=lambda r: r.get("Concurrency", 0))


def sweep(
    command: list[str],
    model: str,
    url: str,
    input_data: Path,
    concurrencies: tuple[int, int, int],
    csv_path: Path,
    request_count: int = 200,
    max_retries: int = 3,
    stability: float | None = None,
    loosen_to: float | None = None,
) -> Sweep:
    """A concurrency sweep over gRPC in count-windows mode. When perf_analyzer cannot get a
    stable measurement it is run again with twice the window, up to ``max_retries`` times;
    then, with ``loosen_to``, once more with that --stability-percentage (a shared machine's
    windows may never agree within 10 %: the result says which percentage it was measured with)."""
    start, end, step = concurrencies
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    logs = []
    attempts = [(request_count << n, stability) for n in range(max_retries + 1)]
    if loosen_to is not None:
        attempts.append((request_count << max_retries, loosen_to))
    for attempt, (count, percentage) in enumerate(attempts):
        args = [
            *command,
            "-m",
            model,
            "-u",
            url,
            "-i",
            "grpc",
            "--input-data",
            str(input_data),
            "--concurrency-range",
            f"{start}:{end}:{step}",
            "--measurement-mode",
            "count_windows",
            "--measurement-request-count",
            str(count),
            "-f",
            str(csv_path),
        ]
        if percentage is not None:
            args += ["--stability-percentage", f"{percentage:g}"]
        result = subprocess.run(args, capture_output=True, text=True, timeout=1800)
        output = result.stdout + result.stderr
        logs.append(f"$ {' '.join(args)}\n{output}")
        if result.returncode == 0 and UNSTABLE not in output and csv_path.exists():
            return Sweep(model, csv_path, read_csv(csv_path), attempt, count, "\n".join(logs), percentage)
        if UNSTABLE not in output:
            raise PerfAnalyzerError(
                f"perf_analyzer failed on {model} (exit {result.returncode}):\n{output.strip()[-1500:]}"
            )
    raise UnstableMeasurement(
        f"perf_analyzer found no stable measurement for {model} even with "
        f"{attempts[-1][0]} requests per window"
        + (f" and {attempts[-1][1]:g} % stability" if attempts[-1][1] is not None else "")
        + f":\n{logs[-1][-1500:]}"
    )
