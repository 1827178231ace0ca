#!/usr/bin/env python3
"""One long conversation on a small context: the prompt tokens each turn evaluates.

A user's turns come minutes apart, and the history outgrows the context: this shows what
the engine has to evaluate again on every turn, and what its KV cells let it skip. One
office conversation of T turns through the chat use case itself (`ChatService.chat`: the
persona prompt, the history store, context fitting) on the real batched llama.cpp engine,
one sequence, greedy, a clock that moves `--minutes` per turn (the office prompt's current
time). Per turn it prints the turns replayed and dropped, the prompt's tokens and the
prompt tokens the engine evaluated (the rest came from the conversation's cells); then the
totals.

It imports whichever `chatbot` package the interpreter has, so the same script measures
two versions of the code side by side:

    .venv/bin/python tests/bench/bench_history_prefix.py [--model PATH] [--turns 30]
    /other/checkout/.venv/bin/python tests/bench/bench_history_prefix.py ...

Without --model it writes and uses the tiny random-weight model (its answers are always
exactly --max-tokens long).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from chatbot_dev.tiny_model import write_tiny_model

from chatbot.core import prompts
from chatbot.core.admission_queue import AdmissionQueue
from chatbot.core.chat import ChatService
from chatbot.core.stats import PerformanceStats
from chatbot.domain.conversation import OfficeTurn
from chatbot.domain.personas import OFFICE, SamplingParams
from chatbot.llm.batched_engine import BatchedEngine
from chatbot.settings import ModelSettings
from chatbot.stores.embedded import EmbeddedHistoryStore

QUESTIONS = (
    "프로젝트 킥오프 회의록은 어떻게 쓰나요?",
    "회의에 빠진 사람에게 가장 중요한 부분은 무엇인가요?",
    "나중에 논란이 없도록 후속 조치는 어떻게 기록하나요?",
    "두 참석자가 결정을 다르게 기억하면 어떻게 하나요?",
    "회의록은 회의 후 언제까지 보내야 하나요?",
    "이 모든 것을 짧은 체크리스트로 정리해 주세요.",
)


class Clock:
    """The office prompt's clock, moved by hand (works with any version of the prompts
    module: it replaces the `datetime` that module reads the time from)."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        clock = self

        class _Datetime(datetime):
            @classmethod
            def now(cls, tz=None):
                return clock.now.astimezone(tz) if tz else clock.now

        prompts.datetime = _Datetime


async def conversation(args) -> list[dict]:
    greedy = SamplingParams(max_tokens=args.max_tokens, temperature=0, top_p=1,
                            repeat_penalty=1.08, seed=7)
    profile = OFFICE.model_copy(update={"generation": greedy, "fallback": greedy})
    engine = BatchedEngine(args.model, ModelSettings(n_ctx=args.n_ctx, n_threads=args.threads,
                                                     seed=7), 1)
    await engine.load()
    stats = PerformanceStats()
    service = ChatService(profile, engine, EmbeddedHistoryStore(":memory:"),
                          AdmissionQueue(1, 4, stats.mean_service_s), stats, deadline_s=3600)
    clock = Clock(datetime(2026, 12, 6, 9, 0, 30).astimezone())
    rows = []
    try:
        for t in range(args.turns):
            before = engine.prompt_tokens_evaluated
            result = await service.chat(OfficeTurn(
                f"{QUESTIONS[t % len(QUESTIONS)]} ({t + 1})", conversation=("bench", "talk")))
            rows.append({"turn": t + 1, "replayed": result.history_turns,
                         "dropped": result.history_dropped, "prompt": result.prompt_tokens,
                         "evaluated": engine.prompt_tokens_evaluated - before,
                         "answer": result.tokens})
            clock.now += timedelta(minutes=args.minutes)
    finally:
        await engine.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a GGUF (default: the tiny model)")
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--n-ctx", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--minutes", type=float, default=1.0, help="between a user's turns")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            args.model = write_tiny_model(Path(tmp) / "tiny.gguf", "Q4_0", seed=0)
        rows = asyncio.run(conversation(args))
    print(f"{args.model.name}, n_ctx {args.n_ctx}, answers <= {args.max_tokens} tokens, "
          f"{args.minutes:g} min between turns, {args.turns} turns")
    print("| turn | replayed | dropped | prompt tokens | evaluated |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['turn']} | {r['replayed']} | {r['dropped']} | {r['prompt']} | "
              f"{r['evaluated']} |")
    prompt = sum(r["prompt"] for r in rows)
    evaluated = sum(r["evaluated"] for r in rows)
    most = sum(1 for r in rows[1:] if r["evaluated"] > r["prompt"] / 2)
    print(f"total prompt tokens {prompt}, evaluated {evaluated} ({evaluated / prompt:.0%}); "
          f"turns after the first that evaluated more than half their prompt: {most}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
