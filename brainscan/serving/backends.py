"""The embedded tritonserver: its tree inside the nvidia-pytriton wheel, a writable copy of
its python backend with the stub for this Python, and the environment the stub needs."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
from importlib import metadata
from pathlib import Path

from brainscan import contract
from brainscan.serving.errors import ServerError


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


def prepare_backends(home: Path | None = None) -> Path:
    """A writable backend directory with the python backend and the stub for this Python."""
    home = home or triton_home()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ServerError(f"nvidia-pytriton ships no python-backend stub for Python {version}")
    root = contract.cache_dir() / "triton-backends"
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
