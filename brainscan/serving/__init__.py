"""Serving: run and watch a real Triton Inference Server: by default the one shipped in the
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

# One module per job: backends (the wheel's tree and its python backend), ports, security
# (gRPC TLS and the admin key), process (the tritonserver process's lifecycle) and watchdog.
from brainscan.serving.backends import prepare_backends, server_environment, triton_home
from brainscan.serving.errors import ServerError
from brainscan.serving.ports import Ports, free_port, port_in_use
from brainscan.serving.process import TritonServer
from brainscan.serving.security import MIN_ADMIN_KEY, GrpcTls, read_admin_key
from brainscan.serving.watchdog import Watchdog

__all__ = [
    "MIN_ADMIN_KEY",
    "GrpcTls",
    "Ports",
    "ServerError",
    "TritonServer",
    "Watchdog",
    "free_port",
    "port_in_use",
    "prepare_backends",
    "read_admin_key",
    "server_environment",
    "triton_home",
]
