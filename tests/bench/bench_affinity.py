#!/usr/bin/env python3
"""Conversations on several replicas: conversation affinity on against off.

R replicas of the character persona (`chatbot serve character`, one history store), C
users at once, each holding a conversation of T turns; turn t of user c goes to replica
(c + t) mod R, as a round-robin route spreads them. With affinity on the replicas forward
each turn to the conversation's owner; off, every turn is served where it lands (the
client sends the hop header). Fresh replicas for each run, so both start cold.

Prints, per replica count and mode: TTFT p50/p95 per turn index (the service's own
`Server-Timing: ttft`), end-to-end p50 per turn, the prompt tokens the replicas evaluated
in all (`/performance` `engine_prompt_tokens_evaluated`), and the follow-up turns by where
their KV cells came from (`chatbot_kv_turns_total`: local, restored, evaluated).

    .venv/bin/python tests/bench/bench_affinity.py --replicas 2,3 --users 8 --turns 6 \\
        [--model PATH] [--threads 1] [--max-tokens 48]

The 1-minute load average is printed at the start and at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from chatbot.peers.forwarding import HOP_HEADER  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.server import ChatbotServer  # noqa: E402

HOP = HOP_HEADER.decode()
CHARACTER = {"character_name": "Mina", "greeting": "Hello!",
             "context": "Mina is a cheerful baker in Busan who loves to talk about bread, "
                        "ovens, flour and the people who come to her shop every morning."}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def kv_turns(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    return {kv: sum(float(v) for v in re.findall(
        rf'^chatbot_kv_turns_total\{{[^}}]*kv="{kv}"[^}}]*\}} (\S+)$', text, re.M))
        for kv in ("new", "local", "restored", "evaluated")}


def run(args, replicas: int, placed: bool, workdir: Path) -> dict:
    ports = [free_port() for _ in range(replicas)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    history = workdir / f"history-{replicas}-{placed}-{uuid.uuid4().hex[:6]}.sqlite3"
    env = {"CHATBOT_AFFINITY_PEERS": json.dumps(urls), "CHATBOT_HISTORY_PATH": str(history),
           "CHATBOT_CHARACTER__GENERATION__MAX_TOKENS": str(args.max_tokens),
           "CHATBOT_CHARACTER__GENERATION__TEMPERATURE": "0",
           "CHATBOT_CHARACTER__MODEL__N_THREADS": str(args.threads),
           "CHATBOT_LOG_LEVEL": "warning"}
    if args.model:
        env["CHATBOT_CHARACTER_MODEL"] = str(args.model)
    servers = [ChatbotServer(workdir, "character", port=port,
                             env={**env, "CHATBOT_AFFINITY_SELF": url})
               for port, url in zip(ports, urls, strict=True)]
    try:
        for server in servers:
            server.wait_until("/readyz", timeout=300)
        ttft: list[list[float]] = [[] for _ in range(args.turns)]
        total: list[list[float]] = [[] for _ in range(args.turns)]
        errors: list[str] = []

        def user(c: int) -> None:
            db_id = str(uuid.uuid4())
            with httpx.Client(timeout=600) as client:
                for t in range(args.turns):
                    body = {**CHARACTER, "db_id": db_id, "user_id": f"bench-{c}",
                            "input_data": f"I am guest {c}. Question {t}: what do you bake "
                                          f"on day {t} of the week, and why that one?"}
                    started = time.perf_counter()
                    r = client.post(urls[(c + t) % replicas] + "/Llama", json=body,
                                    headers={} if placed else {HOP: "bench"})
                    if r.status_code != 200:
                        errors.append(f"{r.status_code} {r.text[:100]}")
                        continue
                    total[t].append(time.perf_counter() - started)
                    timing = re.search(r"ttft;dur=([0-9.]+)", r.headers.get("server-timing", ""))
                    if timing:
                        ttft[t].append(float(timing.group(1)) / 1000)

        threads = [threading.Thread(target=user, args=(c,)) for c in range(args.users)]
        started = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - started
        evaluated = sum(httpx.get(u + "/performance", timeout=10).json()
                        ["engine_prompt_tokens_evaluated"] for u in urls)
        kv: dict[str, float] = {}
        for u in urls:
            for k, v in kv_turns(u).items():
                kv[k] = kv.get(k, 0) + v
        return {"ttft": ttft, "total": total, "evaluated": evaluated, "kv": kv,
                "errors": errors, "wall": wall}
    finally:
        for server in servers:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", default="2,3")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--model", type=Path, default=None, help="default: bundled SmolLM2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    print(f"# bench_affinity {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{args.users} users x {args.turns} turns, max_tokens {args.max_tokens}, "
          f"{args.threads} thread(s) per replica, model {args.model or 'SmolLM2 (bundled)'}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for replicas in [int(r) for r in args.replicas.split(",")]:
            for placed in (False, True):
                result = run(args, replicas, placed, Path(tmp))
                mode = "on " if placed else "off"
                p50 = [f"{percentile(t, .5):.2f}" if t else "-" for t in result["ttft"]]
                p95 = [f"{percentile(t, .95):.2f}" if t else "-" for t in result["ttft"]]
                e2e = [f"{statistics.median(t):.2f}" if t else "-" for t in result["total"]]
                kv = result["kv"]
                print(f"\n{replicas} replicas, affinity {mode}: {result['wall']:.1f}s, "
                      f"prompt tokens evaluated {result['evaluated']}, follow-up turns' KV: "
                      f"local {kv['local']:.0f}, restored {kv['restored']:.0f}, evaluated "
                      f"{kv['evaluated']:.0f}; errors {len(result['errors'])}")
                print(f"  TTFT p50 per turn (s): {' '.join(p50)}")
                print(f"  TTFT p95 per turn (s): {' '.join(p95)}")
                print(f"  answer p50 per turn (s): {' '.join(e2e)}")
                for error in result["errors"][:3]:
                    print(f"  error: {error}")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
