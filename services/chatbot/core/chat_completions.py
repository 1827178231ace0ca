"""Chat completions: caller-supplied messages on a persona's engine (the OpenAI-compatible
`POST /v1/chat/completions`).

Same request gate (admission queue, deadline, statistics) as the persona's chat; no persona
prompt, no history, no fallback: the caller owns the conversation. `budget` fits the
caller's messages to the context first: a prompt that leaves no room for an answer is a
`ContextLengthExceededError` (400) before anything is queued or streamed, and `max_tokens`
shrinks to what the context has left.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from chatbot.core.context_fit import fit_prompt
from chatbot.core.ports import ChatEngine, Completion
from chatbot.core.request_gate import RequestGate
from chatbot.domain.conversation import ChatMessage
from chatbot.domain.personas import SamplingParams


@dataclass(frozen=True)
class Budget:
    params: SamplingParams  # the caller's, max_tokens shrunk to what the context has left
    prompt_tokens: int | None  # None when the engine cannot count


class ChatCompletions:
    def __init__(self, engine: ChatEngine, gate: RequestGate, defaults: SamplingParams) -> None:
        self.engine = engine
        self.gate = gate
        self.defaults = defaults  # the persona's sampling; a request overrides fields of it

    def budget(self, messages: list[ChatMessage], params: SamplingParams) -> Budget:
        """Counts the prompt with the model's tokenizer; raises ContextLengthExceededError
        when it leaves no room for an answer."""
        self.gate.require_ready()
        context = self.engine.context_tokens()
        if context is None:
            return Budget(params, None)
        fit = fit_prompt(self.engine.count_prompt_tokens(messages), context, params.max_tokens)
        if fit.max_tokens < params.max_tokens:
            params = params.model_copy(update={"max_tokens": fit.max_tokens})
        return Budget(params, fit.prompt_tokens)

    async def complete(self, messages: list[ChatMessage], params: SamplingParams) -> Completion:
        async with self.gate.admitted() as ticket:
            gen_started = time.monotonic()
            completion = await self.engine.complete(messages, params)
        ticket.succeeded(time.monotonic() - gen_started, completion.tokens)
        return completion

    async def stream(self, messages: list[ChatMessage],
                     params: SamplingParams) -> AsyncIterator[str]:
        """Yields "" once admitted (so a full queue raises before any response starts), then
        the generated pieces. The slot is held until the generator finishes or is closed."""
        tokens = 0
        async with self.gate.admitted(spans_tasks=True) as ticket:
            gen_started = time.monotonic()
            pieces = self.engine.stream(messages, params)
            try:
                yield ""
                while True:
                    async with ticket.bounded():
                        piece = await anext(pieces, None)
                    if piece is None:
                        break
                    tokens += 1
                    yield piece
            finally:
                await pieces.aclose()
        ticket.succeeded(time.monotonic() - gen_started, tokens)
