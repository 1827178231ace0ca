"""Scripted engines: test doubles of the `ChatEngine` port (chatbot.core.ports).

They answer what the test scripts, fail where it says, count tokens by a stated rule and
can be made slow or not ready, so the chat use case and the API layer can be checked in
process, in milliseconds; the real llama.cpp engines are exercised by tests/unit's engine
tests and by tests/service's real `chatbot serve` processes.
"""

from __future__ import annotations

import asyncio
import threading

from chatbot.core.ports import Completion, EngineStatus


class ScriptedEngine:
    model_name = "scripted"

    def __init__(self, stream_pieces, stream_error=None, complete_text="", *,
                 ready: bool = True, piece_delay_s: float = 0.0,
                 hold: threading.Event | None = None):
        self.stream_pieces, self.stream_error = stream_pieces, stream_error
        self.complete_text = complete_text
        self.complete_calls = []
        self.ready = ready
        self.piece_delay_s = piece_delay_s  # a slow model: each piece takes this long
        self.hold = hold  # a stuck model: streams nothing until the test sets it
        self.streams = 0  # generations started
        self.prefills = []  # the messages of each prefill_next_turn
        self.loads = self.closes = 0

    def status(self):
        return EngineStatus(self.ready, self.model_name,
                            "scripted" if self.ready else "waiting to load (scripted)")

    def context_tokens(self):
        return None  # like a remote API: no fitting

    async def stream(self, messages, params):
        self.streams += 1
        while self.hold is not None and not self.hold.is_set():
            await asyncio.sleep(0.005)
        for piece in self.stream_pieces:
            if self.piece_delay_s:
                await asyncio.sleep(self.piece_delay_s)
            yield piece
        if self.stream_error:
            raise self.stream_error

    async def complete(self, messages, params):
        self.complete_calls.append(params)
        return Completion(self.complete_text, len(self.complete_text.split()))

    async def prefill_next_turn(self, messages):
        self.prefills.append(messages)

    # The lifecycle the composition root drives (create_app's lifespan).
    async def load(self):
        self.loads += 1

    async def close(self):
        self.closes += 1


class CountingEngine(ScriptedEngine):
    """Counts one token per character of each message plus 4 for its header (a stand-in
    for the model's tokenizer, which tests/service uses for real) and records each call."""

    def __init__(self, context, stream_pieces=("A fitting answer, long enough.",),
                 complete_text="", **kwargs):
        super().__init__(list(stream_pieces), None, complete_text, **kwargs)
        self.context = context
        self.streamed = []

    def context_tokens(self):
        return self.context

    def count_prompt_tokens(self, messages):
        return sum(len(m.content) + 4 for m in messages)

    async def stream(self, messages, params):
        self.streamed.append((messages, params))
        async for piece in super().stream(messages, params):
            yield piece


class RecordingSearch:
    """A `WebSearch` double: answers every query with `results` and records the queries."""

    def __init__(self, results=()):
        self.results = list(results)
        self.queries = []

    async def search(self, query):
        self.queries.append(query)
        return list(self.results)
