"""Thin routers: validate, map the body to a persona turn for the chat use case, shape the
HTTP answer."""

from __future__ import annotations

import socket

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chatbot.api.deps import Runtime, require_json
from chatbot.api.disconnect import unless_disconnected
from chatbot.core.chat import ChatResult, ChatService
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


_ENGINE_COUNTERS = (
    "sequences_active", "sequences_waiting", "peak_sequences", "prompt_tokens_evaluated",
    "prompt_tokens_reused", "prompt_tokens_copied", "decode_steps", "peak_batch_tokens",
    "prompt_tokens_restored", "kv_host_bytes", "kv_host_sequences", "kv_host_saves",
    "kv_host_saved_tokens", "kv_host_restores", "kv_host_evictions",
)


def performance_report(service: ChatService) -> dict:
    """What /performance answers for a persona: its counters since start, its queue and
    its engine's live counters. `instance` (host/counters id) names whose counters these
    are: it changes when another process answers (a restart, a rollout, another replica)."""
    engine = service.engine.status()
    return {
        "instance": f"{socket.gethostname()}/{service.stats.counters_id}",
        **service.stats.snapshot(),
        "active_connections": service.admission.active,
        "max_concurrent": service.admission.max_concurrent,
        "queue_size": service.admission.waiting,
        "max_queue": service.admission.max_queue,
        "fallbacks": service.fallbacks,
        "model": engine.model,
        "engine_generated_tokens": engine.facts.get("generated_tokens", 0),
        "engine_generating": engine.facts.get("generating", False),
        # The batched engine's live counters (shared by the personas on its model file).
        **{f"engine_{k}": engine.facts[k] for k in _ENGINE_COUNTERS if k in engine.facts},
    }


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
             if k not in ("generated_tokens", "generating", *_ENGINE_COUNTERS)}
    body = {
        "status": "ready" if engine.ready else "not ready",
        "persona": rt.persona.value, "model": engine.model, "detail": engine.detail,
        "engine": facts, "history": rt.service.store.status(),
    }
    if rt.api_keys is not None:  # the keys in force, and whether budgets are shared
        body["api_keys"] = rt.api_keys.status()
    return JSONResponse(body, status_code=200 if engine.ready else 503)


@common.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(rt: Runtime) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(rt.metrics.registry),
                             media_type=CONTENT_TYPE_LATEST)
