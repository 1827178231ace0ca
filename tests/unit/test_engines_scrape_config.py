"""The node tests' Prometheus scrapes as prometheus-operator would from the chart's
PodMonitor (tests/kube/engines.py): selector, port, path, relabelings, target labels."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.kube import binaries, engines

POD_MONITOR = {
    "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
    "metadata": {"name": "chatbot-personas", "namespace": "chatbot"},
    "spec": {
        "namespaceSelector": {"matchNames": ["team-a"]},
        "selector": {"matchLabels": {"app.kubernetes.io/name": "chatbot"},
                     "matchExpressions": [
                         {"key": "app.kubernetes.io/component", "operator": "In",
                          "values": ["office", "character"]},
                         {"key": "canary", "operator": "DoesNotExist"}]},
        "podMetricsEndpoints": [{
            "port": "http", "path": "/metrics", "interval": "15s", "honorLabels": True,
            "relabelings": [{
                "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
                "targetLabel": "persona"}]}],
    },
}


def _apply(relabel: list[dict], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus' relabelling (keep, drop, replace with the default regex (.*) and $1),
    enough for the configs above: the target's labels, or None when dropped."""
    labels = dict(labels)
    for r in relabel:
        value = ";".join(labels.get(k, "") for k in r.get("source_labels", []))
        match = re.fullmatch(r.get("regex", "(.*)"), value)
        action = r.get("action", "replace")
        if action == "keep" and not match:
            return None
        if action == "drop" and match:
            return None
        if action == "replace" and match:
            labels[r["target_label"]] = match.expand(
                r.get("replacement", "$1").replace("$1", r"\g<1>") if match.groups()
                else r.get("replacement", "$1"))
    return labels


def _pod(component: str, port: str = "http", phase: str = "Running", **extra) -> dict:
    return {"__meta_kubernetes_namespace": "team-a", "__meta_kubernetes_pod_name": "m-x-1",
            "__meta_kubernetes_pod_container_name": "chatbot",
            "__meta_kubernetes_pod_container_port_name": port,
            "__meta_kubernetes_pod_phase": phase,
            "__meta_kubernetes_pod_label_app_kubernetes_io_name": "chatbot",
            "__meta_kubernetes_pod_label_app_kubernetes_io_component": component, **extra}


def test_the_pod_monitors_pods_get_its_labels_and_no_other_pod_is_scraped():
    config = engines.scrape_config(POD_MONITOR, Path("/kc"), interval="2s")
    assert config["kubernetes_sd_configs"] == [{"role": "pod", "kubeconfig_file": "/kc",
                                                "namespaces": {"names": ["team-a"]}}]
    assert (config["metrics_path"], config["honor_labels"], config["scrape_interval"]) == (
        "/metrics", True, "2s")
    relabel = config["relabel_configs"]
    target = _apply(relabel, _pod("office"))
    assert {k: v for k, v in target.items() if not k.startswith("__")} == {
        "namespace": "team-a", "pod": "m-x-1", "container": "chatbot", "endpoint": "http",
        "job": "chatbot/chatbot-personas", "persona": "office"}
    for dropped in (_pod("not-found"), _pod("office", port="grpc"),
                    _pod("office", phase="Succeeded"),
                    _pod("office", __meta_kubernetes_pod_labelpresent_canary="true")):
        assert _apply(relabel, dropped) is None, dropped


def test_promtool_accepts_the_config(tmp_path):
    if not binaries.COMPONENTS["prometheus"].is_built():
        pytest.skip(f"promtool not built: {binaries.BUILD_COMMAND} prometheus")
    path = tmp_path / "prometheus.yml"
    path.write_text(json.dumps({"scrape_configs": [
        engines.scrape_config(POD_MONITOR, tmp_path / "kubeconfig")]}))
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    check = subprocess.run([str(binaries.binary("promtool")), "check", "config",
                            "--syntax-only", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
