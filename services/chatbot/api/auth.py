"""API keys at the door of the chat routes: who may call, which routes, within which budgets.

Only when the service has a keys file (CHATBOT_API_KEYS_FILE; on Kubernetes the operator
mounts the ChatbotModel's `spec.apiKeys.secretName`); without one every route is open, as
it always was. With one, the persona routes (`/Llama`: route `local`; `/gpt4.1`,
`/gpt4.1_mini`: route `gpt`) and `/v1/...` (route `v1`) need a key, sent as
`Authorization: Bearer <key>` (what OpenAI clients send) or `X-API-Key: <key>`:

- 401 + `WWW-Authenticate: Bearer` without a key (code API_KEY_REQUIRED) or with one the
  file does not hold (code API_KEY_INVALID);
- 403 for a route the key may not use (code ROUTE_NOT_ALLOWED);
- 429 + `Retry-After` when the key spent its requests or tokens of the minute (code
  RATE_LIMITED; the queue's own 429 is QUEUE_OVERLOADED).

`/healthz`, `/readyz`, `/metrics` (probes, scrapers), `/performance` and the API
documentation stay open. Tokens (prompt + generated, the `X-Prompt-Tokens` and
`X-Generated-Tokens` of the answer) are charged to the key when its answer ends
(`ApiKeyUsageMiddleware`). Logs and metrics name a key by its `name`, never the key.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import FastAPI, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot.core.budgets import Budgets
from chatbot.core.callers import current_caller
from chatbot.domain.api_keys import find_key
from chatbot.domain.errors import RateLimitedError

if TYPE_CHECKING:  # the composition root gives it (stores/api_keys_file.py)
    from chatbot.stores.api_keys_file import KeysFile

log = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, scheme_name="ApiKeyBearer",
                     description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="ApiKeyHeader",
                       description="X-API-Key: <API key>")

# What the OpenAPI document adds to every guarded operation (see `document_api_keys`).
API_KEY_RESPONSES = {
    401: "No API key (code API_KEY_REQUIRED) or an unknown one (code API_KEY_INVALID); "
         "the answer carries `WWW-Authenticate: Bearer`",
    403: "The API key may not use this route (code ROUTE_NOT_ALLOWED)",
    429: "The API key spent its requests or tokens of this minute (code RATE_LIMITED); "
         "see Retry-After",
}


class ApiKeyRefusedError(Exception):
    """A request refused at the door: no key, an unknown key, a route the key may not use."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class KeyMetrics:
    """Requests, tokens and refusals per key name, in a persona's registry."""

    def __init__(self, persona: str, registry: CollectorRegistry) -> None:
        self.persona = persona
        self.requests = Counter(
            "chatbot_api_key_requests", "Requests admitted with an API key, by key name and "
            "route", ["persona", "key", "route"], registry=registry)
        self.tokens = Counter(
            "chatbot_api_key_tokens", "Tokens (prompt + generated) charged to an API key",
            ["persona", "key"], registry=registry)
        self.refusals = Counter(
            "chatbot_api_key_refusals", "Requests refused at the door, by key name (- "
            "without a known key) and reason", ["persona", "key", "reason"], registry=registry)

    def refused(self, key: str, reason: str) -> None:
        self.refusals.labels(self.persona, key, reason).inc()


def route_kind(request: Request) -> str:
    """Which of a key's routes a request uses: local, gpt, v1, or any (any valid key)."""
    path = getattr(request.scope.get("route"), "path", "")
    if path in ("/Llama", "/playground/chat"):
        return "local"
    if path == "/{gpt_set}":
        return "gpt"
    if path.startswith("/v1/"):
        return "v1"
    return "any"


