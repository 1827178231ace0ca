"""Starts real `chatbot serve` processes (uvicorn) on loopback for the service tests."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.ports import free_port


def performance(url: str, persona: str | None = None) -> dict:
    """The /performance numbers of a persona (of the only one, for a single-persona server)."""
    path = f"/{persona}/performance" if persona else "/performance"
    return httpx.get(url + path, timeout=10).json()


class ChatbotServer:
    """One `chatbot serve` process (or another `chatbot` command that serves HTTP, such as
    `not-found`); `url` is its base URL, `log` its combined output."""

    def __init__(self, workdir: Path, *args: str, env: dict[str, str] | None = None,
                 command: str = "serve", cwd: Path | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"server-{self.port}.log"
        full_env = {**os.environ, "CHATBOT_HISTORY_PATH": str(workdir / f"h-{self.port}.db")}
        full_env.update(env or {})
        chatbot = shutil.which("chatbot", path=str(Path(sys.executable).parent)) or "chatbot"
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [chatbot, command, *args, "--port", str(self.port)],
            env=full_env, stdout=self._out, stderr=subprocess.STDOUT, cwd=cwd,
        )

    def performance(self, persona: str | None = None) -> dict:
        return performance(self.url, persona)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), **kwargs)

    def wait_until(self, path: str, status: int = 200, timeout: float = 60) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                last = httpx.get(self.url + path, timeout=5)
                if last.status_code == status:
                    return last
            except httpx.TransportError as exc:
                last = exc
            time.sleep(0.05)
        raise TimeoutError(f"{path} never answered {status} (last: {last})\n{self.output()}")

    def output(self) -> str:
        self._out.flush()
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
