#!/usr/bin/env python3
"""Single-stream generation through `POST /office/Llama` against a direct llama_cpp call.

Same GGUF, same messages, same sampling, same threads, 128 generated tokens; runs
alternate (direct, HTTP, direct, ...) so machine noise hits both. Prints a table:
tokens/s, time to first token, and the service's overhead per request.

    .venv/bin/python tests/bench/bench_http_vs_direct.py [--runs 5] [--model PATH ...]

Without --model it measures the bundled SmolLM2 and a tiny Q4_0 model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chatbot.core.prompts import office_messages  # noqa: E402
from chatbot.domain.personas import OFFICE, STOP_STRINGS  # noqa: E402
from chatbot.llm.bundled import bundled_model_path  # noqa: E402
from chatbot.llm.tiny_model import write_tiny_model  # noqa: E402
from chatbot.settings import OfficeSettings  # noqa: E402
from tests.service.server import ChatbotServer  # noqa: E402

TOKENS = 128
QUESTION = "Explain in a few sentences how to write good meeting notes."


def _timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        if rest.startswith("dur="):
            out[name] = float(rest[4:]) / 1000
    return out


def direct_run(llm, params: dict, question: str) -> tuple[float, float, int]:
    s = OfficeSettings()
    messages = office_messages(assistant_name=s.assistant_name, role=s.assistant_role,
                               user_input=question, history=[], results=[])
    started = time.perf_counter()
    first, tokens = None, 0
    for chunk in llm.create_chat_completion(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            stream=True, stop=list(STOP_STRINGS), **params):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            first = first or time.perf_counter() - started
    return time.perf_counter() - started, first or 0.0, tokens


def http_run(http: httpx.Client, question: str) -> tuple[float, float, int, float, float]:
    """wall, ttft, tokens, overhead outside the engine (client view), server-side share."""
    started = time.perf_counter()
    r = http.post("/Llama", json={"input_data": question})
    wall = time.perf_counter() - started
    r.raise_for_status()
    t = _timing(r.headers["server-timing"])
    server_side = t["total"] - t["queue"] - t["gen"]
    return wall, t.get("ttft", 0.0), int(r.headers["x-generated-tokens"]), wall - t["gen"], \
        server_side


def http_floor(http: httpx.Client, n: int = 50) -> float:
    """Round trip of GET /healthz: what any HTTP request costs here, client included."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        http.get("/healthz").raise_for_status()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench(model: Path, runs: int, workdir: Path) -> dict:
    import llama_cpp

    threads = len(os.sched_getaffinity(0))
    gen = OFFICE.generation
    params = dict(max_tokens=TOKENS, temperature=gen.temperature, top_p=gen.top_p,
                  top_k=gen.top_k, min_p=gen.min_p, repeat_penalty=gen.repeat_penalty,
                  frequency_penalty=gen.frequency_penalty,
                  presence_penalty=gen.presence_penalty, seed=7)
    server = ChatbotServer(workdir, "office", env={
        "CHATBOT_OFFICE_MODEL": str(model), "CHATBOT_OFFICE__GENERATION__MAX_TOKENS": str(TOKENS),
        "CHATBOT_OFFICE__GENERATION__SEED": "7", "CHATBOT_HISTORY_PATH": ":memory:"})
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=8191, n_batch=2048, flash_attn=True,
                          n_threads=threads, n_threads_batch=threads, verbose=False)
    try:
        server.wait_until("/readyz", timeout=120)
        d, h = [], []
        with httpx.Client(base_url=server.url, timeout=300) as http:
            http_run(http, QUESTION), direct_run(llm, params, QUESTION)  # warm-up both
            floor = http_floor(http)
            for i in range(runs):
                question = f"{QUESTION} (request {i})"  # no whole-prompt cache hits
                d.append(direct_run(llm, params, question))
                h.append(http_run(http, question))
                print(f"  {model.name}: run {i + 1}/{runs}", file=sys.stderr)
    finally:
        server.stop()
        llm.close()
    med = statistics.median
    d_tps = med(tok / wall for wall, _, tok in d)
    h_tps = med(x[2] / x[0] for x in h)
    return {"model": model.name, "direct_tps": d_tps, "http_tps": h_tps, "ratio": h_tps / d_tps,
            "direct_ttft_ms": med(x[1] for x in d) * 1000,
            "http_ttft_ms": med(x[1] for x in h) * 1000,
            "overhead_ms": med(x[3] for x in h) * 1000, "server_ms": med(x[4] for x in h) * 1000,
            "floor_ms": floor * 1000,
            "tokens": med(x[2] for x in h)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", type=Path, action="append")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = args.model or [bundled_model_path(),
                                write_tiny_model(work / "tiny.Q4_0.gguf", quant="Q4_0")]
        rows = [bench(m, args.runs, work) for m in models]
    print(f"\nsingle stream, {TOKENS} tokens max, office sampling, median of {args.runs} runs")
    print(f"{'model':<36} {'direct tok/s':>12} {'HTTP tok/s':>11} {'HTTP/direct':>11} "
          f"{'TTFT direct':>11} {'TTFT HTTP':>10} {'overhead':>9} {'in server':>9} "
          f"{'HTTP floor':>10}")
    for r in rows:
        print(f"{r['model']:<36} {r['direct_tps']:>12.1f} {r['http_tps']:>11.1f} "
              f"{r['ratio']:>11.2f} {r['direct_ttft_ms']:>9.1f}ms {r['http_ttft_ms']:>8.1f}ms "
              f"{r['overhead_ms']:>7.2f}ms {r['server_ms']:>7.2f}ms {r['floor_ms']:>8.2f}ms")
    print("""
target: HTTP/direct >= 0.95 (tok/s = generated tokens / request wall time).
overhead  = client latency - engine time: HTTP, JSON, admission, history, prompt assembly.
in server = the service's own share of it (Server-Timing total - queue - gen).
HTTP floor = GET /healthz round trip, client included.
Peers (llama-server, llama_cpp.server) on this machine: shared/design/PERFORMANCE.md.""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
