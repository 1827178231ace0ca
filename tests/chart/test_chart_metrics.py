"""The chart's monitoring objects: the PodMonitor, the PrometheusRule and the Grafana
dashboard, rendered by real helm; the alert rules checked and tested by promtool (built
from the Prometheus Go module, tests/kube/build-binaries prometheus); and every metric name
a rule, a dashboard panel or the operator's autoscaling query uses served by a persona's
/metrics.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from chatbot.composition_root import create_app
from chatbot.core.ports import EngineStatus
from chatbot.domain.personas import Persona
from chatbot.settings import CharacterSettings, OfficeSettings, Settings
from chatbot_operator import builders
from chatbot_operator.config import OperatorConfig
from chatbot_operator.profiles import load_profiles
from chatbot_operator.spec import AUTOSCALING_METRICS, ChatbotModelSpec
from tests.chart.test_chart import _matches, _operator_pod_labels
from tests.kube import binaries, require_cluster
from tests.kube.helm import CHART, find, one, template

ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = CHART / "files/prometheus-rules.yaml"
DASHBOARD_FILE = CHART / "files/grafana-dashboard.json"
RULES_TEST = Path(__file__).with_name("prometheus-rules.test.yaml")
ALL_ON = {"metrics": {"podMonitor": {"enabled": True, "labels": {"release": "kps"}},
                      "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
                      "grafanaDashboard": {"enabled": True,
                                           "annotations": {"grafana_folder": "Chat"}}}}


def _rules() -> list[dict]:
    return [r for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]]


def _dashboard_queries() -> dict[str, list[str]]:
    dash = json.loads(DASHBOARD_FILE.read_text())
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in dash["panels"]}


def test_nothing_is_rendered_for_prometheus_or_grafana_by_default():
    objs = template()
    assert not find(objs, "PodMonitor") and not find(objs, "PrometheusRule")
    assert not [o for o in find(objs, "ConfigMap")
                if "grafana_dashboard" in o["metadata"].get("labels", {})]


def test_the_pod_monitor_scrapes_the_persona_pods_the_operator_makes():
    objs = template(ALL_ON)
    pm = one(objs, "PodMonitor")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["labels"]["release"] == "kps"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    for persona in ("office", "character"):
        assert _matches(pm["spec"]["selector"], _operator_pod_labels(persona))
    for other in ("office-fetch", "not-found"):
        assert not _matches(pm["spec"]["selector"], _operator_pod_labels(other))
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    dep = builders.persona_deployment(builders.Owner("chatbot", "chatbot", "uid"),
                                      ChatbotModelSpec.parse({}), "office",
                                      load_profiles(""), OperatorConfig())
    ports = dep["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert endpoint["port"] in [p["name"] for p in ports]
    assert endpoint["path"] == "/metrics"
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_component"],
            "targetLabel": "persona"} in endpoint["relabelings"]
    # With watched namespaces, only those.
    watched = template({**ALL_ON, "operator": {"watchNamespaces": ["team-a"]}})
    assert one(watched, "PodMonitor")["spec"]["namespaceSelector"] == {
        "matchNames": ["team-a"]}


def test_the_prometheus_rule_is_the_rules_file_and_the_dashboard_its_json():
    objs = template(ALL_ON)
    rule = one(objs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())
    assert {r["alert"] for r in _rules()} == {
        "ChatbotQueueSaturated", "ChatbotKvCacheNearlyFull", "ChatbotCpuFallback",
        "ChatbotHistoryStoreDegraded", "ChatbotHistoryTurnsLost", "ChatbotHigh5xxRate",
        "ChatbotPersonaNoReadyPod"}
    (cm,) = [o for o in find(objs, "ConfigMap") if o["metadata"]["name"].endswith("dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Chat"}
    assert json.loads(cm["data"]["chatbot-ai.json"]) == json.loads(DASHBOARD_FILE.read_text())
    elsewhere = template({"metrics": {"grafanaDashboard": {"enabled": True,
                                                           "namespace": "monitoring"}}})
    (cm,) = [o for o in find(elsewhere, "ConfigMap")
             if o["metadata"]["name"].endswith("dashboard")]
    assert cm["metadata"]["namespace"] == "monitoring"


def test_the_dashboard_shows_what_operators_look_for():
    titles = " | ".join(_dashboard_queries()).lower()
    for what in ("requests by status", "errors", "time to first token", "latency",
                 "tokens per second", "queue depth", "kv cache", "replicas", "history"):
        assert what in titles, what


def _promtool() -> Path:
    comp = binaries.COMPONENTS["prometheus"]
    if not comp.is_built():
        msg = "promtool is not built: run tests/kube/build-binaries prometheus"
        if require_cluster():
            pytest.fail(msg)
        pytest.skip(msg)
    return binaries.binary("promtool")


def test_promtool_checks_the_rules_and_each_alert_fires_and_stays_silent_as_tested():
    promtool = _promtool()
    check = subprocess.run([str(promtool), "check", "rules", str(RULES_FILE)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in check.stdout
    tested = yaml.safe_load(RULES_TEST.read_text())
    alerts = {t["alertname"] for case in tested["tests"] for t in case["alert_rule_test"]}
    assert alerts == {r["alert"] for r in _rules()}, "one promtool case per alert"
    run = subprocess.run([str(promtool), "test", "rules", str(RULES_TEST)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


# Names a query reads that no /metrics serves: kube-state-metrics' (ChatbotPersonaNoReadyPod).
KUBE_STATE_METRICS = {"kube_deployment_status_replicas_available",
                      "kube_deployment_spec_replicas"}
PROMQL_WORDS = {"sum", "avg", "max", "min", "count", "by", "on", "and", "or", "unless",
                "rate", "increase", "histogram_quantile", "le", "without", "ignoring"}


def _metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (labels and functions left out)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)   # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|on|without|ignoring)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)) - PROMQL_WORDS
    return {n for n in names if not re.fullmatch(r"\d+", n)}


class _LoadedEngine:
    """An engine past its load, as llama.cpp's lifecycle reports it (facts of the load)."""

    model_name = "loaded"

    def status(self):
        return EngineStatus(True, self.model_name, "", {
            "n_layer": 32, "gpu_layers_requested": -1, "gpu_layers_offloaded": 33,
            "generated_tokens": 0})

    def context_tokens(self):
        return None

    async def load(self):
        pass

    async def close(self):
        pass


