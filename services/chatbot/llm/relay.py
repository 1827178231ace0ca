"""Hands pieces from a decode thread to the event loop, waking it sparingly."""

from __future__ import annotations

import asyncio
import threading
import time

RELAY_INTERVAL_S = 0.05
END = object()  # put by the producer after the last piece


class Relay:
    """One generation's pieces, from the decode thread to the coroutine that streams them.

    Waking the loop for every token makes the Python thread compete with llama.cpp's
    worker threads for the same cores; here the first piece and the last wake it at once,
    the rest at most every 50 ms.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ready = asyncio.Event()
        self._lock = threading.Lock()
        self._items: list = []
        self._wake_pending = False
        self._last_wake = 0.0
        self._woken_once = False

    def put(self, item, flush: bool = False) -> None:
        with self._lock:
            self._items.append(item)
            now = time.monotonic()
            due = flush or not self._woken_once or now - self._last_wake >= RELAY_INTERVAL_S
            if self._wake_pending or not due:
                return
            self._wake_pending, self._woken_once, self._last_wake = True, True, now
        try:
            self._loop.call_soon_threadsafe(self._ready.set)
        except RuntimeError:  # the event loop is gone (shutdown)
            pass

    async def drain(self) -> list:
        await self._ready.wait()
        with self._lock:
            items, self._items = self._items, []
            self._wake_pending = False
            self._ready.clear()
        return items

    async def pieces(self):
        """Yields the pieces until END; an exception put by the producer is raised here."""
        while True:
            for item in await self.drain():
                if item is END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
