"""The model-fetch program against a real HTTP server on loopback (tests/operator/model_server)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from chatbot_operator.fetch import (
    ChecksumMismatch,
    Progress,
    download_file,
    url_for,
)
from tests.operator.model_server import ModelServer

DATA = os.urandom(3 * (1 << 20) + 12345)  # a bit over 3 chunks
SHA = hashlib.sha256(DATA).hexdigest()
FILE = "tiny.Q4_1.gguf"


@pytest.fixture
def server():
    with ModelServer({FILE: DATA, "other.gguf": b"x" * 1000}) as srv:
        yield srv


def _progress(snaps: list) -> Progress:
    return Progress(sinks=[snaps.append], interval=0)


def test_downloads_verifies_and_moves_into_place(server, tmp_path):
    snaps: list[dict] = []
    out = download_file(f"{server.url}/{FILE}", tmp_path, FILE, SHA, _progress(snaps))
    assert out.read_bytes() == DATA
    assert not (tmp_path / (FILE + ".part")).exists()
    percents = [s["percent"] for s in snaps if "percent" in s]
    assert percents[0] == 0 and percents[-1] == 100
    assert percents == sorted(percents) and len(set(percents)) >= 3  # shows progress
    assert snaps[-1]["phase"] == "Done" and snaps[-1]["bytesDone"] == len(DATA)


def test_resumes_after_a_cut_connection_with_a_range_request(server, tmp_path):
    server.cut_after, server.cuts_left = 1_000_000, 2  # two cuts, then a full answer
    snaps: list[dict] = []
    out = download_file(f"{server.url}/{FILE}", tmp_path, FILE, SHA, _progress(snaps),
                        backoff=0.01)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == SHA
    ranges = [r for _, r in server.requests]
    assert ranges == [None, "bytes=1000000-", "bytes=2000000-"]
    assert any("resuming" in (s.get("message") or "") for s in snaps)


def test_resumes_a_part_file_left_by_an_earlier_pod(server, tmp_path):
    (tmp_path / (FILE + ".part")).write_bytes(DATA[:2_500_000])
    download_file(f"{server.url}/{FILE}", tmp_path, FILE, SHA, _progress([]))
    assert (tmp_path / FILE).read_bytes() == DATA
    assert server.requests == [(f"/{FILE}", "bytes=2500000-")]


def test_wrong_checksum_fails_and_leaves_nothing_behind(server, tmp_path):
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ChecksumMismatch, match=f"expected {wrong}, got {SHA}"):
        download_file(f"{server.url}/{FILE}", tmp_path, FILE, wrong, _progress([]))
    assert list(tmp_path.iterdir()) == []


def test_skips_a_present_verified_file_without_downloading(server, tmp_path):
    download_file(f"{server.url}/{FILE}", tmp_path, FILE, SHA, _progress([]))
    server.requests.clear()
    snaps: list[dict] = []
    download_file(f"{server.url}/{FILE}", tmp_path, FILE, SHA, _progress(snaps))
    assert server.requests == []
    assert snaps[-1]["phase"] == "Done" and snaps[-1]["message"] == "already present"


def test_replaces_a_present_file_with_the_wrong_content(server, tmp_path):
    (tmp_path / FILE).write_bytes(b"corrupt")
    download_file(f"{server.url}/{FILE}", tmp_path, FILE, SHA, _progress([]))
    assert (tmp_path / FILE).read_bytes() == DATA
    assert len(server.requests) == 1


def test_hf_urls_follow_the_resolve_layout(monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    assert url_for("hf://QuantFactory/Meta-Llama-3.1-8B-Claude-GGUF", "main", "a.gguf") == (
        "https://huggingface.co/QuantFactory/Meta-Llama-3.1-8B-Claude-GGUF/resolve/main/a.gguf")
    assert url_for("https://models.example/dir/", "main", "a.gguf") == (
        "https://models.example/dir/a.gguf")


def test_the_program_exits_3_on_a_wrong_checksum_and_says_why(server, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": server.url}
    run = subprocess.run(
        [sys.executable, "-m", "chatbot_operator.fetch", "--source", "hf://owner/repo",
         "--dest", str(tmp_path), "--file", FILE, "--sha256", "0" * 64],
        capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 3, run.stderr
    assert "sha256 mismatch for tiny.Q4_1.gguf" in run.stderr
    assert server.requests[0][0] == f"/owner/repo/resolve/main/{FILE}"
    assert "Downloading: tiny.Q4_1.gguf 0/" in run.stdout


def test_the_program_downloads_with_progress_lines(server, tmp_path):
    run = subprocess.run(
        [sys.executable, "-m", "chatbot_operator.fetch", "--source", server.url,
         "--dest", str(tmp_path), "--file", FILE, "--sha256", SHA, "--interval", "0"],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / FILE).read_bytes() == DATA
    assert "(100.0%)" in run.stdout


def test_the_last_report_carries_the_gguf_shape_and_random_bytes_say_why_not(tmp_path):
    from chatbot_operator.gguf_header import read_facts
    from tests.operator.gguf_shapes import SMOLLM2_135M, Q, write_header

    header = write_header(tmp_path / "smol.gguf", SMOLLM2_135M, Q.Q4_1).read_bytes()
    with ModelServer({"smol.gguf": header, FILE: DATA}) as srv:
        snaps: list[dict] = []
        download_file(f"{srv.url}/smol.gguf", tmp_path / "dl", "smol.gguf", None,
                      _progress(snaps))
        assert snaps[-1]["phase"] == "Done"
        assert snaps[-1]["gguf"] == read_facts(tmp_path / "smol.gguf").to_status()
        assert snaps[-1]["gguf"]["nLayer"] == 30
        snaps.clear()
        download_file(f"{srv.url}/{FILE}", tmp_path / "dl", FILE, None, _progress(snaps))
        assert "not a GGUF file" in snaps[-1]["gguf"]["error"]
