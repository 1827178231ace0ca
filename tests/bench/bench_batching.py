#!/usr/bin/env python3
"""Concurrent clients: our service (sequential engine, batched engine) against llama.cpp's
own `llama-server` with parallel slots.

Same GGUF, same chat messages (the office persona's prompt), greedy decoding with the
office persona's penalties, the same fixed `max_tokens`, same threads, flash attention on,
8 sequences / slots of 2048 tokens each. At 1, 2, 4 and 8 concurrent clients, each
sending a bounded number of requests one after the other, it measures:

- aggregate generated tokens/s (all tokens of the level / the level's wall time),
- time to first token p50/p95 and request latency p50/p95, seen by the client.

Every request carries a new question (no whole-prompt cache hit; the shared system prompt
is reused by all three). Our `/Llama` answers as one JSON string, so its TTFT is the
client's latency minus the engine's time after the first token (Server-Timing gen - ttft).
Tokens are the pieces each server streams (one per token; a multi-byte character split over
tokens counts once), so greedy runs of the same prompt count alike.

    tests/bench/build-llama-server        # once: builds the peer (cached)
    .venv/bin/python tests/bench/bench_batching.py [--out table.md] [--model PATH ...]

Without --model it measures the tiny Q4_0 model and the bundled SmolLM2. One full run
takes about 6-8 minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from chatbot_dev.tiny_model import write_tiny_model  # noqa: E402

from chatbot.core.context_fit import replay_block, window_start  # noqa: E402
from chatbot.core.prompts import office_messages  # noqa: E402
from chatbot.domain.conversation import Turn  # noqa: E402
from chatbot.domain.personas import OFFICE, STOP_STRINGS  # noqa: E402
from chatbot.llm.bundled import bundled_model_path  # noqa: E402
from chatbot.settings import OfficeSettings  # noqa: E402
from chatbot_loadtest.answers import server_timing_s  # noqa: E402
from tests.support import free_port  # noqa: E402
from tests.support.server import ChatbotServer  # noqa: E402

THREADS = len(os.sched_getaffinity(0))  # --threads overrides
SLOTS = 8
N_CTX_PER_SLOT = 2048
# Host RAM for conversations' KV cells, the same for both (llama-server's -cram; ours
# `MODEL__CACHE_RAM_MIB`): enough for 16 SmolLM2 conversations of a full window.
CACHE_RAM_MIB = 1024
SEED = 7
PAUSE_S = 0.5
QUESTION = "Explain in a few sentences how to write good meeting notes"


@dataclass
class Sample:
    wall: float
    ttft: float
    tokens: int


def peer_messages(question: str, history: list[tuple[str, str]] = ()) -> list[dict]:
    """What our service renders for this turn, for a peer to be sent the same prompt: the
    office persona's prompt, the turns (question, answer) it replays, the new question.
    Ours replays at most `history_turns` of them, dropped a block at a time
    (`core/context_fit.py`); the bench's conversations never fill the context, so that
    limit is the only one that applies."""
    s = OfficeSettings()
    history = list(history)
    start = window_start(len(history), min(len(history), OFFICE.history_turns),
                         replay_block(OFFICE.history_turns))
    turns = [Turn(i + 1, q, a, "") for i, (q, a) in enumerate(history) if i >= start]
    msgs = office_messages(assistant_name=s.assistant_name, role=s.assistant_role,
                           user_input=question, history=turns, results=[])
    return [{"role": m.role, "content": m.content} for m in msgs]


class Ours:
    def __init__(self, engine: str, model: Path, workdir: Path, max_tokens: int) -> None:
        self.name = f"ours, {engine} engine"
        g = OFFICE.generation
        self.server = ChatbotServer(workdir, "office", env={
            "CHATBOT_ENGINE": engine, "CHATBOT_OFFICE_MODEL": str(model),
            "CHATBOT_HISTORY_PATH": ":memory:", "CHATBOT_LOG_LEVEL": "warning",
            "CHATBOT_OFFICE__MAX_CONCURRENT": str(SLOTS), "CHATBOT_OFFICE__MAX_QUEUE": "256",
            "CHATBOT_OFFICE__MODEL__N_CTX": str(N_CTX_PER_SLOT),
            "CHATBOT_OFFICE__MODEL__CACHE_RAM_MIB": str(CACHE_RAM_MIB),
            "CHATBOT_OFFICE__MODEL__N_THREADS": str(THREADS),
            "CHATBOT_OFFICE__MODEL__SEED": str(SEED),
            # Greedy, with the persona's penalties; the fallback the same, were it needed.
            **{f"CHATBOT_OFFICE__{part}__{key}": str(value)
               for part in ("GENERATION", "FALLBACK")
               for key, value in (("MAX_TOKENS", max_tokens), ("TEMPERATURE", 0),
                                  ("REPEAT_PENALTY", g.repeat_penalty),
                                  ("FREQUENCY_PENALTY", g.frequency_penalty),
                                  ("PRESENCE_PENALTY", g.presence_penalty),
                                  ("SEED", SEED))},
        })
        self.url = self.server.url

    def wait_ready(self) -> None:
        self.server.wait_until("/readyz", timeout=300)

    def request(self, http: httpx.Client, question: str) -> Sample:
        return self.ask(http, {"input_data": question})[0]

    def ask(self, http: httpx.Client, body: dict) -> tuple[Sample, str]:
        """One `/Llama` call with `body` (db_id/user_id: with history); its sample, answer."""
        started = time.perf_counter()
        r = http.post(self.url + "/Llama", json=body)
        wall = time.perf_counter() - started
        r.raise_for_status()
        timing = server_timing_s(r.headers["server-timing"])
        after_first = timing["gen"] - timing.get("ttft", timing["gen"])
        return Sample(wall, wall - after_first, int(r.headers["x-generated-tokens"])), r.json()

    def stop(self) -> None:
        self.server.stop()


class LlamaServer:
    def __init__(self, binary: Path, model: Path, workdir: Path, max_tokens: int) -> None:
        self.name = f"llama-server -np {SLOTS}"
        self.max_tokens = max_tokens
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(workdir / f"llama-server-{port}.log", "wb")
        self.proc = subprocess.Popen(
            [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
             "-np", str(SLOTS), "-c", str(N_CTX_PER_SLOT * SLOTS), "-b", "2048",
             "-cram", str(CACHE_RAM_MIB),
             "-t", str(THREADS), "-tb", str(THREADS), "-fa", "on", "--no-webui",
             "--seed", str(SEED), "--metrics"],
            stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited; see {self._log.name}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"llama-server never got ready; see {self._log.name}")

    def request(self, http: httpx.Client, question: str) -> Sample:
        return self.chat(http, peer_messages(question))[0]

    def chat(self, http: httpx.Client, messages: list[dict]) -> tuple[Sample, str]:
        """One streamed `/v1/chat/completions` (prompt cache on); its sample and answer."""
        g = OFFICE.generation
        body = {"messages": messages, "stream": True, "max_tokens": self.max_tokens,
                "temperature": 0, "repeat_penalty": g.repeat_penalty, "repeat_last_n": 64,
                "frequency_penalty": g.frequency_penalty, "presence_penalty": g.presence_penalty,
                "seed": SEED, "stop": list(STOP_STRINGS), "cache_prompt": True}
        started = time.perf_counter()
        first, tokens, text = 0.0, 0, []
        with http.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if piece := choices[0].get("delta", {}).get("content"):
                    tokens += 1
                    text.append(piece)
                    first = first or time.perf_counter() - started
        return Sample(time.perf_counter() - started, first, tokens), "".join(text)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


def run_threads(target, n: int) -> float:
    """Runs target(0) ... target(n - 1) on n threads at once; the wall time they took."""
    threads = [threading.Thread(target=target, args=(k,), daemon=True) for k in range(n)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def run_level(contender, clients: int, requests: int, tag: str) -> tuple[list[Sample], float]:
    """`clients` threads share `requests` requests; returns the samples and the wall time."""
    per_client = math.ceil(requests / clients)
    samples: list[Sample] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        # No keep-alive: llama-server's HTTP server drops idle kept-alive connections.
        with httpx.Client(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            for i in range(per_client):
                try:
                    s = contender.request(http, f"{QUESTION} ({tag}, client {k}, request {i}).")
                except BaseException as exc:  # reported after the level
                    errors.append(exc)
                    return
                with lock:
                    samples.append(s)

    wall = run_threads(client, clients)
    if errors:
        raise RuntimeError(f"{contender.name}: {errors[0]!r}")
    return samples, wall


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def bench_model(model: Path, args, workdir: Path) -> list[dict]:
    contenders = [Ours("sequential", model, workdir, args.max_tokens),
                  Ours("batched", model, workdir, args.max_tokens),
                  LlamaServer(args.llama_server, model, workdir, args.max_tokens)]
    rows = []
    try:
        for c in contenders:
            c.wait_ready()
            with httpx.Client(timeout=600) as http:
                c.request(http, QUESTION + " (warm-up).")
        for clients in args.clients:
            requests = max(args.min_requests, args.requests_per_client * clients)
            for c in contenders:  # in turn, so machine noise hits each of them
                time.sleep(PAUSE_S)  # let the previous one's spinning threads settle
                samples, wall = run_level(c, clients, requests, f"{c.name} c={clients}")
                tokens = sum(s.tokens for s in samples)
                rows.append({
                    "model": model.name, "contender": c.name, "clients": clients,
                    "requests": len(samples), "tokens_per_request": tokens / len(samples),
                    "tok_s": tokens / wall,
                    "ttft_p50": pct([s.ttft for s in samples], 0.5),
                    "ttft_p95": pct([s.ttft for s in samples], 0.95),
                    "lat_p50": pct([s.wall for s in samples], 0.5),
                    "lat_p95": pct([s.wall for s in samples], 0.95),
                })
                r = rows[-1]
                print(f"  {model.name} c={clients} {c.name}: {r['tok_s']:.1f} tok/s, "
                      f"TTFT p50 {r['ttft_p50'] * 1000:.0f} ms", file=sys.stderr, flush=True)
    finally:
        for c in contenders:
            c.stop()
    return rows


def table(rows: list[dict], args, load: float) -> str:
    lines = [
        f"Concurrent clients, <= {args.max_tokens} tokens per answer (greedy), {THREADS} "
        f"threads, {SLOTS} slots x {N_CTX_PER_SLOT} tokens, 1-minute load average at start "
        f"{load:.2f}.", "",
        "| model | contender | clients | requests | tok/req | agg tok/s | TTFT p50 ms | "
        "TTFT p95 ms | latency p50 s | latency p95 s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['contender']} | {r['clients']} | {r['requests']} | "
            f"{r['tokens_per_request']:.0f} | {r['tok_s']:.1f} | {r['ttft_p50'] * 1000:.0f} | "
            f"{r['ttft_p95'] * 1000:.0f} | {r['lat_p50']:.2f} | {r['lat_p95']:.2f} |")
    lines += ["", "| model | batched / llama-server at 1 client (target >= 0.95) | "
              "at 4 clients (>= 0.9) | batched / sequential at 4 clients (>= 2.5) |",
              "|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        def tps(contender: str, clients: int, model=model) -> float:
            found = [r["tok_s"] for r in rows if r["model"] == model and r["clients"] == clients
                     and r["contender"].startswith(contender)]
            return found[0] if found else float("nan")

        lines.append(
            f"| {model} | {tps('ours, batched', 1) / tps('llama-server', 1):.2f} | "
            f"{tps('ours, batched', 4) / tps('llama-server', 4):.2f} | "
            f"{tps('ours, batched', 4) / tps('ours, sequential', 4):.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 2, 4, 8])
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--min-requests", type=int, default=12)
    parser.add_argument("--llama-server", type=Path,
                        help="the binary (default: build or reuse it with build-llama-server)")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    parser.add_argument(
        "--threads", type=int, default=THREADS,
        help="llama.cpp threads for every contender (default: all usable cores). On a shared "
        "machine use fewer than the idle cores: llama.cpp's threads wait for each other at "
        "every graph node, and one preempted thread stalls the step (seen here: 100x slower)")
    args = parser.parse_args()
    THREADS = args.threads
    return run(args, bench_model, table)


def run(args, bench_model, table) -> int:
    """The benches' common main: builds or reuses the peer, measures each model (default:
    the tiny Q4_0 model and SmolLM2) with `bench_model`, prints `table`, writes --out."""
    load = os.getloadavg()[0]
    print(f"1-minute load average: {load:.2f} ({THREADS} threads)", file=sys.stderr)
    if args.llama_server is None:
        built = subprocess.run([str(ROOT / "tests/bench/build-llama-server")], check=True,
                               capture_output=True, text=True)
        args.llama_server = Path(built.stdout.strip().splitlines()[-1])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = args.model or [write_tiny_model(work / "tiny.Q4_0.gguf", quant="Q4_0"),
                                bundled_model_path()]
        rows = [row for m in models for row in bench_model(m, args, work)]
    text = table(rows, args, load)
    print("\n" + text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
