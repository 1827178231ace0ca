"""The admission queue: at most `max_concurrent` requests run, a bounded queue waits,
shared fairly between callers (API keys).

One piece of a persona's `RequestGate` (core/request_gate.py), which adds readiness, the
deadline, the shutdown and the statistics around it.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from chatbot.core.callers import current_caller
from chatbot.domain.errors import QueueFullError, QueueInfo

# How many callers' last-served turns are remembered beyond those waiting.
_SERVED_MEMORY = 1024


class AdmissionQueue:
    """A fair semaphore with a bounded wait queue (429 + Retry-After when it is full).

    A request is admitted iff fewer than `max_queue` requests are waiting, so admission is
    monotonic in queue length. A released slot is handed straight to a waiter: the oldest
    waiter of the caller (`core.callers.current_caller`, the API key's name) served least
    recently, so one caller's many requests take turns with every other caller's instead
    of filling the slots ahead of them; with one caller (no keys) this is plain FIFO. A
    waiter cancelled while queued (deadline, client gone) leaves the queue and never runs.
    A named caller also waits in at most its `share()` of the queue, so that one caller's
    burst leaves room for the others (unnamed requests share the whole queue, as before).
    """

    def __init__(
        self, max_concurrent: int, max_queue: int, mean_service_s: Callable[[], float]
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue must not be negative")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self._mean_service_s = mean_service_s
        self._active = 0
        self._waiters: dict[str | None, deque[asyncio.Future[None]]] = {}  # per caller
        self._served: dict[str | None, int] = {}  # caller -> when last admitted
        self._turn = 0

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiters.values())

    def info(self) -> QueueInfo:
        return QueueInfo(self._active, self.waiting, self.max_concurrent, self.max_queue)

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free: all ahead, `max_concurrent` at a time."""
        ahead = self._active + self.waiting
        rounds = math.ceil(ahead / self.max_concurrent)
        return max(1, math.ceil(rounds * self._mean_service_s()))

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def acquire(self) -> None:
        """Take a slot for work that outlives one block (a streamed response); pair with
        `release()`. Raises `QueueFullError` at once when the queue is full."""
        await self._acquire()

    def release(self) -> None:
        self._release()

    async def _acquire(self) -> None:
        caller = current_caller.get()
        if self._active < self.max_concurrent and not self._waiters:
            self._active += 1
            self._mark_served(caller)
            return
        if self.waiting >= self.max_queue:
            raise QueueFullError(self.retry_after_s(), self.info())
        if caller is not None and len(self._waiters.get(caller, ())) >= self.share(caller):
            raise QueueFullError(self.retry_after_s(), self.info(),
                                 f"{caller!r} holds its share of the queue "
                                 f"({self.share(caller)} of {self.max_queue} places)")
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(caller, deque()).append(ticket)
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self._release()  # the slot was handed over just as we were cancelled
            else:
                queue = self._waiters.get(caller)
                if queue is not None and ticket in queue:
                    queue.remove(ticket)
                    if not queue:
                        del self._waiters[caller]
            raise

    def share(self, caller: str) -> int:
        """How many places of the queue a named caller may hold: an equal part among the
        callers waiting and one more that may come, so that a newcomer finds room."""
        others = len(self._waiters) - (caller in self._waiters)
        return max(1, math.ceil(self.max_queue / (others + 2)))

    def _mark_served(self, caller: str | None) -> None:
        self._turn += 1
        self._served[caller] = self._turn
        if len(self._served) > _SERVED_MEMORY + len(self._waiters):
            self._served = {c: t for c, t in self._served.items() if c in self._waiters}

    def _release(self) -> None:
        while self._waiters:
            # The caller admitted least recently (never: first); ties keep arrival order.
            caller = min(self._waiters, key=lambda c: self._served.get(c, 0))
            queue = self._waiters[caller]
            ticket = queue.popleft()
            if not queue:
                del self._waiters[caller]
            if not ticket.done():
                self._mark_served(caller)
                ticket.set_result(None)  # hand the slot over; _active stays the same
                return
        self._active -= 1
