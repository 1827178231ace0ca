"""What an autoscaler did during a load run, read from the Prometheus that scrapes the
personas (`chatbot loadtest --prometheus URL`): replicas and queue depth per persona over
time, beside the client's own p95 latency, so the report shows the scaling at a glance.

Replicas are the persona pods Prometheus scraped at each step (one `llamacpp:requests_deferred`
series per pod); queue depth is the sum of the pods' `llamacpp:requests_deferred`, the signal
the queue-driven ScaledObject scales on. Both group by the `persona` label the chart's
PodMonitor gives every series.
"""

from __future__ import annotations

import math
from datetime import datetime

from chatbot_loadtest import analysis

QUEUE_SERIES = "llamacpp:requests_deferred"


def queries(selector: str = "") -> dict[str, str]:
    """The PromQL behind each series; `selector`: extra label matchers (`namespace="x"`).
    The `persona` label is the scrape's (the chart's PodMonitor sets it from the pod's
    `app.kubernetes.io/component`)."""
    series = f"{QUEUE_SERIES}{{{selector}}}"
    return {"replicas": f"count by (persona) ({series})",
            "queue": f"sum by (persona) ({series})"}


def fetch(prometheus: str, start: float, end: float, selector: str = "",
          step_s: float = 2.0, get=None) -> dict:
    """{"replicas": {persona: [[unix_s, value], ...]}, "queue": {...}, "queries": {...}}
    over [start, end]; `error` names what failed instead (the run's report still comes)."""
    if get is None:
        import requests

        get = requests.get
    out: dict = {"queries": queries(selector), "step_s": step_s}
    for name, promql in out["queries"].items():
        try:
            response = get(f"{prometheus.rstrip('/')}/api/v1/query_range", timeout=30,
                           params={"query": promql, "start": start, "end": end,
                                   "step": step_s})
            body = response.json()
        except Exception as exc:  # noqa: BLE001 - reported in the summary and the report
            return {**out, "error": f"{name}: {type(exc).__name__}: {exc}"}
        if body.get("status") != "success":
            return {**out, "error": f"{name}: {body.get('errorType')}: {body.get('error')}"}
        out[name] = {r["metric"].get("persona", "?"): [[float(t), float(v)]
                                                      for t, v in r["values"]]
                     for r in body["data"]["result"]}
    return out


def p95_over_time(rows: list[dict], bin_s: float = 10.0) -> dict[str, list[list[float]]]:
    """Per persona, the p95 response time of the answers sent in each `bin_s` window:
    [[window start unix_s, p95_s], ...]."""
    out: dict[str, list[list[float]]] = {}
    for persona in sorted({r["test_type"] for r in rows}):
        answered = [r for r in rows if r["test_type"] == persona and r["status_code"] == 200]
        bins: dict[int, list[float]] = {}
        for r in answered:
            bins.setdefault(math.floor(_unix(r["sent_at"]) / bin_s), []).append(
                r["response_time"])
        out[persona] = [[k * bin_s, analysis.percentile(v, 95)] for k, v in sorted(bins.items())]
    return out


def _unix(value) -> float:
    return value.timestamp() if isinstance(value, datetime) else float(value)


def peak(series: dict[str, list[list[float]]], persona: str) -> float:
    return max((v for _, v in series.get(persona, [])), default=0.0)