@dataclass
class KeyGuard:
    """The keys in force and the budgets they spend, shared by the personas of a process."""

    keys: KeysFile
    budgets: Budgets

    def status(self) -> dict:
        return {**self.keys.status(), "budgets": self.budgets.status()}

    async def admit(self, request: Request, presented: str | None, metrics: KeyMetrics) -> None:
        route = route_kind(request)
        if not presented:
            metrics.refused("-", "missing_key")
            raise ApiKeyRefusedError(
                401, "API_KEY_REQUIRED",
                "An API key is required: send Authorization: Bearer <key> or X-API-Key.")
        key = find_key(self.keys.current(), presented)
        if key is None:
            metrics.refused("-", "unknown_key")
            raise ApiKeyRefusedError(401, "API_KEY_INVALID", "The API key is not valid.")
        if route != "any" and route not in key.routes:
            metrics.refused(key.name, "route_not_allowed")
            raise ApiKeyRefusedError(
                403, "ROUTE_NOT_ALLOWED",
                f"API key {key.name!r} may not use the {route} routes (it may use: "
                f"{', '.join(sorted(key.routes))}).")
        try:
            await self.budgets.admit(key)
        except RateLimitedError as exc:
            metrics.refused(key.name, exc.budget)
            raise
        request.state.api_key = key.name
        current_caller.set(key.name)  # the admission queue shares its slots between keys
        metrics.requests.labels(metrics.persona, key.name, route).inc()


async def require_api_key(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> None:
    """The dependency of every guarded route (see the module's docstring)."""
    presented = bearer.credentials if bearer is not None else header
    await request.app.state.api_keys.admit(request, presented, request.app.state.key_metrics)


def record_tokens(request: Request, tokens: int) -> None:
    """For answers whose tokens are not in their headers (a stream): what to charge."""
    request.state.api_key_tokens = tokens


class ApiKeyUsageMiddleware:
    """Charges an answer's tokens to its key: `X-Prompt-Tokens` + `X-Generated-Tokens` of the
    response, or what a stream recorded (`record_tokens`). The charge is stored before the
    answer's last piece is sent, so that the key's next request (on any replica) already sees
    it; an answer that never ends (the client left) is charged when it stops."""

    def __init__(self, app: ASGIApp, guard: KeyGuard, metrics: KeyMetrics) -> None:
        self.app, self.guard, self.metrics = app, guard, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        counted = 0
        charged = False

        async def charge() -> None:
            nonlocal charged
            if charged:
                return
            charged = True
            state = scope.get("state") or {}
            name = state.get("api_key")
            if name is not None:
                tokens = state.get("api_key_tokens", counted)
                if tokens > 0:
                    self.metrics.tokens.labels(self.metrics.persona, name).inc(tokens)
                    await self.guard.budgets.charge(name, tokens)

        async def capture(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start":
                for name, value in message.get("headers", []):
                    if name.lower() in (b"x-prompt-tokens", b"x-generated-tokens"):
                        counted += int(value) if value.isdigit() else 0
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                await charge()  # before the client has the whole answer
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            await charge()


async def _refused(request: Request, exc: ApiKeyRefusedError) -> JSONResponse:
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = ('Bearer error="invalid_token"'
                                       if exc.code == "API_KEY_INVALID" else "Bearer")
    return JSONResponse({"detail": exc.message, "code": exc.code}, status_code=exc.status,
                        headers=headers)


async def _rate_limited(request: Request, exc: RateLimitedError) -> JSONResponse:
    return JSONResponse(
        {"detail": exc.message, "code": "RATE_LIMITED", "retry_after": exc.retry_after_s,
         "budget": {"name": exc.budget, "limit": exc.limit, "used": exc.used,
                    "window_s": 60}},
        status_code=429, headers={"Retry-After": str(exc.retry_after_s)})


def document_api_keys(app: FastAPI) -> None:
    """Adds 401, 403 and 429 RATE_LIMITED to the OpenAPI document of every operation that
    needs a key (those with a security requirement), beside what the routes declare."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                if not isinstance(operation, dict) or not operation.get("security"):
                    continue
                responses = operation.setdefault("responses", {})
                for status, text in API_KEY_RESPONSES.items():
                    entry = responses.setdefault(str(status), {"description": ""})
                    entry["description"] = "; ".join(
                        t for t in (entry.get("description"), text) if t)
                    entry.setdefault("content", {"application/json": {}})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi


def install_api_keys(app: FastAPI, guard: KeyGuard, metrics: KeyMetrics) -> None:
    """What a persona app with keys needs besides the routes' dependency."""
    app.state.api_keys = guard
    app.state.key_metrics = metrics
    app.add_exception_handler(ApiKeyRefusedError, _refused)
    app.add_exception_handler(RateLimitedError, _rate_limited)
    app.add_middleware(ApiKeyUsageMiddleware, guard=guard, metrics=metrics)
    document_api_keys(app)
