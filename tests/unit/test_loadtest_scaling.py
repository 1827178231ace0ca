"""The load report's scaling series (`chatbot loadtest --prometheus`): what is asked of
Prometheus, what comes back per persona, the client's p95 per window, and the chart."""

from __future__ import annotations

from datetime import UTC, datetime

from chatbot_loadtest import report, scaling


class _Response:
    def __init__(self, body: dict):
        self.body = body

    def json(self) -> dict:
        return self.body


def _matrix(persona_values: dict[str, list[tuple[float, str]]]) -> dict:
    return {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"persona": p}, "values": [[t, v] for t, v in values]}
        for p, values in persona_values.items()]}}


def test_replicas_and_queue_per_persona_come_from_the_range_queries():
    asked = []

    def get(url, params, timeout):
        asked.append((url, params))
        value = "2" if params["query"].startswith("count") else "3"
        return _Response(_matrix({"office": [(100.0, "1"), (102.0, value)]}))

    series = scaling.fetch("http://prom:9090/", 100, 110, 'namespace="chatbot"', get=get)
    assert series["replicas"] == {"office": [[100.0, 1.0], [102.0, 2.0]]}
    assert series["queue"] == {"office": [[100.0, 1.0], [102.0, 3.0]]}
    assert all(url == "http://prom:9090/api/v1/query_range" for url, _ in asked)
    assert all('namespace="chatbot"' in p["query"] and p["step"] == 2.0 for _, p in asked)
    assert "llamacpp:requests_deferred" in series["queries"]["queue"]


def test_a_refusal_or_an_unreachable_prometheus_is_named_not_raised():
    refused = scaling.fetch("http://prom", 0, 1, get=lambda *a, **k: _Response(
        {"status": "error", "errorType": "bad_data", "error": "parse error"}))
    assert refused["error"] == "replicas: bad_data: parse error"

    def down(*a, **k):
        raise ConnectionError("connection refused")

    assert "ConnectionError: connection refused" in scaling.fetch("http://x", 0, 1,
                                                                  get=down)["error"]


def _row(second: int, response_time: float, status: int = 200) -> dict:
    return {"test_type": "office", "status_code": status, "response_time": response_time,
            "sent_at": datetime.fromtimestamp(1000 + second, UTC)}


def test_p95_per_window_counts_only_answers():
    rows = [_row(s, float(s)) for s in range(10)] + [_row(12, 50.0, 429), _row(13, 2.0)]
    assert scaling.p95_over_time(rows, bin_s=10) == {"office": [[1000.0, 9.0],
                                                                [1010.0, 2.0]]}


def test_the_report_draws_the_scaling_chart_or_says_why_not():
    rows = [_row(s, 1.0) for s in range(3)]
    series = {"replicas": {"office": [[1000.0, 1.0], [1002.0, 2.0]]},
              "queue": {"office": [[1000.0, 3.0], [1002.0, 2.0]]},
              "p95": scaling.p95_over_time(rows)}
    section = report._scaling_section(series)
    assert "Scaling: replicas, queue depth and p95 latency over time" in section
    for colour in report.SCALING_COLOURS.values():
        assert colour in section
    failed = report._scaling_section({"error": "replicas: timeout"})
    assert "Prometheus gave no series: replicas: timeout" in failed
