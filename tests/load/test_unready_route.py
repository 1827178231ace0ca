"""`chatbot loadtest` through a route while no pod is ready (a rollout): the route's own 503s
are retried after `--default-retry-after`, and only the answers that came from the service
(its `X-Request-ID`) are reconciled with its counters.

The route and the service are one stub here, so the test needs no model: its first answers
are the route's (503, a text body, no X-Request-ID, no Retry-After, as Traefik's "no
available server"), then one is the service's own 503 (model not loaded yet; it counts it
as a failure), then the service answers.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler

from tests.load.conftest import loadtest_against_stub, read_csv

ROUTE_503S = 2  # the first answers come from the route
USERS = 2


class _RouteThenService:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.posts = 0
        self.counters = {"total_requests": 0, "succeeded": 0, "failed": 0, "rejected": 0,
                         "generated_tokens": 0, "active_connections": 0, "queue_size": 0}

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.path == "/character/performance":
            with self.lock:
                return _send(handler, 200, json.dumps(self.counters), request_id=True)
        handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        with self.lock:
            self.posts += 1
            n = self.posts
            if n > ROUTE_503S:
                self.counters["total_requests"] += 1
                self.counters["failed" if n == ROUTE_503S + 1 else "succeeded"] += 1
        if n <= ROUTE_503S:
            _send(handler, 503, "no available server", request_id=False, content="text/plain")
        elif n == ROUTE_503S + 1:
            _send(handler, 503, json.dumps({"detail": "The character model is not loaded "
                                                      "yet; retry shortly.",
                                            "code": "ENGINE_UNAVAILABLE"}), request_id=True)
        else:
            _send(handler, 200, json.dumps("*Rachel looks up from her book and smiles.*"),
                  request_id=True)


def _send(handler, status: int, body: str, *, request_id: bool,
          content: str = "application/json") -> None:
    data = body.encode()
    handler.send_response(status)
    handler.send_header("Content-Type", content)
    handler.send_header("Content-Length", str(len(data)))
    if request_id:
        handler.send_header("X-Request-ID", uuid.uuid4().hex)
    handler.end_headers()
    handler.wfile.write(data)


def test_the_routes_503s_are_retried_and_left_out_of_the_reconciliation(tmp_path):
    stub = _RouteThenService()

    out = tmp_path / "results"
    result = loadtest_against_stub(
        stub.answer, out, "--persona", "character", "--users", str(USERS),
        "--spawn-rate", str(USERS), "--run-time", "60s", "--default-retry-after", "0.2")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output

    (path,) = out.glob("character_*.csv")
    columns, rows = read_csv(path)
    assert columns[-2:] == ["request_id", "served_by"]
    unavailable = [r for r in rows if r["status_code"] == "503"]
    assert len(unavailable) == ROUTE_503S + 1
    assert all(r["is_retry_record"] == "True" and r["retry_after_seconds"] == "0.2"
               for r in unavailable)
    assert sum(r["request_id"] == "" for r in unavailable) == ROUTE_503S  # the route's
    answers = [r for r in rows if r["status_code"] == "200"]
    assert len(answers) == USERS and all(r["request_id"] for r in answers)

    summary = json.loads((out / "summary.json").read_text())
    facts = summary["results"]["character"]
    assert (facts["answers"], facts["retried_503"], facts["retried_429"]) == (USERS, 3, 0)
    reconciled = summary["reconciliation"]["character"]
    assert reconciled["match"], reconciled
    assert reconciled["client"]["total_requests"] == USERS + 1  # not the route's 503s
    assert "retried 429 0 / 503 3" in output
