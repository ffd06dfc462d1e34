"""The Prometheus alert rules (deploy/kubernetes/base/alerts.yaml), checked without a
Prometheus: every expression goes through a real PromQL parser (promql-parser, the Rust
parser GreptimeDB uses), every metric it reads is one a real Triton exports after a
request (or a GPU / kube-state-metrics series named here with where it comes from), every
model it selects is a model of the served contract, and every alert has the fields the
operations page and Alertmanager rely on, with a runbook anchor that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from conftest import metrics_after_one_request

from brainscan import contract

promql = pytest.importorskip("promql_parser", reason="pip install promql-parser (the dev extra)")

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "kubernetes" / "base" / "alerts.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
# Series no CPU-only Triton exports, and where they come from (Triton docs/user_guide/metrics.md,
# "GPU Metrics"; kube-state-metrics' pod metrics).
ELSEWHERE = {
    "nv_gpu_memory_used_bytes": "Triton, GPU metrics",
    "nv_gpu_memory_total_bytes": "Triton, GPU metrics",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
}
DURATION = re.compile(r"^\d+[smhd]$")


def rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    assert document["kind"] == "PrometheusRule"
    found = [rule for group in document["spec"]["groups"] for rule in group["rules"]]
    assert found
    return found


def selectors(expr: str) -> list:
    """Every vector selector of a parsed expression (a walk of the real syntax tree)."""
    found = []

    def visit(node) -> None:
        if isinstance(node, promql.VectorSelector):
            found.append(node)
        for attribute in ("expr", "lhs", "rhs", "vector_selector", "param"):
            child = getattr(node, attribute, None)
            if child is not None and not isinstance(child, (str, int, float)):
                visit(child)
        for child in getattr(node, "args", None) or []:
            visit(child)

    visit(promql.parse(expr))
    return found


def node_metrics() -> set[str]:
    """The metrics the alerts read from the DICOM node (tests/test_node.py checks them
    against a real `brainscan listen`)."""
    return {s.name for rule in rules() for s in selectors(rule["expr"]) if s.name.startswith("brainscan_node_")}


def test_the_parser_refuses_a_broken_expression():
    with pytest.raises(ValueError):
        promql.parse('sum(rate(nv_inference_request_success{model="brainscan"}[5m])')
    names = {s.name for s in selectors('sum by (pod) (rate(a{model="x"}[5m])) / clamp_min(b, 1) > 0')}
    assert names == {"a", "b"}


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_every_alert_parses_and_has_what_alertmanager_and_the_runbook_need(rule):
    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
    assert selectors(rule["expr"]), "an alert that reads no series"
    assert rule["labels"]["severity"] in ("critical", "warning")
    if "for" in rule:
        assert DURATION.match(rule["for"]), rule["for"]
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    page, anchor = annotations["runbook"].split("#")
    assert page == "docs/operations.md"
    headings = [line.lstrip("#").strip() for line in OPERATIONS.read_text().splitlines() if line.startswith("#")]
    assert anchor in {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}, anchor


def test_every_model_an_alert_selects_is_one_the_contract_serves():
    served = {*contract.ENSEMBLES, *contract.COMPOSING_MODELS}
    for rule in rules():
        for selector in selectors(rule["expr"]):
            for matcher in selector.matchers.matchers:
                if matcher.name == "model":
                    values = set(matcher.value.split("|"))
                    assert values <= served, (rule["alert"], values - served)


@pytest.mark.server
def test_every_metric_the_alerts_read_is_exported_by_a_real_triton(server):
    text = metrics_after_one_request(server)
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
    read = {s.name for rule in rules() for s in selectors(rule["expr"])} - node_metrics()
    assert read - exported <= set(ELSEWHERE), sorted(read - exported - set(ELSEWHERE))
    assert read & exported, "no alert reads a metric Triton exports"
