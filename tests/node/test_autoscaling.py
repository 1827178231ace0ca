"""A persona grows with its queue and shrinks back, through KEDA and a real Prometheus.

On the real node, beside the release: Prometheus scrapes the persona pods as the chart's
PodMonitor describes them and KEDA (operator + external-metrics apiserver) drives the
office persona's Deployment through an HPA, on llama.cpp's own queue signal
(``llamacpp:requests_deferred``) - the engines of ``tests/kube/engines.py``. A ``chatbot
loadtest`` through port 8001 with more users than one pod serves builds the queue; the
persona goes to two replicas, and after the load back to one once the (short)
scale-down stabilization window has passed. No answer is lost: every question ends in a
200 (a 429/503 on the way retried), and the CSV rows reconcile with the counters of every
pod that served and with MongoDB's history. The load report plots replicas, queue depth
and p95 latency over time (checked in headless Chromium), and every panel of the chart's
Grafana dashboard returns data from that Prometheus.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.kube import engines as engines_mod
from tests.kube.helpers import wait_for
from tests.node.release import (
    CBM,
    NS,
    apply,
    cbm,
    chatbot_model,
    get_json,
    office_question,
    pods,
    post,
    ready_pods,
)
from tests.node.test_faults import PodLogs, _turns_in_mongo
from tests.node.traffic import pod_performance

pytestmark = pytest.mark.node

PERSONA = "office"
DEPLOYMENT = f"{CBM}-{PERSONA}"
MAX_REPLICAS = 2
# One pod serves one question at a time (the CPU profile's maxConcurrent 1): four users
# keep three waiting on one pod (desired 3, capped at 2) and two on two (desired 2).
USERS = 4
TARGET_QUEUE = 1
SCALE_DOWN_WINDOW_S = 20
RUN_S = 70  # the second pod is Ready ~12 s in; it serves the rest
# Where the scaling test leaves its timeline.json, summary.json and the report's picture
# (tests/bench/bench_autoscaling.py sets it); default: the cluster's directory.
OUT_ENV = "CHATBOT_AUTOSCALING_OUT"


def autoscaled_model(nc, mirror, prometheus_url: str) -> dict:
    """The release's ChatbotModel with the office persona autoscaled on its queue: at most
    one waiting question per pod, 1 to 2 pods, a short scale-down window."""
    model = chatbot_model(nc, mirror)
    model["spec"][PERSONA]["autoscaling"] = {
        "minReplicas": 1, "maxReplicas": MAX_REPLICAS, "metric": "queue",
        "target": TARGET_QUEUE, "scaleDownStabilizationSeconds": SCALE_DOWN_WINDOW_S,
        "prometheusAddress": prometheus_url}
    return model


def pod_monitor() -> dict:
    """The chart's PodMonitor, rendered for the release's namespace."""
    from tests.kube import helm

    return helm.one(helm.template({"metrics": {"podMonitor": {"enabled": True}}},
                                  namespace=NS, show_only="templates/podmonitor.yaml"),
                    "PodMonitor")


@pytest.fixture(scope="module")
def prometheus(installed):
    """Prometheus scraping the release's persona pods as the chart's PodMonitor says."""
    eng = engines_mod.Engines(installed.cluster, installed.node.ip, pod_monitor())
    _start(eng.up_prometheus)
    try:
        yield eng
    finally:
        eng.down()


@pytest.fixture(scope="module")
def engines(installed, prometheus):
    """Prometheus and KEDA (its operator and external-metrics apiserver)."""
    try:
        _start(prometheus.up_keda)
        yield prometheus
    finally:
        prometheus.remove_keda()


def _start(up) -> None:
    say = lambda msg: print(f"[engines] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        up(progress=say)
    except engines_mod.EngineError as exc:
        if _required():
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def _required() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("CHATBOT_REQUIRE_NODE"))


def _replicas(nc) -> int:
    return get_json(nc, "-n", NS, "deployment", DEPLOYMENT)["spec"].get("replicas", 1)


def test_prometheus_scrapes_the_persona_pods_as_the_pod_monitor_says(installed, prometheus):
    nc = installed

    def scraped() -> set[str]:
        return {t["labels"]["pod"] for t in prometheus.targets() if t["health"] == "up"}

    want = {p["metadata"]["name"] for persona in ("office", "character")
            for p in ready_pods(nc, persona)}
    wait_for(lambda: scraped() >= want, timeout=60, desc=f"Prometheus scraping {sorted(want)}")
    series = prometheus.query(f'llamacpp:requests_deferred{{namespace="{NS}"}}')
    assert {s["metric"]["pod"] for s in series} == want, series
    job = f"{NS}/{prometheus.pod_monitor['metadata']['name']}"
    for s in series:  # the labels the PodMonitor gives, which the dashboard groups by
        m = s["metric"]
        assert (m["job"], m["endpoint"], m["chatbotmodel"]) == (job, "http", CBM), m
        assert m["pod"].startswith(f"{CBM}-{m['persona']}-"), m


def test_without_keda_the_model_says_so_and_keeps_serving(installed, mirror, prometheus):
    nc = installed
    apply(nc, autoscaled_model(nc, mirror, prometheus.prometheus_url), "chatbotmodel")

    def condition() -> dict:
        conds = (cbm(nc).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == "AutoscalingReady"), {})

    found = wait_for(lambda: condition().get("reason") == "KedaMissing" and condition(),
                     timeout=60, interval=1, desc="AutoscalingReady KedaMissing")
    assert "scaledobjects.keda.sh" in found["message"], found
    status, _, body = post(nc.route(f"/{PERSONA}/Llama"),
                           office_question(str(uuid.uuid4()), "Say hello."))
    assert status == 200, body[:500]
    assert _replicas(nc) == 1 and len(ready_pods(nc, PERSONA)) == 1


def test_the_queue_scales_a_persona_up_and_back_down_without_losing_an_answer(
        installed, mirror, engines, tmp_path):
    from chatbot_loadtest import analysis
    from chatbot_loadtest.records import read_rows

    nc = installed
    assert len(ready_pods(nc, PERSONA)) == 1
    apply(nc, autoscaled_model(nc, mirror, engines.prometheus_url), "chatbotmodel")

    def keda_ready() -> bool:
        so = get_json(nc, "-n", NS, "scaledobject", DEPLOYMENT)
        conds = {c["type"]: c["status"] for c in so.get("status", {}).get("conditions", [])}
        hpa = so.get("status", {}).get("hpaName")
        return conds.get("Ready") == "True" and bool(hpa)

    wait_for(keda_ready, timeout=120, interval=1, desc="the operator's ScaledObject Ready "
             "with its HPA")
    so = get_json(nc, "-n", NS, "scaledobject", DEPLOYMENT)
    hpa = so["status"]["hpaName"]
    query = so["spec"]["triggers"][0]["metadata"]["query"]

    def metric_read() -> bool:  # the HPA reads the external metric through the aggregator
        status = get_json(nc, "-n", NS, "hpa", hpa).get("status", {})
        return any(m.get("type") == "External" for m in status.get("currentMetrics") or [])

    wait_for(metric_read, timeout=90, interval=1, desc=f"HPA {hpa} reading KEDA's metric")
    assert _replicas(nc) == 1, "scaled before any load"

    before_pods = ready_pods(nc, PERSONA)
    before = [pod_performance(p) for p in before_pods]
    assert all(before), before
    out = tmp_path / "loadtest"
    out.mkdir()
    timeline: list[tuple[float, int, int, float]] = []  # t, replicas, ready, queue
    chatbot = Path(sys.executable).with_name("chatbot")
    with PodLogs(nc, tmp_path) as logs:
        started = time.monotonic()
        load = subprocess.Popen(
            [str(chatbot), "loadtest", "--host", nc.route(""), "--persona", PERSONA,
             "--users", str(USERS), "--spawn-rate", str(USERS), "--run-time", str(RUN_S),
             "--requests-per-user", "0", "--google-access-ratio", "0",
             "--default-retry-after", "1", "--stop-timeout", "180", "--out", str(out),
             "--prometheus", engines.prometheus_url,
             "--prometheus-selector", f'namespace="{NS}"'],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        queued_at = two_ready_at = None
        while load.poll() is None:
            queue = sum(float(s["value"][1]) for s in engines.query(query))
            ready = len(ready_pods(nc, PERSONA))
            now = time.monotonic() - started
            timeline.append((now, _replicas(nc), ready, queue))
            if queued_at is None and queue >= 1:
                queued_at = now
            if two_ready_at is None and ready >= 2:
                two_ready_at = now
            time.sleep(2)
        output = load.communicate()[0]
        ended = time.monotonic() - started
        print(output[-3000:])
        assert queued_at is not None, f"no queue seen in Prometheus: {timeline}"
        assert two_ready_at is not None, (
            f"{PERSONA} never had two Ready pods under the load; timeline (s, replicas, ready,"
            f" queue): {timeline}\nHPA: {json.dumps(get_json(nc, '-n', NS, 'hpa', hpa))}")
        # Back to minReplicas once the window has passed after the queue emptied.
        wait_for(lambda: _replicas(nc) == 1 and len(pods(nc, PERSONA)) == 1,
                 timeout=SCALE_DOWN_WINDOW_S + 120, interval=1,
                 desc=f"{PERSONA} back to 1 replica")
        one_again = time.monotonic() - started - ended
        after_pods = ready_pods(nc, PERSONA)
        alive = [pod_performance(p) for p in after_pods]
        time.sleep(2)
    # The client's own check compares each replica's rows (X-Served-By) with the counters
    # of each replica the route reached at the end; one already removed is named, not a
    # mismatch. The check below adds the removed pod's final counters from its log.
    assert load.returncode == 0, output[-3000:]
    assert "MISMATCH" not in output, output[-3000:]
    print(f"scale-up: queue from {queued_at:.0f}s, second pod Ready at {two_ready_at:.0f}s "
          f"({two_ready_at - queued_at:.0f}s after the queue built); load ended at "
          f"{ended:.0f}s, back to 1 replica {one_again:.0f}s later "
          f"(window {SCALE_DOWN_WINDOW_S}s)")

    rows = read_rows(sorted(out.glob("*.csv")))
    assert rows, output[-2000:]
    statuses = Counter(r["status_code"] for r in rows)
    unanswered = [a for a in analysis.logical_requests(rows) if not a[-1]["is_final_success"]]
    assert not unanswered, [(a[-1]["user_id"], a[-1]["status_code"], a[-1]["error"][:100])
                            for a in unanswered]
    assert set(statuses) <= {200, 429, 503}, statuses
    # The CSV against every pod that served: the one left, the removed one by the final
    # counters it logged when it stopped.
    served = {name for name, (persona, _) in logs.followed.items() if persona == PERSONA}
    assert len(served) >= 2, served
    gone = served - {p["metadata"]["name"] for p in after_pods}
    finals = [logs.final_counters(name) for name in gone]
    assert all(finals), f"a removed {PERSONA} pod logged no final counters: {gone}"
    reconciled = analysis.reconcile_pods(rows, before, finals + alive)
    assert reconciled["match"], reconciled
    answered = Counter(r["user_id"] for r in rows if r["is_final_success"])
    assert _turns_in_mongo(nc, PERSONA) == dict(answered)

    # The picture: replicas, queue depth and p95 over time, drawn.
    summary = json.loads((out / "summary.json").read_text())
    scaling = summary["scaling"]
    assert "error" not in scaling, scaling
    assert max(v for _, v in scaling["replicas"][PERSONA]) >= 2, scaling["replicas"]
    assert max(v for _, v in scaling["queue"][PERSONA]) >= 1, scaling["queue"]
    from chatbot_loadtest import report
    from tests.load.chromium import colour_counts, missing_colours, screenshot

    png = screenshot(out / "report.html", tmp_path / "report.png", height=2600)
    assert missing_colours(colour_counts(png), report.SCALING_COLOURS, 40) == {}
    # For tests/bench/bench_autoscaling.py and a person: the times, the series, the picture.
    keep = Path(os.environ.get(OUT_ENV) or Path(nc.cluster.dir) / "autoscaling")
    keep.mkdir(parents=True, exist_ok=True)
    for path in (out / "report.html", out / "summary.json", png):
        (keep / path.name).write_bytes(path.read_bytes())
    (keep / "timeline.json").write_text(json.dumps({
        "users": USERS, "max_replicas": MAX_REPLICAS, "target_queue": TARGET_QUEUE,
        "scale_down_window_s": SCALE_DOWN_WINDOW_S, "queue_built_s": queued_at,
        "second_pod_ready_s": two_ready_at, "load_ended_s": ended,
        "back_to_one_after_load_s": one_again, "statuses": dict(statuses),
        "samples": [{"t_s": round(t, 1), "replicas": r, "ready": n, "queue": q}
                    for t, r, n, q in timeline]}, indent=2))


def test_every_dashboard_panel_returns_data_after_the_load(installed, prometheus):
    """Runs after the scaling test (file order): each panel's queries against Prometheus."""
    from tests.kube.operator_fixtures import ROOT

    dashboards = sorted((ROOT / "charts/chatbot/files").glob("*.json"))
    assert dashboards, "the chart ships no Grafana dashboard (charts/chatbot/files/*.json)"
    # One refused question, so that the errors panel has a 4xx to show after a clean load.
    status, _, _ = post(installed.route(f"/{PERSONA}/Llama"), {"input_data": 42})
    assert 400 <= status < 500, status
    time.sleep(3 * float(engines_mod.SCRAPE_INTERVAL.rstrip("s")))
    empty, invalid = [], []
    for path in dashboards:
        board = json.loads(path.read_text())
        for panel in _panels(board.get("panels", [])):
            for target in panel.get("targets", []):
                expr = _substitute(target.get("expr", ""))
                if not expr:
                    continue
                where = f"{path.name}: panel {panel.get('title')!r} ({expr})"
                try:
                    result = prometheus.query_range(expr, time.time() - 600, time.time(), 15)
                except engines_mod.EngineError as exc:
                    invalid.append(f"{where}: {exc}")
                    continue
                if not any(r.get("values") for r in result):
                    empty.append(where)
    assert not invalid, "\n".join(invalid)
    assert not empty, "panels whose query returned no data:\n" + "\n".join(empty)


def _panels(panels: list[dict]):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def _substitute(expr: str) -> str:
    """Grafana's variables, as a user viewing the whole release would pick them."""
    for name, value in (("$__rate_interval", "1m"), ("$__interval", "15s"),
                        ("$__range", "10m"), ("${namespace}", NS), ("$namespace", NS),
                        ("${persona}", ".*"), ("$persona", ".*"), ("${pod}", ".*"),
                        ("$pod", ".*"), ("${datasource}", ""), ("$datasource", "")):
        expr = expr.replace(name, value)
    return expr.strip()
