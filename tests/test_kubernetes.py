"""deploy/kubernetes, checked without a cluster: every kustomization renders with `kubectl
kustomize` and its objects validate strictly against the Kubernetes schemas
(kubernetes-validate); the CRD objects, which no schema here covers, are held to what the
rest of the kit says (ports, labels, metric names, CLI options). Truths written by hand:
the "restricted" Pod Security Standard's rules, the labels of a kube-dns pod, the options
`brainscan` really accepts (parsed by its own CLI)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import metrics_after_one_request
from typer.main import get_command

from brainscan import contract
from brainscan.cli import app
from brainscan.export.doctor import read_pin

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ["overlays/tensorrt", "overlays/onnxruntime", "build-engines", "kserve", "node"]
VALIDATOR = Path(sys.executable).parent / "kubernetes-validate"
# the oldest Kubernetes these manifests are for (preStop's sleep action is on by default from 1.30),
# and the newest schema here
VERSIONS = ["1.30.0", "1.37.0"]
# kinds of operators, not of Kubernetes: no schema here; held to the kit below instead
CRD_KINDS = {"PodMonitor", "PrometheusRule", "ServingRuntime", "InferenceService"}
KUBECTL = shutil.which("kubectl")
# checkov, pinned, in an environment of its own (make venv): its dependencies clash with the kit's
CHECKOV = Path(sys.prefix) / "checkov" / "bin" / "checkov"
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (1.30+, with its built-in kustomize) is not installed")


def render(name: str) -> list[dict]:
    result = subprocess.run([KUBECTL, "kustomize", str(DEPLOY / name)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(name) for name in KUSTOMIZATIONS}


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def pod_templates(objects: list[dict]) -> list[tuple[str, dict]]:
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"])
        for o in objects
        if o["kind"] in ("Deployment", "Job", "StatefulSet")
    ]


def selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels and the In/Exists expressions used here)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        if operator == "In" and labels.get(key) not in expression["values"]:
            return False
        if operator == "Exists" and key not in labels:
            return False
    return True


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
@pytest.mark.parametrize("version", VERSIONS)
def test_every_kustomization_renders_and_validates_strictly(name, version, tmp_path):
    result = subprocess.run([KUBECTL, "kustomize", str(DEPLOY / name)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(result.stdout)
    checked = subprocess.run(
        [str(VALIDATOR), "--strict", "-k", version, str(manifest)], capture_output=True, text=True, timeout=300
    )
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    passed = output.count(" passed for resource ")
    unknown = {o["kind"] for o in objects} & CRD_KINDS
    # everything else really met a schema (a misspelt core kind would only warn)
    assert passed == len([o for o in objects if o["kind"] not in CRD_KINDS]), output
    assert output.count("Couldn't find schema") == len([o for o in objects if o["kind"] in unknown]), output


def test_a_misspelt_field_fails_the_validation(tmp_path):
    """The check above can fail: strict validation rejects what Kubernetes would silently drop."""
    text = subprocess.run(
        [KUBECTL, "kustomize", str(DEPLOY / "overlays/tensorrt")], capture_output=True, text=True, timeout=120
    ).stdout
    assert "readinessProbe:" in text
    manifest = tmp_path / "typo.yaml"
    manifest.write_text(text.replace("readinessProbe:", "readinesProbe:", 1))
    checked = subprocess.run(
        [str(VALIDATOR), "--strict", "-k", VERSIONS[0], str(manifest)], capture_output=True, text=True, timeout=300
    )
    assert checked.returncode == 1 and "'readinesProbe' was unexpected" in checked.stdout + checked.stderr


def test_images_are_the_kits_two_at_the_pinned_ngc_release(rendered):
    release = read_pin()["NGC_RELEASE"]
    for name, objects in rendered.items():
        for _, template in pod_templates(objects):
            for container in template["spec"].get("initContainers", []) + template["spec"]["containers"]:
                image, _, tag = container["image"].rpartition(":")
                assert tag == release, (name, container["image"])
                assert image.endswith(("/brainscan/triton", "/brainscan/export")), container["image"]
        for runtime in (o for o in objects if o["kind"] == "ServingRuntime"):
            assert runtime["spec"]["containers"][0]["image"].endswith(f"/brainscan/triton:{release}")


def _brainscan_commands(rendered) -> list[tuple[str, list[str]]]:
    commands = []
    for name, objects in rendered.items():
        containers = [
            c for _, t in pod_templates(objects) for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]
        ]
        containers += [c for o in objects if o["kind"] == "ServingRuntime" for c in o["spec"]["containers"]]
        commands += [(f"{name}:{c['name']}", c["args"]) for c in containers]
    return commands


def test_every_container_runs_a_brainscan_command_its_cli_accepts(rendered):
    commands = _brainscan_commands(rendered)
    assert {label.split(":")[1] for label, _ in commands} >= {
        "node",
        "doctor",
        "triton",
        "sources",
        "build",
        "kserve-container",
    }
    root = get_command(app)
    for label, args in commands:
        assert args[0] == "brainscan", label
        words = [
            a.replace("$(BRAINSCAN_REPOSITORY)", "s3://bucket/path").replace("$(BRAINSCAN_SOURCES)", "s3://b/s")
            for a in args[1:]
        ]
        command, context, name = root, None, "brainscan"
        while hasattr(command, "resolve_command"):  # a group: down to the subcommand
            context = command.make_context(name, list(words), parent=context, resilient_parsing=True)
            name, command, words = command.resolve_command(context, words)
        try:
            command.make_context(name, words, parent=context)  # raises on an unknown option or a bad value
        except Exception as exc:  # the CLI's usage errors
            pytest.fail(f"{label}: `{' '.join(args)}`: {getattr(exc, 'format_message', exc.__str__)()}")


def test_a_misspelt_option_or_a_bad_value_would_be_caught():
    serve = get_command(app).commands["serve"]
    with pytest.raises(Exception, match="No such option: --timout"):
        serve.make_context("serve", ["--timout=900"])
    with pytest.raises(Exception, match="valid number"):
        serve.make_context("serve", ["--timeout=soon"])
    serve.make_context("serve", ["--timeout=900"])


@pytest.mark.parametrize("name", ["overlays/tensorrt", "overlays/onnxruntime", "build-engines", "node"])
def test_pods_meet_the_restricted_pod_security_standard(rendered, name):
    """The rules of the "restricted" profile (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    for label, template in pod_templates(rendered[name]):
        spec = template["spec"]
        pod = spec.get("securityContext", {})
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), label
        assert all("hostPath" not in v for v in spec.get("volumes", [])), label
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container.get("securityContext", {})
            where = f"{label} {container['name']}"
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not context.get("privileged"), where
            assert (context.get("runAsNonRoot") or pod.get("runAsNonRoot")) is True, where
            assert (context.get("runAsUser") or pod.get("runAsUser")) != 0, where
            seccomp = context.get("seccompProfile") or pod.get("seccompProfile") or {}
            assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), where
            assert all("hostPort" not in p for p in container.get("ports", [])), where
    if name.startswith("overlays"):
        namespace = one(rendered[name], "Namespace")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("name", ["overlays/tensorrt", "overlays/onnxruntime"])
