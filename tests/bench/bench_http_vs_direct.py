#!/usr/bin/env python3
"""Single-stream generation: our `POST /office/Llama` against a direct llama_cpp call and
against llama-cpp-python's own server (`llama_cpp.server`, `POST /v1/chat/completions`).

Same GGUF, same messages, same sampling, same threads, at most 128 generated tokens; the
three run in turn (direct, ours, peer, direct, ...) so machine noise hits all of them, and
every request carries a new question so no whole prompt is served from the cache.

    .venv/bin/python tests/bench/bench_http_vs_direct.py [--runs 5] [--model PATH ...]

Without --model it measures the bundled SmolLM2 and a tiny Q4_0 model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chatbot_dev.tiny_model import write_tiny_model  # noqa: E402

from chatbot.domain.personas import OFFICE, STOP_STRINGS  # noqa: E402
from chatbot.llm.bundled import bundled_model_path  # noqa: E402
from chatbot_loadtest.answers import server_timing_s  # noqa: E402
from tests.bench.bench_batching import peer_messages  # noqa: E402
from tests.support import free_port  # noqa: E402
from tests.support.server import ChatbotServer  # noqa: E402

TOKENS = 128
QUESTION = "Explain in a few sentences how to write good meeting notes."
THREADS = len(os.sched_getaffinity(0))
SEED = 7
PAUSE_S = 0.3


@dataclass
class Sample:
    wall: float
    ttft: float
    tokens: int
    outside_engine: float = 0.0  # ours only: client latency - engine time
    in_server: float = 0.0  # ours only: Server-Timing total - queue - gen


def _sampling() -> dict:
    g = OFFICE.generation
    return dict(max_tokens=TOKENS, temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
                min_p=g.min_p, repeat_penalty=g.repeat_penalty,
                frequency_penalty=g.frequency_penalty, presence_penalty=g.presence_penalty,
                seed=SEED, stop=list(STOP_STRINGS))


def direct(llm, question: str) -> Sample:
    started = time.perf_counter()
    first, tokens = 0.0, 0
    for chunk in llm.create_chat_completion(messages=peer_messages(question), stream=True,
                                            **_sampling()):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            first = first or time.perf_counter() - started
    return Sample(time.perf_counter() - started, first, tokens)


def ours(http: httpx.Client, question: str) -> Sample:
    started = time.perf_counter()
    r = http.post("/Llama", json={"input_data": question})
    wall = time.perf_counter() - started
    r.raise_for_status()
    t = server_timing_s(r.headers["server-timing"])
    return Sample(wall, t.get("ttft", 0.0), int(r.headers["x-generated-tokens"]),
                  wall - t["gen"], t["total"] - t["queue"] - t["gen"])


def peer(http: httpx.Client, question: str) -> Sample:
    """llama_cpp.server, streamed so its time to first token is seen by the client."""
    body = {"messages": peer_messages(question), "stream": True, **_sampling()}
    started = time.perf_counter()
    first, tokens = 0.0, 0
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if json.loads(line[6:])["choices"][0]["delta"].get("content"):
                tokens += 1
                first = first or time.perf_counter() - started
    return Sample(time.perf_counter() - started, first, tokens)


def http_floor(http: httpx.Client, n: int = 50) -> float:
    """Round trip of GET /healthz: what any HTTP request costs here, client included."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        http.get("/healthz").raise_for_status()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _start_peer(model: Path, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(workdir / f"llama_cpp_server-{port}.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--port", str(port),
         "--n_ctx", "8191", "--n_batch", "2048", "--n_threads", str(THREADS),
         "--n_threads_batch", str(THREADS), "--flash_attn", "True",
         "--interrupt_requests", "False"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not start; see " + log.name)


def bench(model: Path, runs: int, workdir: Path) -> dict[str, list[Sample] | float]:
    import llama_cpp

    server = ChatbotServer(workdir, "office", env={
        "CHATBOT_OFFICE_MODEL": str(model), "CHATBOT_OFFICE__GENERATION__MAX_TOKENS": str(TOKENS),
        "CHATBOT_OFFICE__GENERATION__SEED": str(SEED), "CHATBOT_HISTORY_PATH": ":memory:"})
    peer_proc, peer_url = _start_peer(model, workdir)
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=8191, n_batch=2048, flash_attn=True,
                          n_threads=THREADS, n_threads_batch=THREADS, verbose=False)
    samples: dict[str, list[Sample]] = {"direct": [], "ours": [], "peer": []}
    try:
        server.wait_until("/readyz", timeout=120)
        with httpx.Client(base_url=server.url, timeout=300) as http, \
                httpx.Client(base_url=peer_url, timeout=300) as peer_http:
            direct(llm, QUESTION), ours(http, QUESTION), peer(peer_http, QUESTION)  # warm-up
            floor = http_floor(http)
            for i in range(runs):
                question = f"{QUESTION} (request {i})"
                # A pause between contenders lets the previous one's llama.cpp threads stop
                # spin-waiting, which would otherwise steal the next one's cores.
                samples["direct"].append(direct(llm, question))
                time.sleep(PAUSE_S)
                samples["ours"].append(ours(http, question))
                time.sleep(PAUSE_S)
                samples["peer"].append(peer(peer_http, question))
                time.sleep(PAUSE_S)
                print(f"  {model.name}: run {i + 1}/{runs}", file=sys.stderr)
    finally:
        server.stop()
        peer_proc.terminate()
        peer_proc.wait(timeout=30)
        llm.close()
    return {**samples, "floor": floor}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, action="append")
    args = parser.parse_args()
    med = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = args.model or [bundled_model_path(),
                                write_tiny_model(work / "tiny.Q4_0.gguf", quant="Q4_0")]
        results = {m.name: bench(m, args.runs, work) for m in models}

    print(f"\nsingle stream, <= {TOKENS} tokens, office sampling, {THREADS} threads, "
          f"median of {args.runs} runs")
    print(f"{'model':<34} {'contender':<34} {'tok/s':>8} {'vs direct':>9} {'TTFT':>9}")
    names = {"direct": "direct llama_cpp (in-process)", "ours": "ours: POST /office/Llama",
             "peer": "llama_cpp.server /v1/chat/compl."}
    for model, res in results.items():
        base = med(s.tokens / s.wall for s in res["direct"])
        for key, label in names.items():
            tps = med(s.tokens / s.wall for s in res[key])
            ttft = med(s.ttft for s in res[key]) * 1000
            print(f"{model:<34} {label:<34} {tps:>8.1f} {tps / base:>9.2f} {ttft:>7.1f}ms")
        ours_ = res["ours"]
        peer_tps = med(s.tokens / s.wall for s in res["peer"])
        vs_peer = med(s.tokens / s.wall for s in ours_) / peer_tps
        print(f"{'':<34} ours vs llama_cpp.server: {vs_peer:.2f}x tok/s; overhead outside the "
              f"engine {med(s.outside_engine for s in ours_) * 1000:.2f} ms (in the service "
              f"{med(s.in_server for s in ours_) * 1000:.2f} ms, HTTP floor "
              f"{res['floor'] * 1000:.2f} ms)")
    print("""
target: ours >= 0.95x direct. tok/s = generated tokens / request wall time.
overhead outside the engine = client latency - engine time (HTTP, JSON, admission, history,
prompt assembly); "in the service" is the part inside the process (Server-Timing total -
queue - gen); the HTTP floor is a GET /healthz round trip, client included.
More peers (llama-server) on this machine: shared/design/PERFORMANCE.md.""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
