"""The `chatbot` command line (and the development `chatbot-dev`), as a user runs it."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from tests.support.server import serve_to_the_end

CHATBOT = str(Path(sys.executable).parent / "chatbot")
CHATBOT_DEV = str(Path(sys.executable).parent / "chatbot-dev")


def test_tiny_model_writes_a_deterministic_gguf(tmp_path):
    outs = []
    for name in ("a.gguf", "b.gguf"):
        run = subprocess.run([CHATBOT_DEV, "tiny-model", str(tmp_path / name), "--quant", "Q4_1"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert "Q4_1" in run.stdout
        outs.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert outs[0] == outs[1]
    assert (tmp_path / "a.gguf").read_bytes()[:4] == b"GGUF"


def test_unknown_quant_and_persona_are_usage_errors(tmp_path):
    bad_quant = subprocess.run([CHATBOT_DEV, "tiny-model", str(tmp_path / "x.gguf"),
                                "--quant", "Q2"], capture_output=True, text=True, timeout=60)
    bad_persona = subprocess.run([CHATBOT, "serve", "lawyer"], capture_output=True, text=True,
                                 timeout=60)
    assert bad_quant.returncode == 2 and "--quant" in bad_quant.stderr
    assert bad_persona.returncode == 2 and "office" in bad_persona.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_bad_configuration_is_a_clear_error_naming_the_variable():
    run = serve_to_the_end({"CHATBOT_OFFICE__MODEL__N_THREADS": "lots"})
    assert run.returncode == 2
    assert "CHATBOT_OFFICE__MODEL__N_THREADS" in run.stderr and "'lots'" in run.stderr
    assert "Traceback" not in run.stderr


def test_not_found_serves_the_html_404_page_for_every_path():
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([CHATBOT, "not-found", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(base + "/__healthz", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None, "did not start"
                time.sleep(0.1)
        assert health.status_code == 200
        for method, path in (("GET", "/"), ("GET", "/nowhere/deep"), ("POST", "/Llama")):
            r = httpx.request(method, base + path, timeout=5)
            assert r.status_code == 404
            assert r.headers["content-type"].startswith("text/html")
            assert "404 - 없는 페이지입니다" in r.text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
