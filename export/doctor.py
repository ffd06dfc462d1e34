"""`brainscan doctor`: does each engine of a repository fit the server that will load it?

A TensorRT plan only loads on the TensorRT version that built it and only runs on GPUs of
the compute capability it was built for; a plan built from an older ONNX, or for another
batch range than its config, serves wrong or not at all. Triton reports these as opaque
deserialization errors. The doctor compares the record of every engine a config lists with
the target (this machine, or what is given) and says plainly what to rebuild.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from brainscan import contract
from brainscan.contract import Flavour
from brainscan.digest import sha256_file
from brainscan.export.gpu import cuda_visible, visible_gpus
from brainscan.export.profiles import Profile, ProfileError, profile_from_config
from brainscan.export.records import EngineRecord
from brainscan.export.repository import (
    VERSION,
    RepositoryError,
    flavour_of,
    plan_files,
    read_config,
    validate_repository,
)
from brainscan.export.tensorrt_version import EXPORT_COMMAND, installed_version
from brainscan.intended_use import IntendedUse
from brainscan.tables import text_table

PIN_FILE = Path(__file__).resolve().parent.parent / "docker" / ".env"
LDCONFIG = ("ldconfig", "/sbin/ldconfig", "/usr/sbin/ldconfig")


def read_pin(path: Path | None = None) -> dict[str, str]:
    """KEY=value lines of docker/.env (the one place the NGC release is pinned); {} when
    this is not a source checkout."""
    path = Path(path or PIN_FILE)
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


@dataclass
class Target:
    """What the engines must fit; ``None`` means unknown here (that check is skipped)."""

    tensorrt_version: str | None = None
    tensorrt_source: str = ""
    compute_capability: str | None = None
    gpu_source: str = ""


def _ldconfig_libraries(name: str) -> list[str]:
    """Paths of ``name`` (e.g. libnvinfer.so) in the dynamic linker's cache, as `ldconfig -p`
    lists them: where the loader finds a library in any image, whatever folder its
    distribution put it in."""
    for command in LDCONFIG:
        found = shutil.which(command)
        if found:
            try:
                listing = subprocess.run([found, "-p"], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            return [
                line.rsplit("=>", 1)[1].strip()
                for line in listing.splitlines()
                if line.strip().startswith(f"{name}.") and "=>" in line
            ]
    return []


def _tensorrt_from_library() -> tuple[str, str] | None:
    """The version of the libnvinfer the loader would use: LD_LIBRARY_PATH first, then the
    linker cache; the version is the real file's name (libnvinfer.so.11 -> libnvinfer.so.11.3.0)."""
    candidates = [
        p
        for d in os.environ.get("LD_LIBRARY_PATH", "").split(":")
        if d
        for p in sorted(glob.glob(os.path.join(d, "libnvinfer.so.*")))
    ]
    for path in [*candidates, *_ldconfig_libraries("libnvinfer.so")]:
        match = re.search(r"libnvinfer\.so\.(\d+\.\d+\.\d+)", os.path.realpath(path))
        if match:
            return match.group(1), path
    return None


def _gpu_from_nvidia_smi() -> tuple[str, str] | None:
    gpus = cuda_visible(visible_gpus())
    if not gpus:
        return None
    return gpus[0].compute_capability, f"nvidia-smi ({gpus[0].name})"


def _tensorrt_from_module() -> tuple[str, str] | None:
    version = installed_version()
    return (version, "tensorrt module") if version else None


def _tensorrt_from_pin() -> tuple[str, str] | None:
    pin = read_pin()
    if not pin.get("NGC_TENSORRT"):
        return None
    return pin["NGC_TENSORRT"], f"NGC {pin.get('NGC_RELEASE')} images (docker/.env)"


def _first_found(given: str | None, finders) -> tuple[str | None, str]:
    """(value, where it came from): ``given`` wins, then the first finder that finds one."""
    if given:
        return given, "given"
    return next((found for finder in finders if (found := finder())), (None, ""))


def detect_target(tensorrt_version: str | None = None, compute_capability: str | None = None) -> Target:
    """Given values win; then this machine (tensorrt module, libnvinfer, nvidia-smi); then
    the TensorRT of the pinned NGC release in docker/.env."""
    return Target(
        *_first_found(tensorrt_version, (_tensorrt_from_module, _tensorrt_from_library, _tensorrt_from_pin)),
        *_first_found(compute_capability, (_gpu_from_nvidia_smi,)),
    )


