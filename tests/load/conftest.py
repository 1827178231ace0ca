from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.support.server import ChatbotServer, performance

PERSONAS = ("office", "character")
# Office runs one answer at a time with two waiting, character two with two waiting, so 20
# users arriving together are mostly told 429 at first. The Retry-After prior is lowered to
# a tiny model's speed so that the retries fit in the run.
LOAD_ENV = {
    "CHATBOT_OFFICE__MAX_CONCURRENT": "1", "CHATBOT_OFFICE__MAX_QUEUE": "2",
    "CHATBOT_CHARACTER__MAX_CONCURRENT": "2", "CHATBOT_CHARACTER__MAX_QUEUE": "2",
    "CHATBOT_OFFICE__PRIOR_SERVICE_S": "1", "CHATBOT_CHARACTER__PRIOR_SERVICE_S": "1",
    "CHATBOT_OFFICE__GENERATION__MAX_TOKENS": "160",
    "CHATBOT_CHARACTER__GENERATION__MAX_TOKENS": "160",
    # No internet here: office questions with google_access get ddgs-shaped recorded results.
    "CHATBOT_SEARCH": "recorded",
    "CHATBOT_SEARCH_RECORDED_PATH": str(Path(__file__).resolve().parents[1] / "data"
                                        / "ddgs_recorded.json"),
}


def chatbot_command() -> str:
    return shutil.which("chatbot", path=str(Path(sys.executable).parent)) or "chatbot"


def loadtest_against_stub(answer, out: Path, *args: str) -> subprocess.CompletedProcess:
    """`chatbot loadtest` against a stub route: `answer(handler)` writes each answer (GET and
    POST alike); the stub stops when the run ends."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's method names)
            answer(self)

        def do_POST(self) -> None:  # noqa: N802
            answer(self)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        return subprocess.run(
            [chatbot_command(), "loadtest", "--host", f"http://127.0.0.1:{server.server_port}",
             *args, "--out", str(out)],
            capture_output=True, text=True, timeout=120)
    finally:
        server.shutdown()
        server.server_close()


def idle_performance(url: str, persona: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        perf = performance(url, persona)
        if (perf["active_connections"] == 0 and perf["queue_size"] == 0) \
                or time.monotonic() > deadline:
            return perf
        time.sleep(0.1)


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@dataclass
class LoadRun:
    server: ChatbotServer
    out: Path
    output: str
    returncode: int
    before: dict
    after: dict

    def csv(self, persona: str) -> tuple[list[str], list[dict]]:
        (path,) = self.out.glob(f"{persona}_*.csv")
        return read_csv(path)


@pytest.fixture(scope="session")
def load_server(tiny_models, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("load-server")
    server = ChatbotServer(workdir, env={
        **LOAD_ENV, "CHATBOT_OFFICE_MODEL": str(tiny_models["office"]),
        "CHATBOT_CHARACTER_MODEL": str(tiny_models["character"])})
    try:
        for persona in PERSONAS:
            server.wait_until(f"/{persona}/readyz")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def load_run(load_server, tmp_path_factory) -> LoadRun:
    """`chatbot loadtest`: 20 users arriving together, at most 30 s, against tiny models."""
    out = tmp_path_factory.mktemp("load-results")
    before = {p: idle_performance(load_server.url, p) for p in PERSONAS}
    result = subprocess.run(
        [chatbot_command(), "loadtest", "--host", load_server.url, "--users", "20",
         "--spawn-rate", "20", "--run-time", "30s", "--out", str(out), "--seed", "8"],
        capture_output=True, text=True, timeout=240)
    after = {p: idle_performance(load_server.url, p) for p in PERSONAS}
    return LoadRun(load_server, out, result.stdout + result.stderr, result.returncode,
                   before, after)
