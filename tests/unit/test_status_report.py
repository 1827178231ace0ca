"""The service's GPU offload report into its ChatbotModel (the cluster test sends it to a
real API server: tests/cluster/test_cluster_gpu.py)."""

from __future__ import annotations

import logging

import pytest

from chatbot import status_report
from chatbot.settings import Settings


def test_the_report_says_what_llama_cpp_offloaded_with_the_operators_settings_hash():
    s = Settings(status_report="ns1/chatbot", settings_hash="abc123", pod_name="chatbot-office-x")
    facts = {"n_layer": 32, "gpu_layers_offloaded": 0, "gpu_layers_requested": -1,
             "gpu_offload_supported": False}
    body = status_report.report_body("office", facts, s)
    entry = body["status"]["acceleration"]["office"]
    assert entry | {"reportedAt": None} == {
        "pod": "chatbot-office-x", "settingsHash": "abc123", "offloaded": 0, "requested": -1,
        "layersTotal": 33, "supported": False, "reportedAt": None}


def test_a_bad_target_is_refused_by_the_settings():
    with pytest.raises(ValueError, match="status_report"):
        Settings(status_report="not a target")


def test_an_unreachable_api_server_is_logged_not_fatal(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(status_report.time, "sleep", lambda s: None)
    (tmp_path / "token").write_text("t")
    s = Settings(status_report="ns1/chatbot", kube_api_url="http://127.0.0.1:9",
                 kube_token_file=tmp_path / "token", kube_ca_file=tmp_path / "missing.crt")
    with caplog.at_level(logging.WARNING):
        assert status_report.report(s, "office", {"n_layer": 4}, attempts=2) is False
    assert caplog.text.count("GPU offload report to ns1/chatbot failed") == 2
