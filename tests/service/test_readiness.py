"""Readiness: alive at once, ready only once the model is loaded."""

from __future__ import annotations

import shutil


def test_not_ready_until_the_model_file_arrives_and_loads(start_server, tiny_models, tmp_path):
    arriving = tmp_path / "arriving.gguf"
    server = start_server("office", ready=False, models=False, env={
        "CHATBOT_OFFICE_MODEL": str(arriving), "CHATBOT_MODEL_WAIT_TIMEOUT_S": "120"})
    server.wait_until("/healthz")
    waiting = server.wait_until("/readyz", status=503).json()
    assert waiting["status"] == "not ready" and "waiting for model file" in waiting["detail"]
    with server.client() as http:
        early = http.post("/Llama", json={"input_data": "hello"})
    assert early.status_code == 503 and early.json()["code"] == "ENGINE_UNAVAILABLE"

    shutil.copy(tiny_models["office"], tmp_path / "partial")
    (tmp_path / "partial").rename(arriving)  # appear atomically, as a download job would
    ready = server.wait_until("/readyz", status=200).json()
    assert ready["status"] == "ready" and ready["engine"]["load_seconds"] >= 0
    with server.client() as http:
        assert http.post("/Llama", json={"input_data": "hello"}).status_code == 200


def test_a_missing_model_without_waiting_is_a_clear_startup_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    chatbot = Path(sys.executable).parent / "chatbot"
    run = subprocess.run([str(chatbot), "serve", "--office-model", str(tmp_path / "none.gguf"),
                          "--port", "1"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "office model file not found" in run.stderr and "none.gguf" in run.stderr
