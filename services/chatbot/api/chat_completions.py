"""`POST /v1/chat/completions`: the persona's local model behind OpenAI's chat API.

Non-streaming answers a `chat.completion` object; `stream: true` answers Server-Sent Events
of `chat.completion.chunk` objects ending with `data: [DONE]`. Requests wait in the same
admission queue as the persona's chat routes (429 + Retry-After when it is full). A prompt
that leaves the context no room for an answer is a 400 `context_length_exceeded`, before
any stream starts.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from chatbot.api.auth import record_tokens
from chatbot.api.deps import Runtime, require_json
from chatbot.api.disconnect import unless_disconnected
from chatbot.api.responses import completion_responses
from chatbot.domain.chat_completions import ChatCompletionRequest
from chatbot.domain.conversation import ChatMessage
from chatbot.domain.errors import ChatError

router = APIRouter(tags=["OpenAI-compatible"])


def _messages(body: ChatCompletionRequest) -> list[ChatMessage]:
    return [ChatMessage(m.chat_role, m.text) for m in body.messages]


def _usage(prompt_tokens: int | None, completion_tokens: int) -> dict:
    prompt = prompt_tokens or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}


def _finish_reason(tokens: int, max_tokens: int) -> str:
    return "length" if tokens >= max_tokens else "stop"


@router.post(
    "/v1/chat/completions", dependencies=[Depends(require_json)],
    summary="OpenAI-compatible chat completions on this persona's local model",
    response_model=None, responses=completion_responses(),
)
async def chat_completions(body: ChatCompletionRequest, request: Request, rt: Runtime):
    completions = rt.completions
    messages = _messages(body)
    # Counted before anything is queued: a prompt that cannot fit is a 400, never a stream.
    fitted = await asyncio.to_thread(completions.budget, messages,
                                     body.sampling(completions.defaults))
    params = fitted.params
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = completions.engine.model_name
    if body.stream:
        pieces = completions.stream(messages, params)
        await anext(pieces)  # admitted: a full queue has raised 429 before the response starts
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _sse(pieces, completion_id, created, model, params.max_tokens, include_usage,
                      fitted.prompt_tokens, lambda n: record_tokens(request, n))
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    result = await unless_disconnected(request, completions.complete(messages, params))
    return JSONResponse({
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "logprobs": None,
                     "finish_reason": _finish_reason(result.tokens, params.max_tokens)}],
        "usage": _usage(result.prompt_tokens or fitted.prompt_tokens, result.tokens),
    }, headers={"X-Generated-Tokens": str(result.tokens),
                "X-Prompt-Tokens": str(result.prompt_tokens or fitted.prompt_tokens or 0)})


async def _sse(pieces: AsyncIterator[str], completion_id: str, created: int, model: str,
               max_tokens: int, include_usage: bool, prompt_tokens: int | None,
               tokens_used: Callable[[int], None] = lambda n: None) -> AsyncIterator[str]:
    def event(delta: dict | None, finish: str | None = None, usage: dict | None = None) -> str:
        chunk = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                 "model": model,
                 "choices": [] if delta is None else
                 [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    tokens = 0
    try:
        yield event({"role": "assistant", "content": ""})
        async for piece in pieces:
            tokens += 1
            yield event({"content": piece})
        yield event({}, _finish_reason(tokens, max_tokens))
        if include_usage:
            yield event(None, usage=_usage(prompt_tokens, tokens))
    except ChatError as exc:  # the status line is sent; report the error the way OpenAI does
        error = {"message": exc.message, "type": type(exc).__name__}
        yield f"data: {json.dumps({'error': error}, ensure_ascii=False)}\n\n"
    finally:
        await pieces.aclose()
        tokens_used((prompt_tokens or 0) + tokens)  # charged to the caller's API key
    yield "data: [DONE]\n\n"
