"""`chatbot loadtest` through a route in front of two replicas: each answer names its replica
(`X-Served-By`), the route spreads `/performance` over both, and the run reconciles each
replica's rows with that replica's own counters. One replica removed before the end (a
scale down) is left out of the check and named, never reported as a mismatch; a replica
that counted a request nobody sent is.

The route and its two replicas are one stub, so the test needs no model: answers alternate
between the replicas, as a round-robin route's do.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler

import pytest

from tests.load.conftest import loadtest_against_stub, read_csv

USERS = 6
REPLICAS = ("chat-7d9f-a", "chat-7d9f-b")


class _TwoReplicas:
    def __init__(self, *, gone_at_end: bool, phantom: bool) -> None:
        self.lock = threading.Lock()
        self.gone_at_end, self.phantom = gone_at_end, phantom
        self.posts = self.gets = 0
        self.counters = {name: {"instance": f"{name}/{uuid.uuid4().hex[:8]}",
                                "total_requests": 0, "succeeded": 0, "failed": 0,
                                "rejected": 0, "generated_tokens": 0,
                                "active_connections": 0, "queue_size": 0}
                         for name in REPLICAS}

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        if handler.path == "/character/performance":
            with self.lock:
                self.gets += 1
                done = self.posts >= USERS
                # after the load, the second replica is gone when the test says so
                name = REPLICAS[0] if done and self.gone_at_end else REPLICAS[self.gets % 2]
                return _send(handler, 200, json.dumps(self.counters[name]))
        handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        with self.lock:
            self.posts += 1
            name = REPLICAS[self.posts % 2]
            mine = self.counters[name]
            mine["total_requests"] += 1
            mine["succeeded"] += 1
            if self.phantom and self.posts == USERS:  # counts one more than it answered
                mine["total_requests"] += 1
                mine["failed"] += 1
        _send(handler, 200, json.dumps("*Rachel looks up from her book and smiles.*"),
              served_by=name)


def _send(handler, status: int, body: str, served_by: str = "") -> None:
    data = body.encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.send_header("X-Request-ID", uuid.uuid4().hex)
    if served_by:
        handler.send_header("X-Served-By", served_by)
    handler.end_headers()
    handler.wfile.write(data)


def _load(tmp_path, stub: _TwoReplicas):
    out = tmp_path / "results"
    result = loadtest_against_stub(
        stub.answer, out, "--persona", "character", "--users", str(USERS),
        "--spawn-rate", str(USERS), "--run-time", "60s")
    summary = json.loads((out / "summary.json").read_text())
    return result, result.stdout + result.stderr, summary, out


def test_each_replica_is_reconciled_with_its_own_counters_and_the_run_passes(tmp_path):
    result, output, summary, out = _load(tmp_path, _TwoReplicas(gone_at_end=False,
                                                                phantom=False))
    assert result.returncode == 0, output
    (path,) = out.glob("character_*.csv")
    _, rows = read_csv(path)
    assert {r["served_by"] for r in rows} == set(REPLICAS)
    reconciled = summary["reconciliation"]["character"]
    assert (reconciled["match"], reconciled["complete"]) == (True, True), reconciled
    assert {n: r["client"]["succeeded"] for n, r in reconciled["replicas"].items()} == {
        REPLICAS[0]: USERS // 2, REPLICAS[1]: USERS // 2}
    assert "(2 replicas): match" in output and "MISMATCH" not in output
    assert f"  {REPLICAS[1]}: client" in output
    report = (out / "report.html").read_text()
    assert "each replica's /performance counters" in report and REPLICAS[1] in report


@pytest.mark.parametrize("phantom", [False, True], ids=["answers-match", "one-counted-twice"])
def test_a_replica_gone_before_the_end_is_named_not_a_mismatch(tmp_path, phantom):
    result, output, summary, _ = _load(tmp_path, _TwoReplicas(gone_at_end=True,
                                                              phantom=phantom))
    reconciled = summary["reconciliation"]["character"]
    gone = reconciled["replicas"][REPLICAS[1]]
    assert gone["checked"] is False and gone["client"]["total_requests"] == USERS // 2
    assert f"{REPLICAS[1]}: {USERS // 2} requests not reconciled" in output
    assert "(1 of 2 replicas)" in output
    if phantom:  # the replica still there counted one request more than it answered
        assert result.returncode == 1, output
        assert "MISMATCH" in output
    else:
        assert result.returncode == 0, output
        assert "MISMATCH" not in output