def test_services_probes_and_policies_reach_the_server_pods(rendered, name):
    objects = rendered[name]
    deployment = one(objects, "Deployment", "brainscan")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (server,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "triton"]
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"http": contract.HTTP_PORT, "grpc": contract.GRPC_PORT, "metrics": contract.METRICS_PORT}
    assert selects(deployment["spec"]["selector"], labels)
    for service in (o for o in objects if o["kind"] == "Service"):
        assert selects({"matchLabels": service["spec"]["selector"]}, labels), service["metadata"]["name"]
        assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    headless = one(objects, "Service", "brainscan-headless")
    assert headless["spec"]["clusterIP"] == "None" and [p["port"] for p in headless["spec"]["ports"]] == [
        contract.GRPC_PORT
    ]
    assert selects(one(objects, "PodDisruptionBudget")["spec"]["selector"], labels)
    assert selects(one(objects, "PodMonitor")["spec"]["selector"], labels)
    assert one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["port"] in ports
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["httpGet"]["port"] in ports and server[probe]["httpGet"]["path"].startswith("/v2/health/")
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "brainscan"}
    # the ConfigMap the pods read is the one kustomize generated (its name carries a hash)
    config = one(objects, "ConfigMap")
    assert server["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"]
    assert config["data"]["BRAINSCAN_REPOSITORY"].startswith("s3://")


@pytest.mark.parametrize("name", ["overlays/tensorrt", "overlays/onnxruntime"])
def test_the_network_policy_admits_clients_and_prometheus_and_lets_the_servers_resolve_names(rendered, name):
    policy = one(rendered[name], "NetworkPolicy")["spec"]
    deployment = one(rendered[name], "Deployment", "brainscan")
    assert selects(policy["podSelector"], deployment["spec"]["template"]["metadata"]["labels"])

    def admitted(pod_labels: dict, namespace_labels: dict, port: str) -> bool:
        for rule in policy["ingress"]:
            if port not in [p["port"] for p in rule["ports"]]:
                continue
            for peer in rule["from"]:
                if selects(peer.get("namespaceSelector", {}), namespace_labels) and selects(
                    peer.get("podSelector", {}), pod_labels
                ):
                    return True
        return False

    elsewhere = {"kubernetes.io/metadata.name": "radiology"}
    assert admitted({"brainscan.io/client": "true", "app": "pacs-bridge"}, elsewhere, "grpc")
    assert not admitted({"app": "pacs-bridge"}, elsewhere, "grpc")
    assert admitted({"app.kubernetes.io/name": "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"}, "metrics")
    assert not admitted({"brainscan.io/client": "true"}, elsewhere, "metrics")
    kube_dns = {"k8s-app": "kube-dns", "pod-template-hash": "5d78c9869d"}  # a CoreDNS pod as kubeadm deploys it
    dns = [rule for rule in policy["egress"] if 53 in [p["port"] for p in rule["ports"]]]
    assert any(
        selects(peer["podSelector"], kube_dns)
        and selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": "kube-system"})
        for rule in dns
        for peer in rule["to"]
    )


