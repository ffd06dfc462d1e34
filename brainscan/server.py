"""Run and watch a real Triton Inference Server: by default the one shipped in the
``nvidia-pytriton`` wheel, or any ``tritonserver`` binary (the NGC image's, in the container).

The wheel holds the ``tritonserver`` binary, the python backend and one
``triton_python_backend_stub`` per Python version. The server wants a backend directory
whose ``python/`` folder holds the stub, and the wheel's folder may be read-only, so the
backend is copied once into a cache folder. The stub embeds the first ``python`` on PATH,
so this environment's ``bin/`` goes first on PATH, and ``libpython`` on LD_LIBRARY_PATH.

A python-backend stub that dies (the kernel's OOM killer, a crash in a decoder) is not
restarted by Triton: every later request to that model fails with "Stub process … is not
healthy", and Triton 2.51 (the embedded server) still answers ready. ``Watchdog`` therefore
sends a real inference through the ensemble at intervals and restarts the server when it
keeps failing; clients retry meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from brainscan import contract, storage
from brainscan.storage import is_s3

PROBE_SHAPE = (48, 64)  # height, width of the watchdog's probe image


class ServerError(RuntimeError):
    """The server could not be started, or stopped before it was ready."""


# Triton's (glog) error lines: E1122 09:25:36.736615 2530 model_lifecycle.cc:642] "message"
TRITON_ERROR = re.compile(r"^E\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] ")
# logged by every CPU-only start of the embedded server: not a reason for anything
UNINFORMATIVE_ERRORS = ("CudaDriverHelper has not been initialized.",)


def _triton_error(line: str) -> str:
    message = TRITON_ERROR.sub("", line, count=1).strip()
    return message[1:-1] if len(message) > 1 and message[0] == message[-1] == '"' else message


@dataclass(frozen=True)
class Ports:
    grpc: int = contract.GRPC_PORT
    http: int = contract.HTTP_PORT
    metrics: int = contract.METRICS_PORT
    # chosen by free_port (Ports.free): a server that finds one taken tries others
    chosen: bool = field(default=False, compare=False)

    @classmethod
    def free(cls, host: str = contract.DEFAULT_HOST) -> Ports:
        return cls(free_port(host), free_port(host), free_port(host), chosen=True)


def triton_home() -> Path:
    """The tritonserver tree inside the nvidia-pytriton wheel."""
    try:
        import pytriton
    except ImportError:
        raise ServerError(
            "the Triton server binary comes with nvidia-pytriton: pip install '.[serve]' in the brainscan "
            "checkout (make demo does)"
        ) from None
    home = Path(pytriton.__file__).parent / "tritonserver"
    if not (home / "bin" / "tritonserver").exists():
        raise ServerError(f"no tritonserver binary in {home}")
    return home


def cache_dir() -> Path:
    root = os.environ.get("BRAINSCAN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "brainscan"
    )
    return Path(root)


def prepare_backends(home: Path | None = None) -> Path:
    """A writable backend directory with the python backend and the stub for this Python."""
    home = home or triton_home()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"nvidia-pytriton ships no python-backend stub for Python {version}")
    root = cache_dir() / "triton-backends"
    target = root / f"pytriton-{metadata.version('nvidia-pytriton')}-py{version}"
    if not (target / "python" / "triton_python_backend_stub").exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root))
        shutil.copytree(home / "backends" / "python", staging / "python", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, staging / "python" / "triton_python_backend_stub")
        try:
            staging.rename(target)  # atomic: concurrent starts never see half a copy
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def server_environment() -> dict[str, str]:
    env = os.environ.copy()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # libpython for the stub; the wheel's bundled libraries (libcudart, …) for the stub too,
    # which, unlike the server binary, does not find them by itself.
    libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(triton_home().parent.parent / "nvidia_pytriton.libs")]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (*libdirs, env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


_HANDED_OUT: set[tuple[str, int]] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = contract.DEFAULT_HOST) -> int:
    """A port free now, for tests and parallel servers: never one this process handed out
    before, and below the kernel's ephemeral range, so no outgoing connection can take it
    between now and the moment a server binds it (a port from bind(0) could be)."""
    import random

    low = _ephemeral_range()[0]
    candidates = random.Random().sample(range(10000, low), k=min(200, low - 10000)) if low > 10200 else []
    for port in candidates:
        if (host, port) in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add((host, port))
        return port
    with socket.socket() as sock:  # an unusual kernel setting: fall back to the OS's choice
        sock.bind((host, 0))
        _HANDED_OUT.add((host, sock.getsockname()[1]))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class GrpcTls:
    """TLS for the gRPC endpoint: the server's certificate and key (PEM); with
    ``client_ca``, clients must present a certificate signed by it (mutual TLS)."""

    certificate: Path
    key: Path
    client_ca: Path | None = None

    def flags(self) -> list[str]:
        for what, path in (("certificate", self.certificate), ("key", self.key), ("client CA", self.client_ca)):
            if path is not None and not Path(path).is_file():
                raise ServerError(f"TLS {what} file {path} does not exist")
        flags = [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={Path(self.certificate).resolve()}",
            f"--grpc-server-key={Path(self.key).resolve()}",
        ]
        if self.client_ca is not None:
            flags += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={Path(self.client_ca).resolve()}"]
        return flags


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    """In the child, before exec: the kernel kills it when the process that started it
    dies, even by SIGKILL, so a killed ``brainscan serve`` leaves no server holding ports."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


