"""The service is stopping (SIGTERM, Ctrl-C): how the requests in its hands end.

Once `Shutdown.begin()` is called, a request that arrives or still waits in an admission
queue gets `ServiceShuttingDownError` (503 + Retry-After) at once: it was not started, and
another replica (or this pod's successor) will answer a retry. An answer already generating
gets the grace period (`shutdown_grace_s`); one not done by then is cancelled the way a
deadline cancels it (the engine stops, nothing is stored) and ends with the same error,
before uvicorn's own timeout would cancel it into a bare 500.

Work is cut inside a `Cutoff` scope, which, like `asyncio.timeout`, cancels the task that
entered it and turns that cancellation into the error as it leaves.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from chatbot.domain.errors import ServiceShuttingDownError

# What a cut-off request is told to wait: a replica that is not stopping answers at once,
# a replacing pod within seconds.
RETRY_AFTER_S = 2


class Shutdown:
    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.began = False
        self.grace_over = False
        self._scopes: set[Cutoff] = set()

    def begin(self) -> None:
        """The service stops: cut the queued requests now, the running ones at the end of
        the grace period. Runs on the event loop; calling it again changes nothing."""
        if self.began:
            return
        self.began = True
        asyncio.get_running_loop().call_later(self.grace_s, self._end_grace)
        for scope in list(self._scopes):
            if not scope.admitted:
                scope.cut()

    def _end_grace(self) -> None:
        self.grace_over = True
        for scope in list(self._scopes):
            scope.cut()

    def cutoff(self, *, admitted: bool = False) -> Cutoff:
        """A scope for a request's work: cut when the service starts stopping while not
        `admitted` (queued, or not yet there), when the grace period ends once admitted."""
        return Cutoff(self, admitted)

    def error(self, admitted: bool) -> ServiceShuttingDownError:
        if admitted:
            return ServiceShuttingDownError(
                f"The service is shutting down and the answer was not done within its "
                f"{self.grace_s:g} s grace period; the generation was stopped and nothing "
                "was stored.", RETRY_AFTER_S)
        return ServiceShuttingDownError(
            "The service is shutting down; the request was not started.", RETRY_AFTER_S)


class Cutoff:
    """Cancels the task inside it when the shutdown reaches it (see `Shutdown.cutoff`);
    leaves with `ServiceShuttingDownError` instead of that cancellation."""

    def __init__(self, shutdown: Shutdown, admitted: bool) -> None:
        self._shutdown = shutdown
        self.admitted = admitted
        self._task: asyncio.Task | None = None
        self._cancelling = 0
        self._cut = False

    def _reached(self) -> bool:
        return self._shutdown.grace_over or (self._shutdown.began and not self.admitted)

    def admit(self) -> None:
        """The request got its slot: from now on only the end of the grace period cuts it."""
        self.admitted = True

    def cut(self) -> None:
        if not self._cut and self._task is not None:
            self._cut = True
            self._task.cancel()

    async def __aenter__(self) -> Cutoff:
        if self._reached():
            raise self._shutdown.error(self.admitted)
        self._task = asyncio.current_task()
        self._cancelling = self._task.cancelling()
        self._shutdown._scopes.add(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self._shutdown._scopes.discard(self)
        if not self._cut:
            return
        # Our cancellation, not one from outside (the client gone, uvicorn's own cut-off).
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise self._shutdown.error(self.admitted) from exc
