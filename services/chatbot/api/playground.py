"""The chat playground: a page per persona (`GET /`, i.e. `/office/` and `/character/`) for
talking to the persona from a browser, and the streamed turn it calls
(`POST /playground/chat`).

The turn is the persona's own chat (`POST /Llama`: same body, same queue, persona prompt,
history replayed and written back), streamed as Server-Sent Events so that the page shows
the answer token by token. Its errors before the first token are the route's own statuses
(422, 429 + Retry-After, 503, 400 context_length_exceeded), as JSON; the response starts
only with the first token, so its `Server-Timing` header carries the time to it. The
page is one self-contained file (no external script, style or font); a per-response nonce
in its Content-Security-Policy lets only its own script and style run, and only against
this service.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, StreamingResponse

from chatbot.api.auth import record_tokens
from chatbot.api.deps import Runtime, require_json
from chatbot.api.disconnect import unless_disconnected
from chatbot.api.errors import ClientDisconnectedError
from chatbot.core.chat import ChatResult
from chatbot.domain.conversation import CharacterTurn, OfficeTurn, PersonaTurn
from chatbot.domain.errors import ChatError
from chatbot.domain.personas import Persona
from chatbot.domain.schemas import INPUT_MAX_CHARS, CharacterRequest, OfficeRequest

PAGE = files("chatbot.api").joinpath("static/playground.html").read_text(encoding="utf-8")
_DONE = object()  # the queue's end marker: the turn finished (answered or failed)


def _csp(nonce: str) -> str:
    return ("default-src 'none'; "
            f"script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'self'")


def page(persona: Persona) -> tuple[str, str]:
    """The persona's page and the nonce its script and style carry."""
    nonce = secrets.token_urlsafe(16)
    html = (PAGE.replace("__NONCE__", nonce).replace("__PERSONA__", persona.value)
            .replace("__INPUT_MAX_CHARS__", str(INPUT_MAX_CHARS)))
    return html, nonce


def _event(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _summary(result: ChatResult) -> dict:
    """The finished answer as the page shows it (the stored text, which replaces what was
    streamed when the fallback answered) and its timing."""
    per_s = result.tokens / result.generation_s if result.generation_s > 0 else None
    return {
        "done": True, "text": result.text, "tokens": result.tokens,
        "queue_ms": round(result.queue_s * 1000, 1),
        "ttft_ms": None if result.ttft_s is None else round(result.ttft_s * 1000, 1),
        "generation_ms": round(result.generation_s * 1000, 1),
        "total_ms": round(result.total_s * 1000, 1),
        "tokens_per_s": None if per_s is None else round(per_s, 1),
        "fallback_used": result.fallback_used, "history_turns": result.history_turns,
        "history_dropped": result.history_dropped,
    }


async def _first(queue: asyncio.Queue) -> object:
    return await queue.get()


async def stream_turn(request: Request, rt: Runtime, turn: PersonaTurn) -> StreamingResponse:
    """Starts the persona's turn and answers once its first piece is there (errors before
    it raise, so the app's handlers answer them with their status)."""
    started = time.monotonic()
    pieces: asyncio.Queue = asyncio.Queue()
    task = asyncio.ensure_future(rt.service.chat(turn, on_piece=pieces.put_nowait))
    task.add_done_callback(lambda _: pieces.put_nowait(_DONE))
    try:
        first = await unless_disconnected(request, _first(pieces))
    except (ClientDisconnectedError, asyncio.CancelledError):
        task.cancel()
        raise
    if first is _DONE:
        task.result()  # raises the turn's error; else it answered without streaming
    ttft_ms = (time.monotonic() - started) * 1000

    async def events() -> AsyncIterator[str]:
        item = first
        try:
            while item is not _DONE:
                yield _event({"delta": item})
                item = await pieces.get()
            result = task.result()
            rt.metrics.observe_answer(result)
            record_tokens(request, (result.prompt_tokens or 0) + result.tokens)  # key budget
            yield _event(_summary(result))
        except ChatError as exc:  # after the status line: the error is the last event
            yield _event({"error": {"message": exc.message, "type": type(exc).__name__}})
        finally:
            if not task.done():  # the client went away: stop generating
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    return StreamingResponse(events(), media_type="text/event-stream", headers={
        "Cache-Control": "no-cache", "X-Accel-Buffering": "no",
        "Server-Timing": f'ttft;dur={ttft_ms:.1f};desc="first token"'})


def playground(persona: Persona, guard: Sequence[Any] = ()) -> APIRouter:
    """The playground's routes for `persona` (kept out of the OpenAPI document: the page is
    for people, its streaming turn is the page's own protocol). `guard`: the API-key
    dependencies of the chat routes, for the turn; the page itself stays open, and asks."""
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    async def playground_page() -> HTMLResponse:
        html, nonce = page(persona)
        return HTMLResponse(html, headers={"Content-Security-Policy": _csp(nonce),
                                           "Cache-Control": "no-store",
                                           "X-Content-Type-Options": "nosniff"})

    chat = dict(dependencies=[*guard, Depends(require_json)])
    if persona is Persona.OFFICE:
        @router.post("/playground/chat", **chat)
        async def office_turn(body: OfficeRequest, request: Request, rt: Runtime):
            return await stream_turn(request, rt, OfficeTurn(
                body.input_data, body.google_access, body.conversation))
    else:
        @router.post("/playground/chat", **chat)
        async def character_turn(body: CharacterRequest, request: Request, rt: Runtime):
            return await stream_turn(request, rt, CharacterTurn(
                body.input_data, body.character_name, body.greeting, body.context,
                body.conversation))

    return router
