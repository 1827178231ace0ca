"""Pure ASGI middleware (no BaseHTTPMiddleware: it breaks disconnect detection)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Gives every request an id (the caller's `X-Request-ID` if sane) and echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


def body_too_large(max_bytes: int) -> dict:
    return {"detail": f"body: the request body is larger than {max_bytes} bytes",
            "code": "BODY_TOO_LARGE"}


# A refused body is still read (and dropped) up to this much, so that a proxy still
# uploading it gets the 413; closing on it makes the proxy's write fail, and its client
# then sees a 502. Anything larger is cut off.
DRAIN_MAX_BYTES = 1 << 20
DRAIN_TIMEOUT_S = 5.0


async def _drain(receive: Receive, read: int) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            while read <= DRAIN_MAX_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    return
                read += len(message.get("body", b""))


class BodyLimitMiddleware:
    """Answers 413 (JSON) for bodies over `max_bytes`, by Content-Length or while streaming.

    A streamed body that passes the limit is answered at once; the app then sees the
    client as gone and whatever it tries to send is dropped. Either way the rest of the
    body is read first (up to DRAIN_MAX_BYTES), for proxies in front.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            if int(declared) <= DRAIN_MAX_BYTES:
                await _drain(receive, 0)
            return await self._reject(send)

        seen = 0
        started = rejected = False

        async def counting_receive() -> Message:
            nonlocal seen, rejected
            if rejected:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not started:
                    rejected = True
                    if message.get("more_body"):
                        await _drain(receive, seen)
                    await self._reject(send)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counting_receive, tracking_send)

    async def _reject(self, send: Send) -> None:
        body = json.dumps(body_too_large(self.max_bytes)).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        ]})
        await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Observes the latency and status of every request a persona app answers."""

    def __init__(self, app: ASGIApp, observe) -> None:
        self.app = app
        self.observe = observe  # (method, route, status, seconds) -> None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.observe(scope["method"], route, status, time.perf_counter() - started)
