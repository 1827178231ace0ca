"""`--spawn-stack`: a local `chatbot serve` for the run, started first and stopped after."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

READY_PATHS = ("/office/readyz", "/character/readyz")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalStack:
    """`chatbot serve` on loopback with the chosen models; its output goes to `log_path`."""

    def __init__(self, log_path: Path, office_model: Path | None = None,
                 character_model: Path | None = None, port: int | None = None,
                 ready_timeout_s: float = 600.0) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.ready_timeout_s = ready_timeout_s
        self.command = [sys.executable, "-m", "chatbot.cli", "serve",
                        "--host", "127.0.0.1", "--port", str(self.port)]
        if office_model:
            self.command += ["--office-model", str(office_model)]
        if character_model:
            self.command += ["--character-model", str(character_model)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=os.environ.copy())
        deadline = time.monotonic() + self.ready_timeout_s
        pending = list(READY_PATHS)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`chatbot serve` exited with {self.proc.returncode}; "
                                   f"see {self.log_path}:\n{self._tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the stack was not ready in {self.ready_timeout_s:g}s "
                                   f"({pending[0]}); see {self.log_path}")
            try:
                if requests.get(self.url + pending[0], timeout=5).status_code == 200:
                    pending.pop(0)
                    continue
            except requests.RequestException:
                pass
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self._log.close()

    def _tail(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-3000:]
