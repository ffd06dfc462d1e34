"""The tritonserver process: start it on a checked repository, wait until the ensemble is
ready, probe it with a real inference, stop it with its python stubs, restart it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from brainscan import contract, storage
from brainscan.contract import Flavour
from brainscan.probe import PROBE_SHAPE, probe_image
from brainscan.repository import RepositoryError, flavour_of, validate_repository
from brainscan.serving.backends import prepare_backends, server_environment, triton_home
from brainscan.serving.errors import ServerError
from brainscan.serving.ports import Ports, port_in_use
from brainscan.serving.security import GrpcTls, admin_flags
from brainscan.storage import is_s3
from brainscan.triton_errors import log_errors

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _parent_death_signal():
    """The C library's prctl, looked up in this process before any child is started, so a
    system without it stops ``serve`` with a message instead of losing the guarantee silently."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError) as exc:
        raise ServerError(
            f"cannot tie tritonserver's life to this process (no prctl in the C library: {exc}); "
            "the kit's server runs on Linux"
        ) from None


def _die_with_parent(prctl) -> Callable[[], None]:
    """For the child, before exec: the kernel kills it when the process that started it dies,
    even by SIGKILL, so a killed ``brainscan serve`` leaves no server holding ports. A refusal
    is written to the server's log (the child's stderr), the one place the child can say it."""

    def child() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            reason = os.strerror(ctypes.get_errno()).encode()
            said = b"brainscan: prctl(PR_SET_PDEATHSIG) failed (" + reason + b"): a killed serve leaves it running"
            os.write(2, said + b"\n")

    return child


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
        ensembles: tuple[str, ...] = contract.ENSEMBLES,
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
        self.metrics_host = metrics_host or self.http_host  # "as HTTP", as serve --help says
        self.ensembles = ensembles  # what the repository must serve (benchmarks' older designs: fewer)

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
            *admin_flags(self.admin_key),
            *(self.grpc_tls.flags() if self.grpc_tls else []),
        ]

    def _check_repository(self, local: Path) -> None:
        """Configs parse, the ensemble is wired, the flavour fits this server, weights exist."""
        try:
            flavour = flavour_of(validate_repository(local, ensembles=self.ensembles))
            if flavour is not Flavour.LOCAL and self.embedded:
                raise ServerError(
                    f"{self.repository} is the {flavour} flavour: its networks need Triton's {flavour} backend"
                    + (" and a GPU" if flavour is Flavour.TENSORRT else "")
                    + f", which the embedded CPU server does not have. Serve it with `{contract.SERVE_ON_GPU}` "
                    "(docs/gpu.md, 'On a GPU host'), or write a local repository "
                    "with `brainscan export repository --flavour local`"
                )
            validate_repository(local, require_weights=True, ensembles=self.ensembles)
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
                preexec_fn=_die_with_parent(_parent_death_signal()),
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
        found = log_errors(text)
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
