"""A real Orthanc PACS (Debian's `orthanc` with its DICOMweb plugin) started by the tests on
free loopback ports from a JSON config and a storage folder of their own, and ended by
process id."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from brainscan.serving import free_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
MISSING = (
    "needs Debian's orthanc and orthanc-dicomweb (apt-get install orthanc orthanc-dicomweb dicom3tools; "
    ".ci/run installs them)"
)


def available() -> bool:
    return Path(ORTHANC).exists() and DICOMWEB_PLUGIN.exists()


@dataclass(eq=False)  # one running server each: compared by identity
class Orthanc:
    """One Orthanc configured in ``root``: its modalities, users, Lua scripts and any other settings."""

    root: Path
    modalities: dict = field(default_factory=dict)
    users: dict = field(default_factory=dict)
    lua_scripts: list[Path] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        self.root = Path(self.root)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        config = {
            "Name": "brainscan-test",
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": self.modalities,
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "HttpTimeout": 60,
            "StableAge": 1,
            "LuaScripts": [str(Path(p).resolve()) for p in self.lua_scripts],
            **self.settings,
        }
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "orthanc.json").write_text(json.dumps(config, indent=1))
        self.process: subprocess.Popen | None = None

    def start(self) -> Orthanc:
        if not available():
            pytest.skip(reason=MISSING)
        log = open(self.root / "orthanc.log", "ab")
        self.process = subprocess.Popen(
            [ORTHANC, str(self.root / "orthanc.json")], stdout=log, stderr=log, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("Orthanc did not answer within 30 s")

    def _request(self, path: str, data: bytes | None = None, method: str | None = None):
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if self.users:
            import base64

            user, password = next(iter(self.users.items()))
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        return urllib.request.urlopen(request, timeout=60)

    def get(self, path: str):
        with self._request(path) as answer:
            return json.loads(answer.read())

    def get_bytes(self, path: str) -> bytes:
        with self._request(path) as answer:
            return answer.read()

    def find_study(self, uid: str) -> str:
        """Orthanc's id of the study with StudyInstanceUID ``uid``."""
        found = self.post("/tools/lookup", uid.encode())
        return next(item["ID"] for item in found if item["Type"] == "Study")

    def post(self, path: str, body) -> object:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        with self._request(path, data, "POST") as answer:
            text = answer.read()
        return json.loads(text) if text else None

    def upload(self, files: list[Path]) -> None:
        for path in files:
            self.post("/instances", Path(path).read_bytes())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