MIN_ADMIN_KEY = 16  # characters


def read_admin_key(path: Path) -> str:
    """The admin key in ``path`` (surrounding white space ignored)."""
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise ServerError(f"cannot read the admin key file {path}: {exc.strerror}") from None
    if len(key) < MIN_ADMIN_KEY or any(c.isspace() or c in ":=," for c in key):
        raise ServerError(
            f"the admin key in {path} must be at least {MIN_ADMIN_KEY} characters, without spaces, ':', '=' or ','"
        )
    return key


class TritonServer:
    """A tritonserver process serving ``repository``; a context manager that waits until the
    ensemble is ready and stops the server (and its python stubs) on exit.

    ``binary`` and ``backend_directory`` name another Triton (the NGC image's
    /opt/tritonserver); by default the embedded one, which serves only the local flavour.
    Triton's administrative APIs (contract.ADMIN_APIS) need ``admin_key``; without one they
    get a random key nobody knows, i.e. they are off. With gRPC TLS, HTTP (which can also
    infer) and metrics listen on loopback only, and so they do for the embedded server (Triton
    2.51 predates the 25.07 HTTP fixes), unless ``http_host`` / ``metrics_host`` say otherwise."""

    def __init__(
        self,
        repository: Path | str,
        host: str = contract.DEFAULT_HOST,
        ports: Ports = Ports(),
        log_file: Path | None = None,
        log_verbose: int = 0,
        grpc_tls: GrpcTls | None = None,
        binary: Path | None = None,
        backend_directory: Path | None = None,
        admin_key: str | None = None,
        metrics_host: str | None = None,
        http_host: str | None = None,
    ):
        # s3://… is handed to Triton as written (it reads object storage itself)
        self.repository: Path | str = str(repository) if is_s3(repository) else Path(repository).resolve()
        self.host = host
        self.ports = ports
        self.log_file = Path(log_file) if log_file else None
        self.log_verbose = log_verbose
        self.grpc_tls = grpc_tls
        self.binary = Path(binary) if binary else None
        self.backend_directory = Path(backend_directory) if backend_directory else None
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.admin_key = admin_key or secrets.token_urlsafe(32)
        self.admin_enabled = admin_key is not None
        # Plain HTTP (which can infer too) and metrics stay on loopback when gRPC is TLS, and
        # when the embedded Triton 2.51 (older than the 25.07 HTTP fixes) would be exposed.
        plain_host = contract.DEFAULT_HOST if grpc_tls or self.embedded else host
        self.http_host = http_host or plain_host
        self.metrics_host = metrics_host or plain_host

    @property
    def embedded(self) -> bool:
        return self.binary is None

    @property
    def grpc_url(self) -> str:
        return f"{self._local_host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"{'127.0.0.1' if self.http_host in ('0.0.0.0', '') else self.http_host}:{self.ports.http}"

    @property
    def _local_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    def command(self, backends: Path) -> list[str]:
        return [
            str(self.binary or triton_home() / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.ports.grpc}",
            f"--http-address={self.http_host}",
            f"--http-port={self.ports.http}",
            f"--metrics-address={self.metrics_host}",
            f"--metrics-port={self.ports.metrics}",
            f"--log-verbose={self.log_verbose}",
            "--exit-timeout-secs=10",
            *self.admin_flags(),
            *(self.grpc_tls.flags() if self.grpc_tls else []),
        ]

    def admin_flags(self) -> list[str]:
        restricted = f"{','.join(contract.ADMIN_APIS)}:{contract.ADMIN_HEADER}={self.admin_key}"
        return [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]

    def _check_repository(self, local: Path) -> None:
        """Configs parse, the ensemble is wired, the flavour fits this server, weights exist."""
        from brainscan.export.repository import RepositoryError, flavour_of, validate_repository

        try:
            flavour = flavour_of(validate_repository(local))
            if flavour != "local" and self.embedded:
                raise ServerError(
                    f"{self.repository} is the {flavour} flavour: its networks need Triton's {flavour} backend"
                    + (" and a GPU" if flavour == "tensorrt" else "")
                    + ", which the embedded CPU server does not have. Serve it with `docker compose -f "
                    "docker/compose.yaml up -d triton` (docs/gpu.md, 'On a GPU host'), or write a local repository "
                    "with `brainscan export repository --flavour local`"
                )
            validate_repository(local, require_weights=True)
        except RepositoryError as exc:
            # name the bucket, not the temporary skeleton the checks ran on
            raise ServerError(str(exc).replace(str(local), str(self.repository))) from None

    def start(self) -> None:
        try:
            with storage.local_view(self.repository) as local:  # an s3:// bucket: the same checks on its skeleton
                self._check_repository(local)
        except storage.StorageError as exc:
            raise ServerError(str(exc)) from None
        for name, host, port in (
            ("gRPC", self.host, self.ports.grpc),
            ("HTTP", self.http_host, self.ports.http),
            ("metrics", self.metrics_host, self.ports.metrics),
        ):
            if port_in_use(host, port):
                raise ServerError(
                    f"port {port} ({name}) on {self.host} is already in use: stop what uses it "
                    f"or choose another with --{name.lower()}-port"
                )
        if self.embedded:
            backends, env = prepare_backends(), server_environment()
        else:
            if not self.binary.is_file():
                raise ServerError(f"no tritonserver binary at {self.binary}")
            backends, env = self.backend_directory or self.binary.parent.parent / "backends", os.environ.copy()
        if self.log_file is None:
            self.log_file = Path(tempfile.mkstemp(prefix="tritonserver-", suffix=".log")[1])
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            # A session of its own, so stop() can reach the python stubs it spawns; and
            # killed with its parent, so nothing outlives a killed `brainscan serve`.
            self.process = subprocess.Popen(
                self.command(backends),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1

    def log_report(self, errors: int = 8, lines: int = 25) -> str:
        """What to show when the server did not come up or died: Triton's error lines, which
        say why a model did not load (no space for the python backend's shared memory, a
        failed warm-up sample, a missing engine) and sit far above the options table that
        ends its log; without any, the log's tail. Then where the whole log is."""
        if not self.log_file or not self.log_file.is_file():  # /dev/stdout in a container: nothing to read back
            return ""
        text = self.log_file.read_text(errors="replace").splitlines()
        found = list(dict.fromkeys(_triton_error(line) for line in text if TRITON_ERROR.match(line)))
        found = [e for e in found if e not in UNINFORMATIVE_ERRORS]
        shown = [f"  {e}" for e in found[:errors]] + (
            [f"  … {len(found) - errors} more"] if len(found) > errors else []
        )
        body = "Triton's errors:\n" + "\n".join(shown) if shown else "\n".join(text[-lines:])
        return f"{body}\n(the whole log: {self.log_file})"

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Block until the server and the ensemble are ready; raise with the log if not.
        (Asked over HTTP, which stays plain when gRPC uses TLS.)"""
        import tritonclient.http as httpclient

        deadline = time.monotonic() + timeout
        client = httpclient.InferenceServerClient(self.http_url)
        try:
            while time.monotonic() < deadline:
                if self.process is None or self.process.poll() is not None:
                    code = None if self.process is None else self.process.returncode
                    raise ServerError(f"tritonserver exited (code {code}) before it was ready:\n{self.log_report()}")
                with contextlib.suppress(Exception):
                    if client.is_server_ready() and client.is_model_ready(contract.ENSEMBLE):
                        return
                time.sleep(0.25)
        finally:
            client.close()
        self.stop()
        raise ServerError(f"tritonserver was not ready within {timeout:.0f} s:\n{self.log_report()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the server, wait, then make sure no stub of its session is left. Ctrl-C
        and SIGTERM are held off meanwhile (from the main thread), so a second one cannot
        cut the clean-up short."""
        if self.process is None:
            return None
        process, self.process = self.process, None
        with _signals_held():
            pgid = process.pid  # the session leader's pid is its group id
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    break
                time.sleep(0.5)
        return process.returncode

    def restart(self, timeout: float = 180.0) -> None:
        """Stop the server and its stubs, start it again on the same ports, wait until ready."""
        self.stop()
        self.start()
        self.wait_ready(timeout)

    def probe(self, timeout: float = 10.0) -> str | None:
        """One real inference through the ensemble, over HTTP on loopback: None if the
        answer is right, else what went wrong."""
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(self.http_url, connection_timeout=timeout, network_timeout=timeout)
        try:
            image = httpclient.InferInput(contract.IMAGE, [1, 1], "BYTES")
            image.set_data_from_numpy(np.array([[probe_image()]], dtype=np.object_))
            result = client.infer(contract.ENSEMBLE, [image])
            mask = result.as_numpy(contract.MASK)
            if mask is None or mask.shape[1:] != PROBE_SHAPE:
                return f"the probe image came back with a mask of shape {None if mask is None else mask.shape}"
            return None
        except Exception as exc:  # any failure is the answer: a message to act on
            return str(exc) or type(exc).__name__
        finally:
            with contextlib.suppress(Exception):
                client.close()

    def __enter__(self) -> TritonServer:
        for attempt in range(3):
            try:
                self.start()
                self.wait_ready()
                return self
            except ServerError as exc:
                self.stop()
                # ports this process chose were taken meanwhile by someone else: choose again
                if not (self.ports.chosen and "already in use" in str(exc) and attempt < 2):
                    raise
                self.ports = Ports.free(self._local_host)
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def _signals_held():
    """Ignore SIGINT, SIGTERM and SIGHUP inside the block (main thread only: elsewhere
    Python cannot change handlers, and only the main thread receives them anyway)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    names = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in names}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_PROBE: bytes | None = None


def probe_image() -> bytes:
    """A small grey PNG with a bright blob: a valid slice for any brainscan ensemble."""
    global _PROBE
    if _PROBE is None:
        from PIL import Image

        yy, xx = np.mgrid[: PROBE_SHAPE[0], : PROBE_SHAPE[1]]
        pixels = (60 + 120 * np.exp(-((yy - 20) ** 2 + (xx - 40) ** 2) / 60.0)).astype(np.uint8)
        buffer = io.BytesIO()
        # stored, not deflated: the same bytes whatever zlib Pillow bundles (the committed
        # repository's warm-up sample is this image)
        Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
        _PROBE = buffer.getvalue()
    return _PROBE


# What a probe's failure means. Load shedding is an answer ("busy"): it never triggers a
# restart. A dead stub never recovers by itself: restart at once. A timeout may be a flood
# or a hang: only many in a row restart.
BUSY = ("exceeds maximum queue size", "request timeout expired")
FATAL = ("stub process", "is not healthy")
TIMEOUT = ("timed out", "timeout")


def classify(problem: str | None) -> str:
    """ok, busy, fatal, timeout or error."""
    if problem is None:
        return "ok"
    text = problem.lower()
    for kind, words in (("busy", BUSY), ("fatal", FATAL), ("timeout", TIMEOUT)):
        if any(word in text for word in words):
            return kind
    return "error"


@dataclass
class Watchdog:
    """Keeps a TritonServer serving: every ``interval`` seconds a real inference goes
    through the ensemble. The server is restarted at once when its process exits or a
    python stub is dead, after ``failures`` other failed probes in a row, or after
    ``timeouts`` probes in a row without an answer (a flood answers "busy" instead: the
    queues are bounded). More than ``max_restarts`` restarts within ``window`` seconds is a
    crash loop: it gives up (ServerError), so whatever supervises `brainscan serve`
    (Docker, Kubernetes) takes over."""

    server: TritonServer
    interval: float = 5.0
    failures: int = 2
    timeouts: int = 6
    max_restarts: int = 5
    window: float = 600.0
    log: Callable[[str], None] = print
    restarts: list[float] = field(default_factory=list)

    def check(self) -> tuple[str, str | None]:
        """One probe: (kind, message) with kind as ``classify`` says, or "exited"."""
        process = self.server.process
        if process is None or process.poll() is not None:
            return "exited", f"tritonserver exited (code {None if process is None else process.returncode})"
        problem = self.server.probe(timeout=max(self.interval, 5.0))
        return classify(problem), problem

    def restart(self, reason: str) -> None:
        now = time.monotonic()
        self.restarts = [t for t in self.restarts if now - t < self.window] + [now]
        if len(self.restarts) > self.max_restarts:
            raise ServerError(
                f"tritonserver failed {len(self.restarts)} times within {self.window:.0f} s, last: "
                f"{reason}; giving up:\n{self.server.log_report()}"
            )
        self.log(f"watchdog: restarting tritonserver ({reason})")
        started = time.monotonic()
        self.server.restart()
        self.log(f"watchdog: tritonserver ready again after {time.monotonic() - started:.1f} s")

    def run(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Watch until ``stop()`` says so (checked every interval)."""
        streak: dict[str, int] = {}
        while not stop():
            process = self.server.process
            if process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(self.interval)
            else:
                time.sleep(self.interval)
            if stop():
                return
            kind, problem = self.check()
            streak = {kind: streak.get(kind, 0) + 1} if kind in ("error", "timeout") else {}
            if kind in ("ok", "busy"):
                continue
            limit = {"error": self.failures, "timeout": self.timeouts}.get(kind, 1)
            self.log(f"watchdog: probe failed ({kind}, {streak.get(kind, 1)}/{limit}): {problem}")
            if streak.get(kind, 1) >= limit:
                self.restart(problem or kind)
                streak = {}