def test_the_gpu_overlay_asks_for_one_gpu_and_the_engine_job_for_a_gpu_product(rendered):
    deployment = one(rendered["overlays/tensorrt"], "Deployment", "brainscan")["spec"]["template"]["spec"]
    (server,) = deployment["containers"]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert deployment["initContainers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1  # the doctor reads the GPU
    assert deployment["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    cpu = one(rendered["overlays/onnxruntime"], "Deployment", "brainscan")["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in str(cpu)
    job = one(rendered["build-engines"], "Job")["spec"]["template"]["spec"]
    assert set(job["nodeSelector"]) == {"nvidia.com/gpu.product"}
    assert job["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_the_autoscaler_metric_is_the_adapter_rule_over_the_ensemble_models(rendered):
    hpa = one(rendered["overlays/tensorrt"], "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    values = yaml.safe_load((DEPLOY / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    query = rule["metricsQuery"]
    assert f'model=~"{"|".join(contract.COMPOSING_MODELS)}"' in query
    assert f'model=~"{"|".join(contract.ENSEMBLES)}"' in query  # both ensembles' requests


@pytest.mark.server
def test_the_metrics_the_adapter_reads_are_what_triton_exports(server):
    """Scraped from a real Triton after one request: the counters the rule divides exist,
    with the model labels the rule selects."""
    text = metrics_after_one_request(server)
    for model in contract.COMPOSING_MODELS:
        assert f'nv_inference_queue_duration_us{{model="{model}"' in text, model
    line = next(
        x for x in text.splitlines() if x.startswith(f'nv_inference_request_success{{model="{contract.ENSEMBLE}"')
    )
    assert float(line.rsplit(" ", 1)[1]) >= 1


def test_a_policy_scanner_finds_no_unexplained_failure(tmp_path):
    """checkov, a Kubernetes policy scanner no one here wrote, over every rendered
    kustomization: no check fails, and each one the manifests skip on purpose says why in
    place (checkov.io/skipN annotations), so a new failure fails this test."""
    if not CHECKOV.exists():
        pytest.skip(reason=f"checkov is not installed at {CHECKOV} (`make venv` installs it, pinned, apart)")
    for name in KUSTOMIZATIONS:
        result = subprocess.run([KUBECTL, "kustomize", str(DEPLOY / name)], capture_output=True, text=True, timeout=120)
        (tmp_path / f"{name.replace('/', '-')}.yaml").write_text(result.stdout)
    scan = subprocess.run(
        [str(CHECKOV), "-d", str(tmp_path), "--framework", "kubernetes", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(scan.stdout)
    failed = [(c["check_id"], c["resource"], c["check_name"]) for c in report["results"]["failed_checks"]]
    assert report["summary"]["failed"] == 0 and not failed, failed
    assert report["summary"]["passed"] > 200 and report["summary"]["resource_count"] >= 30  # it really read them
    skipped = report["results"]["skipped_checks"]
    assert skipped and all(len(c["check_result"].get("suppress_comment", "")) > 20 for c in skipped), skipped


def test_the_node_keeps_its_spool_on_a_volume_and_is_reached_scraped_and_admitted(rendered):
    """The DICOM node: its --spool on the persistent volume, one replica (one journal), the
    Service's and PodMonitor's ports its container's, --metrics-port that port, --url the
    servers' gRPC Service, and its pods carry the label the servers' NetworkPolicy admits."""
    objects, fleet = rendered["node"], rendered["overlays/tensorrt"]
    node = one(objects, "StatefulSet", "brainscan-node")
    template = node["spec"]["template"]
    (container,) = template["spec"]["containers"]
    options = dict(a.removeprefix("--").split("=", 1) for a in container["args"][2:])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert node["spec"]["replicas"] == 1 and selects(node["spec"]["selector"], template["metadata"]["labels"])
    (claim,) = node["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == options["spool"]
    assert int(options["metrics-port"]) == ports["metrics"] and int(options["port"]) == ports["dicom"]
    service = one(objects, "Service", "brainscan-node")
    assert selects({"matchLabels": service["spec"]["selector"]}, template["metadata"]["labels"])
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["dicom"]
    monitor = one(objects, "PodMonitor", "brainscan-node")
    assert selects(monitor["spec"]["selector"], template["metadata"]["labels"])
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    grpc = one(fleet, "Service", "brainscan")
    host, port = options["url"].rsplit(":", 1)
    assert host == f"brainscan.{grpc['metadata']['namespace']}.svc.cluster.local"
    assert int(port) in [p["port"] for p in grpc["spec"]["ports"] if p["name"] == "grpc"]
    admitted = one(fleet, "NetworkPolicy", "brainscan")["spec"]["ingress"][0]["from"][0]["podSelector"]
    assert selects(admitted, template["metadata"]["labels"])
