"""One persona's request gate: readiness, the admission queue (core/admission_queue.py),
the deadline, the shutdown, the statistics.

Every use case (the persona chat, the OpenAI-compatible completion and its stream) runs its
work inside `RequestGate.admitted()`, so a full queue, a passed deadline, a model that is
not loaded, the service shutting down and a failure are reported, and counted, the same way
everywhere.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from chatbot.core.admission_queue import AdmissionQueue
from chatbot.core.affinity import FORWARDED
from chatbot.core.ports import ChatEngine
from chatbot.core.shutdown import Shutdown
from chatbot.core.stats import Outcome, PerformanceStats
from chatbot.domain.errors import (
    DeadlineExceededError,
    EngineUnavailableError,
    QueueFullError,
    ServiceShuttingDownError,
)

# This replica's refusals (429, 503) that a forwarding peer answers by serving the turn itself
# (`chatbot.peers.forwarding`): counted there, as the client's one request, not here too.
PEER_SERVES_INSTEAD = (QueueFullError, EngineUnavailableError, ServiceShuttingDownError)


@dataclass
class Admitted:
    """A request inside the gate: when it arrived and was admitted, and its deadline (the
    event loop's clock) for work that outlives one task (a streamed response)."""

    gate: RequestGate
    started: float
    deadline: float
    admitted: float = 0.0

    @property
    def queue_s(self) -> float:
        return self.admitted - self.started

    def succeeded(self, generation_s: float, tokens: int) -> float:
        """Counts the request as answered; returns its total seconds."""
        total = time.monotonic() - self.started
        self.gate.stats.record(Outcome(True, total, generation_s, tokens))
        return total

    def deadline_error(self) -> DeadlineExceededError:
        return self.gate.deadline_error()

    @asynccontextmanager
    async def bounded(self) -> AsyncIterator[None]:
        """One await of work that outlives the admitted block's task (a streamed response's
        next piece), under the request's deadline (-> DeadlineExceededError) and the
        shutdown's grace period (-> ServiceShuttingDownError)."""
        try:
            async with (self.gate.shutdown.cutoff(admitted=True),
                        asyncio.timeout_at(self.deadline)):
                yield
        except TimeoutError as exc:
            raise self.deadline_error() from exc


class RequestGate:
    def __init__(self, persona: str, engine: ChatEngine, admission: AdmissionQueue,
                 stats: PerformanceStats, deadline_s: float,
                 shutdown: Shutdown | None = None) -> None:
        self.persona = persona
        self.engine = engine
        self.admission = admission
        self.stats = stats
        self.deadline_s = deadline_s
        self.shutdown = shutdown or Shutdown(math.inf)  # a service that never stops

    def require_ready(self) -> None:
        if not self.engine.status().ready:
            raise EngineUnavailableError(
                f"The {self.persona} model is not loaded yet; retry shortly.")

    def deadline_error(self) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"No answer within the {self.deadline_s:g} s deadline; the generation was stopped.")

    @asynccontextmanager
    async def admitted(self, *, spans_tasks: bool = False) -> AsyncIterator[Admitted]:
        """Waits for a slot and holds it for the block. The deadline covers the wait and,
        unless `spans_tasks`, the whole block; a block that yields to other tasks (a
        streamed response) bounds its own awaits with `Admitted.bounded()`.

        Once the service is stopping, a request not yet admitted ends at once, one admitted
        when the shutdown's grace period ends (-> ServiceShuttingDownError, see
        core/shutdown.py).

        A full queue counts as rejected; a passed deadline (-> DeadlineExceededError), a
        failure, a shutdown or a cancellation as failed. Success is counted by
        `Admitted.succeeded`. A request a peer forwarded here is not counted when it is
        refused (PEER_SERVES_INSTEAD) or when the peer lets it go: the peer serves or
        answers it, and counts it, itself.
        """
        started = time.monotonic()
        ticket = Admitted(self, started, asyncio.get_running_loop().time() + self.deadline_s)
        try:
            if spans_tasks:
                async with self.shutdown.cutoff():
                    self.require_ready()
                    async with asyncio.timeout_at(ticket.deadline):
                        await self.admission.acquire()
                try:
                    ticket.admitted = time.monotonic()
                    yield ticket
                finally:
                    self.admission.release()
            else:
                async with self.shutdown.cutoff() as cutoff:
                    self.require_ready()
                    async with asyncio.timeout_at(ticket.deadline):
                        async with self.admission.slot():
                            cutoff.admit()
                            ticket.admitted = time.monotonic()
                            yield ticket
        except PEER_SERVES_INSTEAD as exc:
            # A peer's request refused before its answer began (a stream's begins once
            # admitted): the peer serves the turn itself.
            if FORWARDED.get() and not (spans_tasks and ticket.admitted):
                raise
            if isinstance(exc, QueueFullError):
                self.stats.record_rejected()
            else:
                self._failed(started)
            raise
        except TimeoutError as exc:
            self._failed(started)
            raise self.deadline_error() from exc
        except asyncio.CancelledError:  # the client went away
            if not FORWARDED.get():  # (a peer's, which answers its own client for it)
                self._failed(started)
            raise
        except BaseException:
            self._failed(started)
            raise

    def _failed(self, started: float) -> None:
        self.stats.record(Outcome(ok=False, total_s=time.monotonic() - started))
