"""Thin routers: validate, map the body to a persona turn for the chat use case, shape the
HTTP answer."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chatbot.api.deps import Runtime, require_json
from chatbot.api.disconnect import unless_disconnected
from chatbot.core.chat import ChatResult, ChatService
from chatbot.core.performance import ENGINE_COUNTERS, performance_report
from chatbot.domain.conversation import CharacterTurn, OfficeTurn, PersonaTurn
from chatbot.domain.schemas import CharacterRequest, OfficeRequest

_ERRORS = {
    code: {"description": text, "content": {"application/json": {}}}
    for code, text in {
        400: "Unknown GPT model name, malformed JSON, or the prompt cannot fit the context "
             "even without history (code context_length_exceeded)", 413: "Body too large",
        415: "Body is not JSON", 422: "A field is invalid (the error names it)",
        429: "Queue full; see Retry-After",
        503: "Model not loaded / OpenAI not configured (OPENAI_API_KEY) / the service is "
             "shutting down (code SHUTTING_DOWN; see Retry-After)",
        504: "Generation deadline passed (GPT routes: OpenAI timed out)",
        502: "GPT routes: OpenAI answered an error (its status is named)",
        500: "Generation failed",
    }.items()
}
_CHAT = dict(response_model=str, responses=_ERRORS, dependencies=[Depends(require_json)])

office = APIRouter(tags=["office"])
character = APIRouter(tags=["character"])
common = APIRouter(tags=["operations"])


async def _answer(request: Request, rt: Runtime, service: ChatService,
                  turn: PersonaTurn) -> JSONResponse:
    """Run the chat, stopping it if the client disconnects first."""
    result = await unless_disconnected(request, service.chat(turn))
    rt.metrics.observe_answer(result)
    return JSONResponse(result.text, headers=_headers(result))


def _headers(r: ChatResult) -> dict[str, str]:
    timings = [f"queue;dur={r.queue_s * 1000:.1f}"]
    if r.ttft_s is not None:
        timings.append(f"ttft;dur={r.ttft_s * 1000:.1f}")
    timings += [f"gen;dur={r.generation_s * 1000:.1f}", f"total;dur={r.total_s * 1000:.1f}"]
    if r.fallback_used:
        timings.append('fallback;desc="non-streaming fallback"')
    headers = {
        "Server-Timing": ", ".join(timings),
        "X-Generated-Tokens": str(r.tokens),
        "X-History-Turns": str(r.history_turns),
        "X-History-Turns-Dropped": str(r.history_dropped),
    }
    if r.prompt_tokens is not None:
        headers["X-Prompt-Tokens"] = str(r.prompt_tokens)
    return headers


def _office_turn(body: OfficeRequest) -> OfficeTurn:
    return OfficeTurn(body.input_data, body.google_access, body.conversation)


def _character_turn(body: CharacterRequest) -> CharacterTurn:
    return CharacterTurn(body.input_data, body.character_name, body.greeting, body.context,
                         body.conversation)


# One function per route, alike: FastAPI reads each route's body model (OfficeRequest,
# CharacterRequest) and summary for the OpenAPI schema from its own signature.
@office.post("/Llama", summary="Answer a work question with the local Llama model", **_CHAT)
async def office_llama(body: OfficeRequest, request: Request, rt: Runtime):
    return await _answer(request, rt, rt.service, _office_turn(body))


@office.post("/{gpt_set}", summary="Answer a work question with OpenAI (gpt4.1, gpt4.1_mini)",
             **_CHAT)
async def office_gpt(gpt_set: str, body: OfficeRequest, request: Request, rt: Runtime):
    return await _answer(request, rt, rt.gpt_service(gpt_set), _office_turn(body))


@character.post("/Llama", summary="Reply in character with the local Llama model", **_CHAT)
async def character_llama(body: CharacterRequest, request: Request, rt: Runtime):
    return await _answer(request, rt, rt.service, _character_turn(body))


@character.post("/{gpt_set}", summary="Reply in character with OpenAI (gpt4.1, gpt4.1_mini)",
                **_CHAT)
async def character_gpt(gpt_set: str, body: CharacterRequest, request: Request, rt: Runtime):
    return await _answer(request, rt, rt.gpt_service(gpt_set), _character_turn(body))


@common.get("/performance", summary="Measured performance of this service")
async def performance(rt: Runtime) -> dict:
    return performance_report(rt.service)


@common.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict:
    return {"status": "ok"}


@common.get("/readyz", summary="Readiness: the model is loaded (reports GPU offload and "
                               "whether the history store is degraded)")
async def readyz(rt: Runtime) -> JSONResponse:
    engine = rt.service.engine.status()
    facts = {k: v for k, v in engine.facts.items()
             if k not in ("generated_tokens", "generating", *ENGINE_COUNTERS)}
    body = {
        "status": "ready" if engine.ready else "not ready",
        "persona": rt.persona.value, "model": engine.model, "detail": engine.detail,
        "engine": facts, "history": rt.service.store.status(),
    }
    return JSONResponse(body, status_code=200 if engine.ready else 503)


@common.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(rt: Runtime) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(rt.metrics.registry),
                             media_type=CONTENT_TYPE_LATEST)
