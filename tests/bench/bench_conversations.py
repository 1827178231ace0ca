#!/usr/bin/env python3
"""Many conversations with history: our service against llama.cpp's own `llama-server`.

The product's real traffic: U simulated users at once, each holding a conversation of T
turns, and thinking between them: a user reads the answer and types the next question for
a seeded random time (uniform in 0.5-1.5 x `--think-s`, 30 s by default; each user's first
turn starts at a random point of the first such pause), so a conversation's turns cross
minute boundaries and other conversations take its slot meanwhile. The same seed gives
both contenders the very same schedule. With `--turns` above the office persona's replay
limit (8 turns), conversations drop history (a block of turns at a time).

Ours goes through the office persona's `/Llama` route with history on (a `db_id` and
`user_id` per user, so the service replays the earlier turns itself); llama-server gets the
very same rendered messages (the office system prompt, the user's earlier questions and its
own earlier answers, the new question) through `/v1/chat/completions` with `cache_prompt`
on and its default slot-similarity reuse and host-memory prompt cache. Same GGUF, greedy
decoding with the persona's penalties, the same fixed `max_tokens`, same threads, 8 slots of
2048 tokens each and 1 GiB of host RAM for saved KV cells each (llama-server's `-cram`;
bench_batching.py's contenders, whose helpers this reuses). With more users than slots, a
conversation's next turn may find its slot taken by another. Context shift stays off
(llama-server's default; `n_keep` unused): the replayed window always fits a slot.

It prints, per user level and contender: TTFT p50/p95 per turn index, tokens generated
(the servers' `llamacpp:tokens_predicted_total`), the wall time, aggregate tok/s,
prompt tokens evaluated and reused (both servers' `llamacpp:prompt_tokens_total` and
`llamacpp:prompt_tokens_cached_total`; of ours, those restored from host RAM after another
conversation took the slot: `chatbot_engine_prompt_tokens_restored_total`, and those
evaluated while the user read, the next turn's prefill:
`chatbot_engine_prompt_tokens_prefilled_total`, part of the evaluated), and our ratio
to llama-server. The markdown ends with the ratio table: `users | agg tok/s ratio | TTFT
p95 ratio | prompt tokens evaluated ratio | turn-1 / turn-last TTFT p50 ms |
turn-last/turn-1 TTFT p50 | load` (ours over llama-server's; the turn columns ours alone;
the load: the 1-minute load average at the start and end of each contender's level).

    tests/bench/build-llama-server        # once: builds the peer (cached)
    .venv/bin/python tests/bench/bench_conversations.py --model PATH --users 4,8,16 \\
        --turns 12 --think-s 30 --threads N --out FILE.md

The 1-minute load average is printed at the start and at the end (a shared machine's other
work shows in it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.bench import bench_batching as bb  # noqa: E402

QUESTIONS = (
    "How should I write the minutes of a project kickoff meeting?",
    "Which parts of those minutes matter most to the people who missed the meeting?",
    "How do I record the action items so that nobody argues about them later?",
    "What if two attendees remember a decision differently?",
    "How long after the meeting should the minutes go out?",
    "Give me a short checklist for all of this.",
    "How do I keep minutes of a remote meeting?",
    "And for a meeting held in two languages?",
)


def question(turn: int, user: int) -> str:
    return f"{QUESTIONS[turn % len(QUESTIONS)]} (user {user})"


def prompt_counters(url: str) -> tuple[float, float, float | None, float, float | None]:
    """(evaluated, reused, of which restored from host RAM) prompt tokens, tokens generated
    so far, and of the evaluated, those prefilled while users read: llama-server's metric
    names, ours too; restored and prefilled are ours only (None for llama-server).
    Generated tokens come from the servers, not the client: our `/Llama` counts the text
    pieces it relayed, and a stop-string check can join tokens into one."""
    values = {}
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(("llamacpp:prompt_tokens", "llamacpp:tokens_predicted_total",
                            "chatbot_engine_prompt_tokens_restored",
                            "chatbot_engine_prompt_tokens_prefilled")):
            name, value = line.rsplit(" ", 1)
            values[name.split("{")[0]] = float(value)
    return (values.get("llamacpp:prompt_tokens_total", 0.0),
            values.get("llamacpp:prompt_tokens_cached_total", 0.0),
            values.get("chatbot_engine_prompt_tokens_restored_total"),
            values.get("llamacpp:tokens_predicted_total", 0.0),
            values.get("chatbot_engine_prompt_tokens_prefilled_total"))


def ask_streamed(ours, http: httpx.Client, body: dict) -> tuple[bb.Sample, str]:
    """One turn through ours' streamed chat (`POST /playground/chat`: the `/Llama` turn,
    same body, queue, history replayed and written back, as Server-Sent Events): the first
    token timed by the client as llama-server's is, not derived from Server-Timing (which
    on `/Llama` leaves the history write after the answer in the TTFT)."""
    started = time.perf_counter()
    first, summary = 0.0, None
    with http.stream("POST", ours.url + "/playground/chat", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"turn failed: {event['error']}")
            if "delta" in event:
                first = first or time.perf_counter() - started
            elif event.get("done"):
                summary = event
    if summary is None:
        raise RuntimeError("the streamed turn ended without its summary")
    return bb.Sample(time.perf_counter() - started, first, summary["tokens"]), summary["text"]


def think_times(seed: int, user: int, turns: int, think_s: float) -> list[float]:
    """A user's pauses: before its first turn (a random point of a first pause), then after
    each answer (0.5-1.5 x think_s); the same for every contender."""
    rng = random.Random(f"{seed}-{user}")
    return [rng.uniform(0, think_s)] + [rng.uniform(0.5, 1.5) * think_s
                                        for _ in range(turns - 1)]


def run_level(contender, users: int, turns: int, tag: str, think_s: float = 0.0,
              seed: int = 0, streamed: bool = False):
    """Each user's T turns one after the other, with its think times between them, all
    users at once; returns the samples per turn index, the wall time and the requests in
    flight at each arrival (`in_flight_at_arrival`)."""
    per_turn: list[list[bb.Sample]] = [[] for _ in range(turns)]
    spans: list[tuple[float, float]] = []  # each request's (sent, answered)
    errors: list[BaseException] = []
    lock = threading.Lock()
    ours = isinstance(contender, bb.Ours)

    def user(u: int) -> None:
        conversation = {"db_id": str(uuid.uuid4()), "user_id": f"bench-{tag}-{u}"}
        history: list[tuple[str, str]] = []
        # No keep-alive: llama-server's HTTP server drops idle kept-alive connections.
        pauses = think_times(seed, u, turns, think_s)
        with httpx.Client(timeout=600, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            for t in range(turns):
                time.sleep(pauses[t])
                q = question(t, u)
                sent = time.perf_counter()
                try:
                    if ours:
                        ask = ask_streamed if streamed else type(contender).ask
                        sample, answer = ask(contender, http, {"input_data": q, **conversation})
                    else:
                        sample, answer = contender.chat(http, bb.peer_messages(q, history))
                except BaseException as exc:  # reported after the level
                    errors.append(exc)
                    return
                history.append((q, answer))
                with lock:
                    per_turn[t].append(sample)
                    spans.append((sent, time.perf_counter()))

    wall = bb.run_threads(user, users)
    if errors:
        raise RuntimeError(f"{contender.name}: {errors[0]!r}")
    return per_turn, wall, in_flight_at_arrival(spans)


def in_flight_at_arrival(spans: list[tuple[float, float]]) -> float:
    """How many other requests were being answered when a request arrived, on average: the
    users' turns bunch together or spread out depending on how fast the server answered
    the turns before (closed loop), so two servers' TTFTs compare only with this beside
    them."""
    if not spans:
        return 0.0
    return sum(sum(1 for s, e in spans if s < sent < e) for sent, _ in spans) / len(spans)


def bench_model(model: Path, args, workdir: Path) -> list[dict]:
    contenders = [bb.Ours("batched", model, workdir, args.max_tokens)]
    if not args.no_peer:
        contenders.append(bb.LlamaServer(args.llama_server, model, workdir, args.max_tokens))
    rows = []
    try:
        for c in contenders:
            c.wait_ready()
            with httpx.Client(timeout=600) as http:
                c.request(http, bb.QUESTION + " (warm-up).")
        for users in args.users:
            for c in contenders:  # in turn, so machine noise hits each of them
                time.sleep(bb.PAUSE_S)  # let the previous one's spinning threads settle
                before, load_start = prompt_counters(c.url), os.getloadavg()[0]
                per_turn, wall, overlap = run_level(c, users, args.turns, f"u{users}",
                                                    args.think_s, args.seed, args.ours_streamed)
                after, load_end = prompt_counters(c.url), os.getloadavg()[0]
                samples = [s for turn in per_turn for s in turn]
                ttfts = [s.ttft for s in samples]
                rows.append({
                    "model": model.name, "contender": c.name, "users": users,
                    "requests": len(samples), "tokens": round(after[3] - before[3]),
                    "wall": wall, "tok_s": (after[3] - before[3]) / wall,
                    "ttft_p50": bb.pct(ttfts, 0.5), "ttft_p95": bb.pct(ttfts, 0.95),
                    "turn_p50": [bb.pct([s.ttft for s in turn], 0.5) for turn in per_turn],
                    "turn_p95": [bb.pct([s.ttft for s in turn], 0.95) for turn in per_turn],
                    "evaluated": after[0] - before[0], "reused": after[1] - before[1],
                    "restored": None if after[2] is None else after[2] - (before[2] or 0),
                    "prefilled": None if after[4] is None else after[4] - (before[4] or 0),
                    "load": (load_start, load_end), "in_flight": overlap,
                })
                r = rows[-1]
                print(f"  {model.name} users={users} {c.name}: {r['tok_s']:.1f} tok/s, TTFT "
                      f"p95 {r['ttft_p95'] * 1000:.0f} ms, prompt tokens evaluated "
                      f"{r['evaluated']:.0f} (prefilled while users read {prefilled(r)}) / "
                      f"reused {r['reused']:.0f} (restored from RAM {restored(r)}), TTFT p50 "
                      f"turn 1 {ms(r['turn_p50'][0])} ms, turn "
                      f"{args.turns} {ms(r['turn_p50'][-1])} ms, {overlap:.2f} others in flight "
                      f"at arrival, load {load_start:.1f} -> {load_end:.1f}", file=sys.stderr,
                      flush=True)
    finally:
        for c in contenders:
            c.stop()
    return rows


def restored(row: dict) -> str:
    return "-" if row["restored"] is None else f"{row['restored']:.0f}"


def prefilled(row: dict) -> str:
    return "-" if row.get("prefilled") is None else f"{row['prefilled']:.0f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def table(rows: list[dict], args, load: float) -> str:
    turns = args.turns
    lines = [
        f"Conversations of {turns} turns (office persona, history on; ours through "
        f"{'its streamed turn, TTFT timed by the client' if args.ours_streamed else '/Llama'}"
        f"), think time "
        f"{args.think_s:g} s x 0.5-1.5 (seed {args.seed}), <= {args.max_tokens} "
        f"tokens per answer (greedy), {bb.THREADS} threads, {bb.SLOTS} slots x "
        f"{bb.N_CTX_PER_SLOT} tokens, {bb.CACHE_RAM_MIB} MiB of host RAM for KV cells "
        f"each, 1-minute load average at start {load:.2f}, at end "
        f"{os.getloadavg()[0]:.2f}.", "",
        "| model | contender | users | requests | tokens generated | wall s | agg tok/s | "
        "TTFT p50 ms | TTFT p95 ms | others in flight at arrival (mean) | "
        "prompt tokens evaluated | of which prefilled while users read | reused | "
        "of which restored from RAM | "
        + " | ".join(f"turn {t + 1} p50/p95 ms" for t in range(turns)) + " |",
        "|---" * (14 + turns) + "|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['contender']} | {r['users']} | {r['requests']} | "
            f"{r['tokens']} | {r['wall']:.0f} | {r['tok_s']:.1f} | {ms(r['ttft_p50'])} | "
            f"{ms(r['ttft_p95'])} | {r['in_flight']:.2f} | "
            f"{r['evaluated']:.0f} | {prefilled(r)} | {r['reused']:.0f} | {restored(r)} | "
            + " | ".join(f"{ms(a)}/{ms(b)}" for a, b in zip(r["turn_p50"], r["turn_p95"],
                                                          strict=True)) + " |")
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += ["", f"Ratios, {model} (ours / llama-server; the turn columns ours alone; "
                  "the load: 1-minute average at the level's start and end, ours / peer):", "",
                  "| users | agg tok/s ratio | TTFT p95 ratio | prompt tokens evaluated ratio | "
                  "turn-1 / turn-last TTFT p50 ms | turn-last/turn-1 TTFT p50 | load |",
                  "|---|---|---|---|---|---|---|"]
        for users in args.users:
            found = {r["contender"].split(",")[0].split(" ")[0]: r for r in rows
                     if r["model"] == model and r["users"] == users}
            ours, peer = found.get("ours"), found.get("llama-server")
            if ours is None:
                continue
            ratios = ("- | - | -" if peer is None else
                      f"{ours['tok_s'] / peer['tok_s']:.2f} | "
                      f"{ours['ttft_p95'] / peer['ttft_p95']:.2f} | "
                      f"{ours['evaluated'] / max(peer['evaluated'], 1):.2f}")
            load = " / ".join(f"{a:.1f}-{b:.1f}" for a, b in
                              (r["load"] for r in (ours, peer) if r is not None))
            lines.append(f"| {users} | {ratios} | {ms(ours['turn_p50'][0])} / "
                         f"{ms(ours['turn_p50'][-1])} | "
                         f"{ours['turn_p50'][-1] / ours['turn_p50'][0]:.2f} | {load} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append",
                        help="a GGUF (repeat for several; default: the tiny model and SmolLM2)")
    parser.add_argument("--users", type=lambda s: [int(x) for x in s.split(",")],
                        default=[4, 8, 16])
    parser.add_argument("--turns", type=int, default=12)
    parser.add_argument("--think-s", type=float, default=30.0,
                        help="mean seconds a user thinks between turns (0: back to back)")
    parser.add_argument("--seed", type=int, default=7, help="of the think times")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--llama-server", type=Path,
                        help="the binary (default: build or reuse it with build-llama-server)")
    parser.add_argument("--out", type=Path, help="also write the tables here (markdown)")
    parser.add_argument("--ours-streamed", action="store_true",
                        help="ours through its streamed turn (POST /playground/chat), its "
                        "TTFT timed by the client like llama-server's (default: /Llama, TTFT "
                        "= latency - Server-Timing's time after the first token)")
    parser.add_argument("--no-peer", action="store_true",
                        help="ours alone, without llama-server (no ratios)")
    parser.add_argument("--threads", type=int, default=bb.THREADS,
                        help="llama.cpp threads for both (on a shared machine: fewer than "
                        "the idle cores; see bench_batching.py)")
    args = parser.parse_args()
    if args.turns < 1 or any(u < 1 for u in args.users):
        parser.error("--turns and every --users level must be at least 1")
    if args.think_s < 0:
        parser.error("--think-s cannot be negative")
    bb.THREADS = args.threads
    if args.no_peer:
        args.llama_server = Path("/nonexistent")  # never built nor started
    return bb.run(args, bench_model, table)

if __name__ == "__main__":
    sys.exit(main())
