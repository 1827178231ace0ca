"""Every error is JSON with a `detail` a person can act on; never error text inside a 200."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

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


def _reason(error: dict) -> str:
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "is not a field of this request"
    if error["type"] == "missing":
        return "is required"
    return message[0].lower() + message[1:] if message else error["type"]


async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": _field(tuple(e["loc"])), "reason": _reason(e), "type": e["type"]}
              for e in exc.errors()]
    if any(e["type"] == "json_invalid" for e in errors):
        return JSONResponse(
            {"detail": "body: the request body is not valid JSON", "code": "MALFORMED_JSON",
             "errors": errors}, status_code=400)
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
    return JSONResponse(
        {"detail": detail, "code": "VALIDATION_ERROR", "errors": errors}, status_code=422)


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
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


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
