"""A real MongoDB-wire server for the tests: FerretDB v1 on its SQLite backend, on loopback.

Why FerretDB v1.24 with SQLite: it is a production-used, MongoDB-compatible server built from
its Go module by `tests/kube/build-binaries` (pinned in tests/kube/versions.env), and its
SQLite backend needs nothing else. FerretDB v2 needs PostgreSQL with the DocumentDB extension,
which cannot be installed here without Docker.

The binary is located the way the cluster tests locate theirs (tests/kube/binaries.py).
When it is missing (e.g. `CHATBOT_TEST_KUBECONFIG` made `tests/run` skip build-binaries) the
tests build it if Go is available, else skip with the reason; with `CHATBOT_REQUIRE_CLUSTER=1`
(or `CI`) a missing binary fails them instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.kube import binaries
from tests.support.ports import free_port


def _required() -> bool:
    flag = os.environ.get("CHATBOT_REQUIRE_CLUSTER", "").strip().lower()
    if flag:
        return flag not in ("0", "false", "no")
    return bool(os.environ.get("CI"))


def ferretdb_binary() -> Path:
    """The cached FerretDB binary; built on demand when Go is there; else skip (or fail)."""
    comp = binaries.COMPONENTS["ferretdb"]
    if not comp.is_built() and shutil.which("go"):
        try:
            binaries.build_all(["ferretdb"])
        except SystemExit as exc:
            pytest.fail(f"building FerretDB {comp.version} failed: {exc}")
    if not comp.is_built():
        msg = (f"FerretDB {comp.version} is not built and Go is missing: "
               "run tests/kube/build-binaries ferretdb")
        if _required():
            pytest.fail(msg)
        pytest.skip(msg)
    return binaries.binary("ferretdb")


class FerretDB:
    """One FerretDB process; `stop()`/`start()` keep the port and the data (outage tests)."""

    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.data = workdir / "sqlite"
        self.data.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"mongodb://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "ferretdb.log"

    def start(self, timeout: float = 30) -> None:
        debug_port = free_port()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.binary), "--handler=sqlite", f"--sqlite-url=file:{self.data}/",
                 f"--listen-addr=127.0.0.1:{self.port}", f"--debug-addr=127.0.0.1:{debug_port}",
                 f"--state-dir={self.workdir}", "--telemetry=disable", "--log-level=error"],
                stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"FerretDB exited:\n{self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"FerretDB did not listen on {self.port}")

    def kill(self) -> None:
        """Stop it hard (SIGKILL), as a crashed server would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the port stays open but nothing answers (a slow server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
