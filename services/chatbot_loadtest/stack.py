"""Start a local server: a process that serves HTTP on loopback, its output in a log file.

`LocalServer` is the one way this repository starts one: `--spawn-stack` (`LocalStack`, a
`chatbot serve` for the run, started first and stopped after) and the tests' real servers
(tests/support/server.py `ChatbotServer`, tests/route/nginx.py) build on it. Standard library
only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

READY_PATHS = ("/office/readyz", "/character/readyz")


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def http_status(url: str, timeout: float = 5) -> int | None:
    """The status a GET of `url` answers, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None


class LocalServer:
    """A server process on loopback: `argv` started with its stdout and stderr in `log`;
    `stop()` sends `stop_signal` (Ctrl-C by default, as a user stops it), then kills it after
    `stop_timeout_s`."""

    def __init__(self, argv: Sequence[str], log: Path, *, port: int,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 stop_signal: int = signal.SIGINT, stop_timeout_s: float = 15.0) -> None:
        self.argv = [str(a) for a in argv]
        self.log = log
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name

    def start(self) -> None:
        self._out = open(self.log, "wb")
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=self._out,
                                     stderr=subprocess.STDOUT)

    def wait_for(self, check: Callable[[], T | None], timeout: float, waiting_for: str,
                 every: float = 0.05) -> T:
        """What `check` returns once it returns something; a RuntimeError (with the log's
        end) if the process exits first, a TimeoutError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"`{self.name}` exited with {self.proc.returncode}; "
                                   f"see {self.log}:\n{self.output()}")
            result = check()
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{waiting_for} within {timeout:g}s; see {self.log}:\n"
                                   f"{self.output()}")
            time.sleep(every)

    def output(self, chars: int = 4000) -> str:
        """The end of the process's output."""
        self._out.flush()
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


class LocalStack(LocalServer):
    """`chatbot serve` on loopback with the chosen models; its output goes to `log_path`.
    `start()` returns once both personas are ready."""

    def __init__(self, log_path: Path, office_model: Path | None = None,
                 character_model: Path | None = None, port: int | None = None,
                 ready_timeout_s: float = 600.0) -> None:
        port = port or free_port()
        command = [sys.executable, "-m", "chatbot.cli", "serve",
                   "--host", "127.0.0.1", "--port", str(port)]
        if office_model:
            command += ["--office-model", str(office_model)]
        if character_model:
            command += ["--character-model", str(character_model)]
        super().__init__(command, log_path, port=port, stop_timeout_s=30.0)
        self.ready_timeout_s = ready_timeout_s

    @property
    def name(self) -> str:
        return "chatbot serve"

    def start(self) -> None:
        super().start()
        pending = list(READY_PATHS)

        def all_ready() -> bool | None:
            while pending and http_status(self.url + pending[0]) == 200:
                pending.pop(0)
            return True if not pending else None

        self.wait_for(all_ready, self.ready_timeout_s, "the stack was not ready", every=0.2)
