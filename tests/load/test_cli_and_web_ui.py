"""`chatbot loadtest --spawn-stack` starts and stops its own stack; Locust's own web UI runs
the same users from tests/load/locustfile.py and writes the same report."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.load.conftest import LOAD_ENV, chatbot_command, read_csv
from tests.support import free_port

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def test_spawn_stack_starts_the_service_runs_and_stops_it(tiny_models, tmp_path):
    out = tmp_path / "results"
    env = {**os.environ, **LOAD_ENV, "CHATBOT_HISTORY_PATH": str(tmp_path / "history.db")}
    result = subprocess.run(
        [chatbot_command(), "loadtest", "--spawn-stack", "--users", "4", "--spawn-rate", "4",
         "--run-time", "30s", "--out", str(out),
         "--office-model", str(tiny_models["office"]),
         "--character-model", str(tiny_models["character"])],
        capture_output=True, text=True, timeout=180, env=env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["results"]["all"]["answers"] == 4, summary["results"]
    assert all(r["match"] for r in summary["reconciliation"].values())
    assert all(summary["results"][p]["server_generated_tokens"] > 0
               for p in ("office", "character"))
    assert (out / "report.html").is_file() and (out / "server.log").is_file()
    port = int(re.search(r"stack ready at http://127\.0\.0\.1:(\d+)", output).group(1))
    with socket.socket() as probe:  # the stack is gone: nothing listens on its port
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_stack_that_cannot_start_is_a_clear_error(tmp_path):
    result = subprocess.run(
        [chatbot_command(), "loadtest", "--spawn-stack", "--out", str(tmp_path),
         "--office-model", str(tmp_path / "missing.gguf")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "office model file not found" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _chatbot_loadtest_without(module: str, *args: str) -> subprocess.CompletedProcess:
    """`chatbot loadtest ARGS` where `module` is missing, simulated the way Python documents:
    sys.modules[name] = None."""
    return subprocess.run(
        [sys.executable, "-c", f"import sys; sys.modules[{module!r}] = None; "
         f"from chatbot.cli import main; sys.exit(main(['loadtest', *{args!r}]))"],
        capture_output=True, text=True, timeout=60)


def test_without_the_load_extra_it_says_what_to_install():
    result = _chatbot_loadtest_without("locust")
    assert result.returncode == 2
    assert "pip install" in result.stderr and "[load]" in result.stderr
    assert "missing: locust" in result.stderr and "Traceback" not in result.stderr


def test_without_the_load_test_client_it_says_what_to_install():
    """As in the service image, which holds no chatbot_loadtest."""
    result = _chatbot_loadtest_without("chatbot_loadtest", "--users", "3")
    assert result.returncode == 2
    assert "pip install" in result.stderr and "[load]" in result.stderr
    assert "Traceback" not in result.stderr


def test_chatbot_loadtest_is_the_clients_own_command():
    loadtest = shutil.which("chatbot-loadtest", path=str(Path(sys.executable).parent))
    assert loadtest, "the chatbot-loadtest command is not installed"
    helped = subprocess.run([loadtest, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--spawn-stack" in helped.stdout
    for command in ([loadtest], [chatbot_command(), "loadtest"]):
        result = subprocess.run([*command, "--run-time", "soon"], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2, command
        assert "--run-time: not a duration" in result.stderr and "Traceback" not in result.stderr


def test_a_run_time_that_is_not_a_duration_is_a_clear_error():
    result = subprocess.run([chatbot_command(), "loadtest", "--run-time", "soon"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--run-time" in result.stderr and "Traceback" not in result.stderr


def test_a_negative_default_retry_after_is_a_clear_error():
    result = subprocess.run([chatbot_command(), "loadtest", "--default-retry-after", "-1"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--default-retry-after: must not be negative" in result.stderr


def test_locusts_web_ui_runs_the_users_and_writes_the_report(load_server, tmp_path):
    port = free_port()
    locust = shutil.which("locust", path=str(Path(sys.executable).parent)) or "locust"
    log = open(tmp_path / "locust.log", "wb")
    proc = subprocess.Popen(
        [locust, "-f", str(LOCUSTFILE), "--web-host", "127.0.0.1", "--web-port", str(port),
         "--host", load_server.url],
        env={**os.environ, "CHATBOT_LOADTEST_OUT": str(tmp_path / "results")},
        stdout=log, stderr=subprocess.STDOUT)
    ui = f"http://127.0.0.1:{port}"
    try:
        page = _wait_for(lambda: httpx.get(ui + "/", timeout=5), proc, tmp_path)
        assert page.status_code == 200 and "locust" in page.text.lower()
        started = httpx.post(ui + "/swarm", data={"user_count": 4, "spawn_rate": 4,
                                                  "host": load_server.url}, timeout=10)
        assert started.json()["success"], started.text

        def four_answers():
            rows = [row for path in (tmp_path / "results").glob("*/*.csv")
                    for row in read_csv(path)[1]]
            return sum(r["is_final_success"] == "True" for r in rows) == 4 or None

        _wait_for(four_answers, proc, tmp_path)
        assert httpx.post(ui + "/stop", timeout=30).json()["success"]
        (report,) = _wait_for(lambda: list((tmp_path / "results").glob("*/report.html")),
                              proc, tmp_path)
        assert "Locust web UI" in report.read_text()
        stats = httpx.get(ui + "/stats/requests", timeout=10).json()
        total = next(s for s in stats["stats"] if s["name"] == "Aggregated")
        assert total["num_requests"] >= 4
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_for(probe, proc, tmp_path, timeout: float = 60):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "locust.log").read_text()[-3000:]
        try:
            last = probe()
            if last:
                return last
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.2)
    raise TimeoutError(f"{last!r}\n{(tmp_path / 'locust.log').read_text()[-3000:]}")
