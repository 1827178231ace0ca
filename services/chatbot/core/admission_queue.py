"""The admission queue: at most `max_concurrent` requests run, a bounded FIFO queue waits.

One piece of a persona's `RequestGate` (core/request_gate.py), which adds readiness, the
deadline, the shutdown and the statistics around it.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from chatbot.domain.errors import QueueFullError, QueueInfo


class AdmissionQueue:
    """A FIFO semaphore with a bounded wait queue (429 + Retry-After when it is full).

    A request is admitted iff fewer than `max_queue` requests are waiting, so admission is
    monotonic in queue length. A released slot is handed straight to the oldest waiter, so
    no later arrival can overtake it. A waiter cancelled while queued (deadline, client
    gone) leaves the queue and never runs.
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
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def active(self) -> int:
        return self._active

    @property
    def waiting(self) -> int:
        return len(self._waiters)

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
        if self._active < self.max_concurrent and not self._waiters:
            self._active += 1
            return
        if self.waiting >= self.max_queue:
            raise QueueFullError(self.retry_after_s(), self.info())
        ticket: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(ticket)
        try:
            await ticket
        except asyncio.CancelledError:
            if ticket.done() and not ticket.cancelled():
                self._release()  # the slot was handed over just as we were cancelled
            elif ticket in self._waiters:
                self._waiters.remove(ticket)
            raise

    def _release(self) -> None:
        while self._waiters:
            ticket = self._waiters.popleft()
            if not ticket.done():
                ticket.set_result(None)  # hand the slot over; _active stays the same
                return
        self._active -= 1
