"""Starts real `chatbot serve` processes (uvicorn) on loopback for the service tests, with
the load-test client's local-server helper (chatbot_loadtest.stack.LocalServer)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from chatbot_loadtest.stack import LocalServer
from tests.support.ports import free_port


def serve_to_the_end(env: dict[str, str | None]) -> subprocess.CompletedProcess:
    """`chatbot serve --port 1` with these variables set (None: unset), run until it exits:
    what a user sees when the service refuses its configuration."""
    full_env = {**os.environ, **env}
    chatbot = str(Path(sys.executable).parent / "chatbot")
    return subprocess.run([chatbot, "serve", "--port", "1"], capture_output=True, text=True,
                          timeout=60,
                          env={k: v for k, v in full_env.items() if v is not None})


def performance(url: str, persona: str | None = None) -> dict:
    """The /performance numbers of a persona (of the only one, for a single-persona server)."""
    path = f"/{persona}/performance" if persona else "/performance"
    return httpx.get(url + path, timeout=10).json()


def evaluated_at_turns(performance: dict) -> int:
    """Of a /performance report's prompt tokens evaluated, those evaluated while a turn
    waited: all of them but the prefills of conversations' next turns."""
    return (performance["engine_prompt_tokens_evaluated"]
            - performance.get("engine_prompt_tokens_prefilled", 0))


def settled(performance: dict | None) -> dict | None:
    """A /performance report taken while no prefill of a conversation's next turn waits or
    runs (each answered turn queues one before its response ends), else None: its prompt
    token counts include every finished turn's prefill and nothing half done."""
    return performance if performance and not performance.get("engine_prefilling") else None


class ChatbotServer(LocalServer):
    """One `chatbot serve` process (or another `chatbot` command that serves HTTP, such as
    `not-found`), started at once; `url` is its base URL, `log` its combined output."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None,
                 command: str = "serve", cwd: Path | None = None,
                 port: int | None = None) -> None:
        port = port or free_port()
        chatbot = shutil.which("chatbot", path=str(Path(sys.executable).parent)) or "chatbot"
        super().__init__(
            [chatbot, command, *args, "--port", str(port)], workdir / f"server-{port}.log",
            port=port, cwd=cwd,
            env={"CHATBOT_HISTORY_PATH": str(workdir / f"h-{port}.db"), **(env or {})})
        self.start()

    def performance(self, persona: str | None = None) -> dict:
        return performance(self.url, persona)

    def settled_performance(self, persona: str | None = None, timeout: float = 30) -> dict:
        """/performance once it is `settled`."""
        return self.wait_for(lambda: settled(self.performance(persona)), timeout,
                             "the prefills never finished")

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), **kwargs)

    def wait_until(self, path: str, status: int = 200, timeout: float = 60) -> httpx.Response:
        """The first answer of `path` with `status`."""

        def answered() -> httpx.Response | None:
            try:
                response = httpx.get(self.url + path, timeout=5)
            except httpx.TransportError:
                return None
            return response if response.status_code == status else None

        return self.wait_for(answered, timeout, f"{path} never answered {status}")
