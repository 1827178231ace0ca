"""Every error is JSON with a `detail` a person can act on; never error text inside a 200."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from chatbot.api.methods import allow_header
from chatbot.domain.errors import (
    ContextLengthExceededError,
    DeadlineExceededError,
    EngineUnavailableError,
    GenerationFailedError,
    InvalidModelNameError,
    QueueFullError,
    ServiceShuttingDownError,
    UpstreamError,
    UpstreamTimeoutError,
)

log = logging.getLogger(__name__)


class ClientDisconnectedError(Exception):
    """The caller went away before the answer was ready; its generation was stopped."""


def _field(loc: tuple) -> str:
    parts = [str(p) for p in loc[1:]] if loc and loc[0] == "body" else [str(p) for p in loc]
    return ".".join(parts) or "body"


def _reason(error: dict, unsupported: str) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return unsupported
    if error["type"] == "missing":
        return "is required"
    return message[0].lower() + message[1:] if message else error["type"]


# An unknown field: the seed's routes name it as not theirs; /v1/chat/completions, whose
# clients know OpenAI's fields, says that this server does not honour it.
_NOT_A_FIELD = "is not a field of this request"
_NOT_HONOURED = "is not supported by this server"


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    route = getattr(request.scope.get("route"), "path", "")
    unsupported = _NOT_HONOURED if route.startswith("/v1/") else _NOT_A_FIELD
    errors = [{"field": _field(tuple(e["loc"])), "reason": _reason(e, unsupported),
               "type": e["type"]}
              for e in exc.errors()]
    if any(e["type"] == "json_invalid" for e in errors):
        return _malformed_json(errors)
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
    return JSONResponse(
        {"detail": detail, "code": "VALIDATION_ERROR", "errors": errors}, status_code=422)


def _malformed_json(errors: list[dict]) -> JSONResponse:
    return JSONResponse(
        {"detail": "body: the request body is not valid JSON", "code": "MALFORMED_JSON",
         "errors": errors}, status_code=400)


# What FastAPI raises for a body it cannot even decode (not UTF-8): the same 400 as any
# other body that is not JSON.
_UNDECODABLE = "There was an error parsing the body"


async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
    q = exc.queue
    return JSONResponse(
        {
            "detail": exc.message, "error": "Too Many Requests", "message": exc.message,
            "code": "QUEUE_OVERLOADED", "retry_after": exc.retry_after_s,
            "queue_info": {"active": q.active, "waiting": q.waiting,
                           "max_concurrent": q.max_concurrent, "max_queue": q.max_queue},
        },
        status_code=429, headers={"Retry-After": str(exc.retry_after_s)},
    )


async def _shutting_down(request: Request, exc: ServiceShuttingDownError) -> JSONResponse:
    return JSONResponse(
        {"detail": exc.message, "code": "SHUTTING_DOWN", "retry_after": exc.retry_after_s},
        status_code=503, headers={"Retry-After": str(exc.retry_after_s)},
    )


def _simple(status: int, code: str):
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        message = getattr(exc, "message", str(exc))
        return JSONResponse({"detail": message, "code": code}, status_code=status)

    return handler


async def _invalid_model(request: Request, exc: InvalidModelNameError) -> JSONResponse:
    return JSONResponse({"detail": "Invalid model name."}, status_code=400)


async def _upstream(request: Request, exc: UpstreamError) -> JSONResponse:
    return JSONResponse({"detail": exc.message, "code": "UPSTREAM_ERROR",
                         "upstream_status": exc.upstream_status}, status_code=502)


async def _context_length(request: Request, exc: ContextLengthExceededError) -> JSONResponse:
    """A client error, as llama-server and OpenAI answer it (the openai SDK reads `code`)."""
    return JSONResponse({"detail": exc.message, "code": "context_length_exceeded",
                         "prompt_tokens": exc.prompt_tokens,
                         "min_answer_tokens": exc.min_answer_tokens,
                         "context_tokens": exc.context_tokens}, status_code=400)


async def _http(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 400 and exc.detail == _UNDECODABLE:
        return _malformed_json([{"field": "body", "reason": "is not UTF-8 encoded JSON",
                                 "type": "json_invalid"}])
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        allow = allow_header(request, headers.get("Allow"))
        if allow:
            headers["Allow"] = allow
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                        headers=headers or None)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "-")
    log.exception("unhandled error in request %s", request_id)
    return JSONResponse(
        {"detail": f"Internal server error (request {request_id}).", "code": "INTERNAL"},
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(QueueFullError, _queue_full)
    app.add_exception_handler(ServiceShuttingDownError, _shutting_down)
    app.add_exception_handler(InvalidModelNameError, _invalid_model)
    app.add_exception_handler(ContextLengthExceededError, _context_length)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(DeadlineExceededError, _simple(504, "DEADLINE_EXCEEDED"))
    app.add_exception_handler(EngineUnavailableError, _simple(503, "ENGINE_UNAVAILABLE"))
    app.add_exception_handler(GenerationFailedError, _simple(500, "GENERATION_FAILED"))
    app.add_exception_handler(UpstreamError, _upstream)
    app.add_exception_handler(UpstreamTimeoutError, _simple(504, "UPSTREAM_TIMEOUT"))
    app.add_exception_handler(ClientDisconnectedError, _simple(499, "CLIENT_DISCONNECTED"))
    app.add_exception_handler(Exception, _unexpected)
