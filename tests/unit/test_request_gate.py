"""The request gate's counting when affinity forwards a turn between replicas: a turn this
replica refuses (429, 503) is served by the forwarding peer instead, so the client's one
request is counted once, there (`chatbot_loadtest` reconciles the client's requests with
every replica's counters)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from chatbot.core.admission_queue import AdmissionQueue
from chatbot.core.affinity import FORWARDED
from chatbot.core.request_gate import RequestGate
from chatbot.core.stats import PerformanceStats
from chatbot.domain.errors import EngineUnavailableError, ServiceShuttingDownError


def _gate() -> RequestGate:
    engine = SimpleNamespace(status=lambda: SimpleNamespace(ready=True))
    stats = PerformanceStats()
    return RequestGate("office", engine, AdmissionQueue(1, 1, stats.mean_service_s), stats, 60)


def _counts(forwarded: bool, error: Exception, spans_tasks: bool = False) -> dict:
    gate = _gate()

    async def turn() -> None:
        token = FORWARDED.set(forwarded)
        try:
            async with gate.admitted(spans_tasks=spans_tasks):
                raise error
        finally:
            FORWARDED.reset(token)

    with pytest.raises(type(error)):
        asyncio.run(turn())
    snap = gate.stats.snapshot()
    return {k: snap[k] for k in ("total_requests", "failed", "rejected")}


@pytest.mark.parametrize("error", [
    ServiceShuttingDownError("The service is shutting down.", 1),  # cut by this pod's drain
    EngineUnavailableError("The model engine is shutting down."),
])
def test_a_forwarded_turn_this_replica_refuses_is_counted_by_the_peer_that_serves_it(error):
    assert _counts(forwarded=True, error=error) == \
        {"total_requests": 0, "failed": 0, "rejected": 0}
    # The same refusal of the route's own request is this replica's failure.
    assert _counts(forwarded=False, error=error) == \
        {"total_requests": 1, "failed": 1, "rejected": 0}


def test_a_forwarded_stream_cut_after_it_began_is_counted_here():
    # Its answer had started through the peer, which relays the error and cannot serve it.
    error = ServiceShuttingDownError("The service is shutting down.", 1)
    assert _counts(forwarded=True, error=error, spans_tasks=True) == \
        {"total_requests": 1, "failed": 1, "rejected": 0}