def test_every_metric_a_rule_a_panel_or_autoscaling_reads_is_served(tmp_path):
    settings = Settings(history_path=tmp_path / "history.sqlite3", search="none",
                        office=OfficeSettings(), character=CharacterSettings())
    engines = {Persona.OFFICE: _LoadedEngine(), Persona.CHARACTER: _LoadedEngine()}
    with TestClient(create_app(settings, engines=engines)) as client:
        client.get("/office/healthz")
        text = client.get("/office/metrics").text
    served = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            served |= {name} | ({f"{name}_bucket", f"{name}_count", f"{name}_sum"}
                                if kind == "histogram" else set())
        elif line and not line.startswith("#"):
            served.add(re.match(r"[^{ ]+", line).group(0))
    wanted = {f"alert {r['alert']}": _metric_names(r["expr"]) for r in _rules()}
    wanted |= {f"panel {t}": set().union(*map(_metric_names, qs))
               for t, qs in _dashboard_queries().items()}
    wanted |= {f"autoscaling {m}": {n} for m, n in AUTOSCALING_METRICS.items()}
    assert {"chatbot_engine_gpu_layers_offloaded", "llamacpp:requests_deferred"} <= served
    missing = {where: sorted(names - served - KUBE_STATE_METRICS)
               for where, names in wanted.items() if names - served - KUBE_STATE_METRICS}
    assert missing == {}, f"not served by /metrics: {missing}"
