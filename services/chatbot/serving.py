"""uvicorn for `chatbot serve`: its signal handler also begins the app's `Shutdown`."""

from __future__ import annotations

import asyncio
import socket
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from chatbot.core.shutdown import Shutdown
from chatbot_contract import SHUTDOWN_CUTOFF_MARGIN_S


class StoppingServer(uvicorn.Server):
    """On SIGTERM or Ctrl-C, uvicorn stops accepting connections and waits for the answers
    in flight; `shutdown` (the app's) ends the queued ones at once and the ones still
    generating at its grace period's end with 503s. uvicorn's own timeout, which would
    cancel them into bare 500s, is set a margin later, as a backstop."""

    def __init__(self, config: uvicorn.Config, shutdown: Shutdown) -> None:
        super().__init__(config)
        self.app_shutdown = shutdown  # not `shutdown`: uvicorn.Server's own method
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None:  # a signal handler: the loop runs `begin` itself
            self._loop.call_soon_threadsafe(self.app_shutdown.begin)


def serve(app, shutdown: Shutdown, **config) -> None:
    """`uvicorn.run(app, **config)` whose shutdown begins `shutdown` (the app's)."""
    config["timeout_graceful_shutdown"] = shutdown.grace_s + SHUTDOWN_CUTOFF_MARGIN_S
    server = StoppingServer(uvicorn.Config(app, **config), shutdown)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    if not server.started:  # as uvicorn.run: the port was taken, the app failed to start
        raise SystemExit(STARTUP_FAILURE)
