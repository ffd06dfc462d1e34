"""docker/: one pinned NGC release for every image, Dockerfiles that install what the
python models and the engine build import, and a compose file wired to the contract."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tomllib
import yaml
from conftest import cli_args, port_args
from layout import installed_layout, site_packages
from typer.main import get_command
from typer.testing import CliRunner

from brainscan import contract
from brainscan.cli import app
from brainscan.export.doctor import read_pin

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
IMAGE = re.compile(r"nvcr\.io/nvidia/([a-z-]+):([^\s\"'`]+)")
PIN = read_pin(DOCKER / ".env")


def _text_files():
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        skip = {".git", ".venv", "artifacts", "data", "__pycache__", ".pytest_cache", "build"} & set(parts)
        if (
            path.is_file()
            and not skip
            and not any(part.endswith(".egg-info") for part in parts)
            and path.suffix in {"", ".md", ".py", ".yaml", ".yml", ".toml", ".Dockerfile", ".env", ".txt"}
        ):
            yield path


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def export_runs() -> str:
    """Where the export service's engine build reads the runs: its BRAINSCAN_ARTIFACTS/runs."""
    return f"{_compose()['services']['export']['environment']['BRAINSCAN_ARTIFACTS']}/runs"


def test_the_release_is_pinned_once():
    assert re.fullmatch(r"\d\d\.\d\d", PIN["NGC_RELEASE"]), PIN
    assert re.fullmatch(r"\d+(\.\d+){0,2}", PIN["NGC_TENSORRT"]), PIN
    pinned_here = [p for p in _text_files() if re.search(r"^NGC_RELEASE=", p.read_text(errors="ignore"), re.M)]
    assert pinned_here == [DOCKER / ".env"]


def test_the_pinned_release_has_the_security_fixes_and_a_tensorrt_that_builds_strongly_typed():
    # Triton releases before 25.07 lack the python-backend shared-memory and chunked-HTTP
    # fixes; engines are built strongly typed from FP16 graphs, which needs TensorRT 10.12+
    from brainscan.export.tensorrt_version import MINIMUM_VERSION, version_tuple

    assert tuple(int(p) for p in PIN["NGC_RELEASE"].split(".")) >= (25, 7)
    pinned = version_tuple(PIN["NGC_TENSORRT"])
    assert pinned[0] > MINIMUM_VERSION[0] or pinned[:2] >= MINIMUM_VERSION


def test_every_ngc_image_names_the_pinned_release():
    tag = re.compile(r"(\$\{NGC_RELEASE(:\?[^}\s]*)?\}|" + re.escape(PIN["NGC_RELEASE"]) + r")-(py3|py3-sdk)")
    seen = set()
    for path in _text_files():
        for name, found in IMAGE.findall(path.read_text(errors="ignore")):
            match = tag.fullmatch(found)
            assert match, f"{path.relative_to(ROOT)}: nvcr.io/nvidia/{name}:{found} is not the pinned release"
            seen.add((name, match.group(3)))
    assert {("tritonserver", "py3"), ("tensorrt", "py3"), ("tritonserver", "py3-sdk")} <= seen


@pytest.mark.parametrize("dockerfile,base", [("triton.Dockerfile", "tritonserver"), ("export.Dockerfile", "tensorrt")])
def test_dockerfiles_build_from_the_pinned_release_and_copy_real_paths(dockerfile, base):
    text = (DOCKER / dockerfile).read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    first_from = next(i for i, line in enumerate(lines) if line.startswith("FROM"))
    assert "ARG NGC_RELEASE" in lines[:first_from]  # an ARG used in FROM must come before it
    assert lines[first_from] == f"FROM nvcr.io/nvidia/{base}:${{NGC_RELEASE}}-py3"
    assert "ARG NGC_TENSORRT" in lines and "${NGC_TENSORRT}" in text  # the image build checks the TensorRT version
    for line in lines:
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{dockerfile}: COPY {source} does not exist"