def same_tensorrt(built: str, target: str) -> bool:
    """Plans load only on the TensorRT release that built them: compare as many
    major.minor.patch parts as both versions give (a pin of '10.7.0' matches 10.7.0.23)."""
    a, b = built.split("."), target.split(".")
    n = min(len(a), len(b), 3)
    return a[:n] == b[:n]


class Status(contract.Choice):
    OK = "ok"
    MISMATCH = "MISMATCH"
    MISSING = "MISSING"
    NOT_CHECKED = "not checked"  # nothing here to compare with


@dataclass
class Finding:
    model: str
    check: str
    status: Status
    detail: str
    engine: str = ""  # the plan file, when the finding is about one engine of several

    @property
    def bad(self) -> bool:
        return self.status in (Status.MISMATCH, Status.MISSING)


Check = tuple[str, bool | None, str]  # a check's name, its result (None: not checkable here), what it found


def _tensorrt_check(record: EngineRecord, target: Target) -> Check:
    built = str(record.tensorrt_version)
    if not target.tensorrt_version:
        return (
            "TensorRT version",
            None,
            f"built with {built}; no TensorRT found here and none given (--tensorrt-version)",
        )
    ok = same_tensorrt(built, target.tensorrt_version)
    return (
        "TensorRT version",
        ok,
        f"built with {built}, target has {target.tensorrt_version} ({target.tensorrt_source})",
    )


def _capability_check(record: EngineRecord, listed_for: str, target: Target) -> Check:
    built, gpu = str(record.compute_capability), record.gpu_name
    if listed_for:
        return "compute capability", built == listed_for, f"built for {built} ({gpu}), listed for {listed_for}"
    if target.compute_capability:
        found = f"built for {built} ({gpu}), target is {target.compute_capability} ({target.gpu_source})"
        return "compute capability", built == target.compute_capability, found
    return (
        "compute capability",
        None,
        f"built for {built} ({gpu}); no GPU found here and none given (--compute-capability)",
    )


def _profile_check(record: EngineRecord, config) -> Check:
    try:
        expected = profile_from_config(config)
    except ProfileError as exc:
        return "optimization profile", False, str(exc)
    recorded = Profile.from_dict(record.profile)
    same = recorded.min == expected.min and recorded.max == expected.max
    found = (
        f"engine {recorded.min[0]}..{recorded.max[0]} x {list(recorded.max[1:])}, "
        f"config {expected.min[0]}..{expected.max[0]} x {list(expected.max[1:])}"
    )
    return "optimization profile", same, found


def _source_check(record: EngineRecord, sources: Sequence[Path]) -> Check:
    onnx = source_onnx(record.onnx_file, sources)
    if onnx is None:
        where = f"nor under {', '.join(map(str, sources))}" if sources else "(give the training runs with --sources)"
        return "source ONNX", None, f"{record.onnx_file} is not here to compare {where}"
    unchanged = sha256_file(onnx) == record.onnx_sha256
    return (
        "source ONNX",
        unchanged,
        f"{onnx} " + ("unchanged since the build" if unchanged else "changed since the build"),
    )


def _one_engine(
    version_dir: Path, network: str, listed_for: str, plan: str, config, target: Target, sources: Sequence[Path] = ()
) -> list[Finding]:
    """The checks of one plan: ``listed_for`` is the compute capability the config names it
    for ('' when the config lists no engine per capability, so any GPU loads it)."""
    if not (version_dir / plan).exists():
        return [Finding(network, "engine", Status.MISSING, f"{version_dir / plan} is missing: build it", plan)]
    record = EngineRecord.of_plan(version_dir, plan)
    if record is None:
        missing = (
            f"{version_dir / EngineRecord.name_for(plan)} is missing, so how the plan was built is unknown: rebuild it"
        )
        return [Finding(network, "engine record", Status.MISSING, missing, plan)]
    checks = [
        _tensorrt_check(record, target),
        _capability_check(record, listed_for, target),
        _profile_check(record, config),
        _source_check(record, sources),
    ]
    return [
        Finding(
            network, check, Status.NOT_CHECKED if ok is None else (Status.OK if ok else Status.MISMATCH), detail, plan
        )
        for check, ok, detail in checks
    ]


