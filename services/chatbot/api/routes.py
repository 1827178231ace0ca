"""Thin routers: validate, map the body to a persona turn for the chat use case, shape the
HTTP answer."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from chatbot.api.deps import Runtime, require_json
from chatbot.api.disconnect import unless_disconnected
from chatbot.api.methods import not_a_literal_path
from chatbot.api.responses import HEALTHZ, METRICS, PERFORMANCE, READYZ, answer_responses
from chatbot.core.chat import ChatResult, ChatService
from chatbot.core.performance import ENGINE_COUNTERS, performance_report
from chatbot.domain.conversation import CharacterTurn, OfficeTurn, PersonaTurn
from chatbot.domain.personas import GPT_MODELS
from chatbot.domain.schemas import CharacterRequest, OfficeRequest

_CHAT = dict(response_model=None, responses=answer_responses(),
             dependencies=[Depends(require_json)])
_GPT_CHAT = {**_CHAT, "responses": answer_responses(gpt=True),
             "dependencies": [Depends(not_a_literal_path), Depends(require_json)]}
# The GPT model names, as the schema's enum; any other name is still the seed's 400
# "Invalid model name." (the route takes any name, so that this answer stays the seed's).
GptSet = Annotated[str, Path(description="the OpenAI model to answer with",
                             json_schema_extra={"enum": list(GPT_MODELS)})]

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
    if not r.history_kept:
        headers["X-History-Kept"] = "false"
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
             **_GPT_CHAT)
async def office_gpt(gpt_set: GptSet, body: OfficeRequest, request: Request, rt: Runtime):
    return await _answer(request, rt, rt.gpt_service(gpt_set), _office_turn(body))


@character.post("/Llama", summary="Reply in character with the local Llama model", **_CHAT)
async def character_llama(body: CharacterRequest, request: Request, rt: Runtime):
    return await _answer(request, rt, rt.service, _character_turn(body))


@character.post("/{gpt_set}", summary="Reply in character with OpenAI (gpt4.1, gpt4.1_mini)",
                **_GPT_CHAT)
async def character_gpt(gpt_set: GptSet, body: CharacterRequest, request: Request, rt: Runtime):
    return await _answer(request, rt, rt.gpt_service(gpt_set), _character_turn(body))


@common.get("/performance", summary="Measured performance of this service",
            response_model=None, responses=PERFORMANCE)
async def performance(rt: Runtime) -> dict:
    return performance_report(rt.service)


@common.get("/healthz", summary="Liveness: the process answers", response_model=None,
            responses=HEALTHZ)
async def healthz() -> dict:
    return {"status": "ok"}


@common.get("/readyz", summary="Readiness: the model is loaded (reports GPU offload and "
                               "whether the history store is degraded)",
             response_model=None, responses=READYZ)
async def readyz(rt: Runtime) -> JSONResponse:
    engine = rt.service.engine.status()
    facts = {k: v for k, v in engine.facts.items()
             if k not in ("generated_tokens", "generating", *ENGINE_COUNTERS)}
    body = {
        "status": "ready" if engine.ready else "not ready",
        "persona": rt.persona.value, "model": engine.model, "detail": engine.detail,
        "engine": facts, "history": rt.service.store.status(),
    }
    if rt.api_keys is not None:  # the keys in force, and whether budgets are shared
        body["api_keys"] = rt.api_keys.status()
    return JSONResponse(body, status_code=200 if engine.ready else 503)


@common.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
            responses=METRICS)
async def metrics(rt: Runtime) -> PlainTextResponse:
    return PlainTextResponse(generate_latest(rt.metrics.registry),
                             media_type=CONTENT_TYPE_LATEST)