def _lock(name: str) -> dict[str, tuple[str, int]]:
    """name -> (pinned version, number of hashes) of a docker/*.lock file."""
    pins, current = {}, None
    for line in (DOCKER / name).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)==([^ \\]+)", line)
        if match:
            current = match.group(1).lower().replace("_", "-")
            pins[current] = (match.group(2), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


@pytest.mark.parametrize(
    "lock,extras,tools", [("triton.lock", ["s3", "pacs"], False), ("export.lock", ["export", "s3"], True)]
)
def test_each_image_installs_hash_pinned_versions_of_every_dependency(lock, extras, tools):
    """A dependency added to pyproject.toml without `make docker-locks` fails here, not in
    an image build on a GPU host."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in extras for r in project["optional-dependencies"][extra]]
    if tools:
        wanted += [
            Requirement(line)
            for line in (DOCKER / "export-tools.in").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    pins = _lock(lock)
    for requirement in wanted:
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in docker/{lock}: run `make docker-locks`"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (name, pins[name][0], str(requirement))
    assert all(hashes > 0 for _, hashes in pins.values())  # pip --require-hashes refuses anything else
    # resolved for the images' own Python, with the release's own tritonclient
    assert f"autogenerated by pip-compile with Python {PIN['NGC_PYTHON']}\n" in (DOCKER / lock).read_text()
    (release,) = [
        Requirement(line)
        for line in (DOCKER / "release.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert release.name == "tritonclient" and pins["tritonclient"][0] == str(release.specifier).removeprefix("==")
    text = (DOCKER / ("triton.Dockerfile" if lock == "triton.lock" else "export.Dockerfile")).read_text()
    assert f"pip install --require-hashes -r docker/{lock}" in text and "pip install --no-deps" in text


def test_images_install_what_their_code_imports():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "tensorflow-cpu" not in " ".join(extras["export"])  # engines are built from ONNX, not Keras
    # each image imports, while it is built, what its commands need (boto3: s3:// repositories)
    assert "import boto3, cv2, numpy, PIL, brainscan.preprocessing" in (DOCKER / "triton.Dockerfile").read_text()
    assert (
        "import boto3, onnx, onnxconverter_common, polygraphy, brainscan.export.tensorrt"
        in (DOCKER / "export.Dockerfile").read_text()
    )


def _triton_cmd() -> str:
    (line,) = [line for line in (DOCKER / "triton.Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    command = json.loads(line[4:])
    assert command[:2] == ["sh", "-c"]
    return command[2]


def test_the_images_commands_exist():
    runner = CliRunner()
    for command in (["export", "tensorrt"], ["doctor"], ["serve"], ["health"]):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, command
    compose = _compose()
    assert compose["services"]["export"]["command"] == ["brainscan", "export", "tensorrt"]
    doctor, serve = _triton_cmd().split(" && ")
    assert doctor == "brainscan doctor --repository /models"
    assert serve.startswith(
        "exec brainscan serve --tritonserver /opt/tritonserver/bin/tritonserver --repository /models"
    )


@pytest.mark.server
def test_the_containers_command_and_health_check_run_here(local_repository, tmp_path):
    """The triton image's CMD and compose's health check, run as written but with the
    embedded tritonserver in the role of the image's /opt/tritonserver (backends and
    environment prepared as the image has them) and loopback instead of 0.0.0.0."""
    from brainscan.serving import Ports, prepare_backends, server_environment, triton_home

    doctor, serve = _triton_cmd().split(" && ")
    models = shutil.copytree(local_repository, tmp_path / "models")
    env = server_environment() | {"HOME": str(tmp_path)}
    checked = subprocess.run(
        shlex.split(doctor.replace("/models", str(models))), capture_output=True, text=True, timeout=120, env=env
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    ports = Ports.free()
    command = shlex.split(
        serve.replace("/opt/tritonserver/bin/tritonserver", str(triton_home() / "bin" / "tritonserver"))
        .replace("/models", str(models))
        .replace("--host 0.0.0.0", "--host 127.0.0.1")
    )[1:]
    command += [*cli_args(backend_directory=prepare_backends()), *port_args(ports)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        probe = [
            arg.replace("127.0.0.1:8000", f"127.0.0.1:{ports.http}")
            for arg in _compose()["services"]["triton"]["healthcheck"]["test"][1:]
        ]
        deadline = time.monotonic() + 120
        while (health := subprocess.run(probe, capture_output=True, text=True, env=env)).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, health.stdout + health.stderr
            time.sleep(1)
        assert "inference    ok" in health.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=60)
    assert "stopped" in stderr


def test_the_server_container_runs_with_least_privilege():
    triton = _compose()["services"]["triton"]
    assert triton["user"] == "1000:1000" and "USER triton-server" in (DOCKER / "triton.Dockerfile").read_text()
    assert triton["read_only"] is True and any(t.startswith("/tmp") for t in triton["tmpfs"])
    assert triton["cap_drop"] == ["ALL"] and "no-new-privileges:true" in triton["security_opt"]
    assert triton["mem_limit"] and triton["pids_limit"] > 0
    assert triton["logging"]["options"]["max-size"] and triton["logging"]["options"]["max-file"]
    assert triton["restart"] == "unless-stopped"  # on-failure:N gives up for good after N crashes
    assert "--infer" in triton["healthcheck"]["test"]  # a real inference, not a readiness flag


def test_compose_wires_the_gpu_services_to_the_contract():
    services = _compose()["services"]
    for name in ("export", "triton"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert services[name]["build"]["args"]["NGC_RELEASE"].startswith("${NGC_RELEASE")
        assert services[name]["build"]["context"] == ".."
    triton = services["triton"]
    assert triton["shm_size"] == "1g"
    assert "${BRAINSCAN_REPOSITORY_DIR:-../model_repository}:/models:ro" in triton["volumes"]
    # the doctor sees the runs the engines came from (the export service writes them under
    # the checkout's artifacts/runs) through its --sources option's variable
    mounted = {target: host for host, target, *_ in (re.split(r":(?![-?])", v) for v in triton["volumes"])}
    sources = triton["environment"]["BRAINSCAN_SOURCES"]
    assert mounted[sources] == "${BRAINSCAN_RUNS:-../artifacts/runs}" and export_runs() == "artifacts/runs"
    (option,) = [p for p in get_command(app).commands["doctor"].params if p.name == "sources"]
    assert option.envvar == "BRAINSCAN_SOURCES"
    ports = {p.rsplit(":", 1)[1] for p in triton["ports"]}
    assert ports == {str(contract.HTTP_PORT), str(contract.GRPC_PORT), str(contract.METRICS_PORT)}
    assert all(p.startswith("${BRAINSCAN_BIND:-127.0.0.1}:") for p in triton["ports"])  # loopback by default
    health = " ".join(triton["healthcheck"]["test"])
    assert f"127.0.0.1:{contract.HTTP_PORT}" in health
    export = services["export"]
    assert export["environment"]["BRAINSCAN_ARTIFACTS"] == "artifacts"
    sdk = services["sdk"]
    assert sdk["image"].endswith("-py3-sdk") and sdk["depends_on"]["triton"]["condition"] == "service_healthy"


def test_the_checkout_is_never_mounted_over_the_images_own_workspace():
    """The -sdk image puts /workspace/install/{bin,lib} first on PATH and LD_LIBRARY_PATH
    (perf_analyzer's libraries); a checkout mounted over /workspace hides them."""
    services = _compose()["services"]
    for name in ("export", "sdk"):
        service = services[name]
        assert "..:/brainscan" in service["volumes"] and service["working_dir"] == "/brainscan", name
    for name, service in services.items():
        targets = [v.split(":")[1] for v in service.get("volumes", [])]
        assert not any(t == "/workspace" or t.startswith("/workspace/") for t in targets), name
    assert "WORKDIR /brainscan" in (DOCKER / "export.Dockerfile").read_text()


def test_the_onnxruntime_engine_caches_sit_one_level_below_a_volume():
    """ONNX Runtime's TensorRT provider creates only the last folder of its cache path, and a
    fresh volume is empty: the volume is mounted at ORT_TRT_CACHE itself, each model's cache
    one level below it, and the image creates the mount point."""
    from brainscan.export.repository import ORT_TRT_CACHE, RepositorySpec, model_configs

    triton = _compose()["services"]["triton"]
    named = {v.split(":")[0]: v.split(":")[1] for v in triton["volumes"] if not v.startswith(("$", ".", "/"))}
    assert named["ort-trt-cache"] == ORT_TRT_CACHE and "ort-trt-cache" in _compose()["volumes"]
    assert f"mkdir -p {ORT_TRT_CACHE}" in (DOCKER / "triton.Dockerfile").read_text()
    for name in contract.NETWORKS:
        config = model_configs(RepositorySpec(flavour="onnxruntime", device="gpu"))[name]
        (accelerator,) = config["optimization"]["execution_accelerators"]["gpu_execution_accelerator"]
        cache = Path(accelerator["parameters"]["trt_engine_cache_path"])
        assert cache.parent == Path(ORT_TRT_CACHE)


def _docs_gpu_test_command() -> list[str]:
    (line,) = [
        line
        for line in (ROOT / "docs" / "gpu.md").read_text().splitlines()
        if "run --rm export" in line and "-m gpu" in line
    ]
    command = line.split("run --rm export", 1)[1].strip().strip("`")
    return shlex.split(command)


def test_the_documented_gpu_test_command_imports_the_installed_package():
    """In the export container the package is installed (not editable) and the checkout is
    the working directory, whose ./brainscan has no export subpackage: `python3 -m pytest`
    would import that folder and fail. The command in docs/gpu.md runs here the same way: the
    package as it installs, the checkout as working directory, site-packages without the
    editable hook (-S, dependencies on PYTHONPATH)."""
    command = _docs_gpu_test_command()
    assert command[0] == "python3" and "-m" in command and "pytest" in command
    with tempfile.TemporaryDirectory() as root:
        layout = installed_layout(Path(root))
        env = {"PYTHONPATH": f"{layout}:{site_packages()}", "PATH": "/usr/bin:/bin", "HOME": root}
        collect = ["--collect-only", "-q", "-p", "no:cacheprovider"]
        readme = subprocess.run(
            [sys.executable, "-S", *command[1:], *collect],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert readme.returncode in (0, 5), readme.stdout + readme.stderr  # 5: the GPU test deselected nothing else
        assert "test_real_fp16_engines_of_the_demo_pass_the_gate" in readme.stdout
        naive = [arg for arg in command[1:] if arg != "-P"]
        broken = subprocess.run(
            [sys.executable, "-S", *naive, *collect], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert broken.returncode != 0 and "No module named 'brainscan.export'" in broken.stdout + broken.stderr


def test_build_context_leaves_out_environments_and_artifacts():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "artifacts", "data", ".git", "model_repository"} <= set(ignored)


@pytest.mark.parametrize("dockerfile", ["triton.Dockerfile", "export.Dockerfile"])
def test_images_copy_every_package_folder_pip_needs(dockerfile):
    """`pip install .` in the image fails if a package-dir of pyproject.toml was not copied."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {path.split("/")[0] for path in tool["package-dir"].values()}
    copied = {
        source
        for line in (DOCKER / dockerfile).read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    }
    assert folders | {"pyproject.toml", "README.md"} <= copied, folders - copied


def test_make_gpu_builds_the_images_then_the_engines_then_serves_the_compose_services(tmp_path):
    """`make gpu` (the README's GPU path) as make would run it: after the FP16 graphs, the
    compose commands of docs/gpu.md's steps 2-4 on services that exist, in that order."""
    result = subprocess.run(
        ["make", "-n", "gpu", f"ART={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    compose = [shlex.split(line) for line in lines if line.startswith("docker compose")]
    assert any("export fp16" in line for line in lines[: lines.index(next(x for x in lines if x.startswith("docker")))])
    services = _compose()["services"]
    (build, engines, serve) = compose
    assert build[-2:] == ["tools", "build"] and "tools" in services["export"]["profiles"]
    # between the image builds and the engine build: the two images' TensorRT must be the same release
    check = next(i for i, line in enumerate(lines) if "same-tensorrt.sh" in line)
    assert lines.index(next(line for line in lines if "build" in line and line.startswith("docker"))) < check
    assert check < lines.index(next(line for line in lines if " run --rm" in line and line.startswith("docker")))
    assert engines[4:6] == ["run", "--rm"] and engines[-1] == "export" and "export" in services
    assert serve[4:] == ["up", "-d", "--wait", "triton"] and "healthcheck" in services["triton"]
    assert all(c[:4] == ["docker", "compose", "-f", "docker/compose.yaml"] for c in compose)