def source_onnx(recorded: str, sources: Sequence[Path] = ()) -> Path | None:
    """The graph an engine was built from: at the path its record holds, else (built in
    another container or machine) as <run>/<file> under one of ``sources``, the folders of
    training runs visible here."""
    path = Path(recorded)
    if recorded and path.is_file():
        return path
    for folder in sources:
        candidate = Path(folder) / path.parent.name / path.name
        if recorded and candidate.is_file():
            return candidate
    return None


def _engine_findings(
    repository: Path, network: str, config, target: Target, sources: Sequence[Path] = ()
) -> list[Finding]:
    """Every engine the config lists, and whether one is there for the target's GPU."""
    version_dir = repository / network / VERSION
    engines = plan_files(config)
    found: list[Finding] = []
    if "" not in engines:  # engines per compute capability: the target's must be among them
        listed = ", ".join(sorted(engines))
        if target.compute_capability is None:
            found.append(
                Finding(
                    network,
                    "engine for this GPU",
                    Status.NOT_CHECKED,
                    f"engines for {listed}; no GPU found here and none given (--compute-capability)",
                )
            )
        elif target.compute_capability in engines:
            found.append(
                Finding(
                    network,
                    "engine for this GPU",
                    Status.OK,
                    f"{engines[target.compute_capability]} for {target.compute_capability} "
                    f"({target.gpu_source}); engines for {listed}",
                )
            )
        else:
            found.append(
                Finding(
                    network,
                    "engine for this GPU",
                    Status.MISSING,
                    f"none for compute capability {target.compute_capability} ({target.gpu_source}): "
                    f"the config lists {listed}; build one on such a GPU",
                )
            )
    for listed_for, plan in sorted(engines.items()):
        found += _one_engine(version_dir, network, listed_for, plan, config, target, sources)
    return found


def diagnose(repository: Path, target: Target, sources: Sequence[Path] = ()) -> list[Finding]:
    repository = Path(repository)
    try:
        configs = validate_repository(repository)
    except RepositoryError as exc:
        return [Finding("repository", "layout", Status.MISMATCH, str(exc))]
    flavour = flavour_of(configs)
    if flavour is not Flavour.TENSORRT:
        try:
            validate_repository(repository, require_weights=True)
            return [
                Finding(
                    "repository",
                    "layout",
                    Status.OK,
                    f"{flavour} flavour, every model's files are present (no engines to check)",
                )
            ]
        except RepositoryError as exc:
            return [Finding("repository", "layout", Status.MISMATCH, str(exc))]
    findings = [Finding("repository", "layout", Status.OK, "tensorrt flavour, configs parse and the ensemble is wired")]
    for network in contract.NETWORKS:
        findings += _engine_findings(repository, network, configs[network], target, sources)
    return findings


def advice(findings: list[Finding], repository: Path) -> str:
    bad = sorted({f.model for f in findings if f.bad and f.model in contract.NETWORKS})
    if not bad:
        return ""
    return (
        f"build the {' and '.join(bad)} engine(s) again for this server: on the GPU host that runs it, "
        f"`{EXPORT_COMMAND}` (builds with the same NGC release as the server), "
        f"or `brainscan export tensorrt --repository {repository}` inside that container"
    )


def declared_use(repository: Path) -> IntendedUse | None:
    """The intended use the repository's classifier declares to clients (its config's
    parameter), or None when it declares none yet (a tensorrt repository before its first
    engine build, or one written by an earlier kit)."""
    path = Path(repository) / contract.CLASSIFIER / "config.pbtxt"
    if not path.exists():
        return None
    parameters = read_config(path).parameters
    if contract.INTENDED_USE_PARAMETER not in parameters:
        return None
    return IntendedUse.from_json(parameters[contract.INTENDED_USE_PARAMETER].string_value, str(path))


def table(findings: list[Finding]) -> str:
    rows = [("model", "engine", "check", "status", "detail")]
    rows += [(f.model, f.engine, f.check, f.status, f.detail) for f in findings]
    return text_table(rows, rule=False)
