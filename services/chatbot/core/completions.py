"""Caller-supplied messages on a persona's engine (the OpenAI-compatible endpoint).

Same admission queue, deadline and statistics as the persona's chat routes; no persona
prompt, no history, no fallback: the caller owns the conversation. `budget` fits the
caller's messages to the context first: a prompt that leaves no room for an answer is a
`ContextLengthExceededError` (400) before anything is queued or streamed, and `max_tokens`
shrinks to what the context has left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from chatbot.core.chat import ChatService
from chatbot.core.context_fit import fit_prompt
from chatbot.core.ports import Completion
from chatbot.core.stats import Outcome
from chatbot.domain.conversation import ChatMessage
from chatbot.domain.errors import DeadlineExceededError, EngineUnavailableError, QueueFullError
from chatbot.domain.personas import SamplingParams


def _require_ready(service: ChatService) -> None:
    if not service.engine.status().ready:
        raise EngineUnavailableError(
            f"The {service.profile.persona} model is not loaded yet; retry shortly.")


@dataclass(frozen=True)
class Budget:
    params: SamplingParams  # the caller's, max_tokens shrunk to what the context has left
    prompt_tokens: int | None  # None when the engine cannot count


def budget(service: ChatService, messages: list[ChatMessage],
           params: SamplingParams) -> Budget:
    """Counts the prompt with the model's tokenizer; raises ContextLengthExceededError
    when it leaves no room for an answer."""
    _require_ready(service)
    context = service.engine.context_tokens()
    if context is None:
        return Budget(params, None)
    fit = fit_prompt(service.engine.count_prompt_tokens(messages), context, params.max_tokens)
    if fit.max_tokens < params.max_tokens:
        params = params.model_copy(update={"max_tokens": fit.max_tokens})
    return Budget(params, fit.prompt_tokens)


def _deadline_error(service: ChatService) -> DeadlineExceededError:
    return DeadlineExceededError(
        f"No answer within the {service.deadline_s:g} s deadline; the generation was stopped.")


async def complete(
    service: ChatService, messages: list[ChatMessage], params: SamplingParams
) -> Completion:
    started = time.monotonic()
    _require_ready(service)
    try:
        async with asyncio.timeout(service.deadline_s):
            async with service.admission.slot():
                gen_started = time.monotonic()
                completion = await service.engine.complete(messages, params)
    except QueueFullError:
        service.stats.record_rejected()
        raise
    except TimeoutError as exc:
        service.stats.record(Outcome(ok=False, total_s=time.monotonic() - started))
        raise _deadline_error(service) from exc
    except BaseException:
        service.stats.record(Outcome(ok=False, total_s=time.monotonic() - started))
        raise
    finished = time.monotonic()
    service.stats.record(Outcome(True, finished - started, finished - gen_started,
                                 completion.tokens))
    return completion


async def stream(
    service: ChatService, messages: list[ChatMessage], params: SamplingParams
) -> AsyncIterator[str]:
    """Yields "" once admitted (so a full queue raises before any response starts), then
    the generated pieces. The slot is held until the generator finishes or is closed."""
    started = time.monotonic()
    deadline = asyncio.get_running_loop().time() + service.deadline_s
    _require_ready(service)
    ok = False
    tokens = 0
    try:
        async with asyncio.timeout_at(deadline):
            await service.admission.acquire()
    except QueueFullError:
        service.stats.record_rejected()
        raise
    except TimeoutError as exc:
        service.stats.record(Outcome(ok=False, total_s=time.monotonic() - started))
        raise _deadline_error(service) from exc
    gen_started = time.monotonic()
    pieces = service.engine.stream(messages, params)
    try:
        yield ""
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    piece = await anext(pieces)
            except StopAsyncIteration:
                break
            except TimeoutError as exc:
                raise _deadline_error(service) from exc
            tokens += 1
            yield piece
        ok = True
    finally:
        await pieces.aclose()
        service.admission.release()
        finished = time.monotonic()
        service.stats.record(Outcome(ok, finished - started, finished - gen_started, tokens)
                             if ok else Outcome(ok=False, total_s=finished - started))
