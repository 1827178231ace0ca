"""Each turn of a conversation goes to the replica that holds its KV cells.

An ASGI middleware around a persona's app. A chat request (`POST .../Llama` with a
`db_id`, `POST .../v1/chat/completions` by its `X-Session-ID` header or its first
messages) is placed on the hash ring of the persona's replicas (`chatbot.core.affinity`,
bounded by the requests in flight this replica knows of); when the owner is another
replica the request is sent there as it came (body, headers, the same X-Request-ID) with
the hop header `X-Chatbot-Forwarded-By`, and the owner's answer is streamed back as it is
produced (SSE included). A forwarded request is never forwarded again. When the owner
refuses the connection, or answers 429 (queue full) or 503 (not ready, shutting down), the
turn is served here instead: an answer is never lost to placement.

Works behind any route (Ingress, HTTPRoute): the route picks any replica, the replicas fix
it. Each answer of a chat route says which replica produced it (`X-Served-By`: the pod's
name, or a hash of its address).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Callable

import httpx
from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chatbot.core.affinity import CONVERSATION, FORWARDED, db_conversation_key
from chatbot.core.shutdown import Shutdown
from chatbot.domain.errors import ServiceShuttingDownError
from chatbot.peers.discovery import Peers

log = logging.getLogger(__name__)

HOP_HEADER = b"x-chatbot-forwarded-by"
SESSION_HEADER = b"x-session-id"
SERVED_BY_HEADER = b"x-served-by"
# Not passed on either way (RFC 9110 7.6.1), plus what httpx sets itself.
_HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
               b"transfer-encoding", b"upgrade", b"host", b"content-length"}
# The owner's answers that send the turn back here.
_FALL_BACK = {429: "saturated", 503: "unavailable"}
# An idle connection to a peer is closed well before the peer's server closes it (uvicorn:
# 5 s), so that a turn is never sent on a connection the peer is just closing.
KEEPALIVE_S = 2.0


def conversation_key(path: str, headers: dict[bytes, bytes], body: bytes) -> str | None:
    """What places a request: the persona routes' `db_id`; /v1's `X-Session-ID`, else its
    messages up to the first user message (the same for every turn of a conversation).
    None: no conversation (served here)."""
    if path.endswith("/v1/chat/completions"):
        session = headers.get(SESSION_HEADER, b"").decode("latin-1").strip()
        if session:
            return "session:" + session[:200]
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if path.endswith("/Llama"):
        db_id = data.get("db_id")
        return db_conversation_key(db_id) if isinstance(db_id, str) and db_id else None
    messages = data.get("messages")
    if not isinstance(messages, list):
        return None
    head = []
    for message in messages:
        head.append(message)
        if isinstance(message, dict) and message.get("role") == "user":
            break
    digest = hashlib.sha256(json.dumps(head, sort_keys=True, ensure_ascii=False)
                            .encode("utf-8")).hexdigest()
    return f"v1:{digest}"


def is_chat(scope: Scope) -> bool:
    path = scope["path"]
    return scope["method"] == "POST" and (
        path.endswith("/Llama") or path.endswith("/v1/chat/completions"))


class PlacementMetrics:
    """`chatbot_affinity_requests_total{persona, placement}`: how this replica placed each
    chat request."""

    PLACEMENTS = ("local", "forwarded", "received", "fallback_unreachable",
                  "fallback_saturated", "fallback_unavailable", "fallback_failed",
                  "fallback_shutdown", "no_key")

    def __init__(self, persona: str, registry: CollectorRegistry) -> None:
        self.counter = Counter(
            "chatbot_affinity_requests",
            "Chat requests by placement: local (this replica owns the conversation), "
            "forwarded (sent to the owner), received (forwarded here by a peer), fallback_* "
            "(the owner was unreachable, saturated, unavailable or failed: served here), "
            "no_key (no conversation to place)",
            ["persona", "placement"], registry=registry)
        self.passed = Counter(
            "chatbot_affinity_passed_over",
            "Chat requests whose owner was passed over for the next replica on the ring "
            "(bounded load: it held too many requests in flight)",
            ["persona"], registry=registry)
        self.persona = persona
        for placement in self.PLACEMENTS:
            self.counter.labels(persona, placement)
        self.passed.labels(persona)

    def count(self, placement: str) -> None:
        self.counter.labels(self.persona, placement).inc()

    def passed_over(self) -> None:
        self.passed.labels(self.persona).inc()


class AffinityMiddleware:
    def __init__(self, app: ASGIApp, peers: Peers, metrics: PlacementMetrics, *,
                 served_by: str, min_bound: int, load_factor: float,
                 connect_timeout_s: float, read_timeout_s: float,
                 shutdown: Shutdown | None = None,
                 client_left: Callable[[], None] = lambda: None) -> None:
        self.app = app
        # This replica's shutdown: an owner's answer not begun when its grace period ends
        # is given up, and the client gets this replica's own 503 (retried), not a 500.
        self.shutdown = shutdown
        # A client that left during a relayed answer is counted here: the owner does not
        # count a request its forwarder let go (chatbot.core.affinity.FORWARDED).
        self.client_left = client_left
        self.peers, self.metrics = peers, metrics
        self.served_by = served_by.encode("latin-1")
        self.min_bound, self.load_factor = min_bound, load_factor
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s,
                                      pool=connect_timeout_s)
        self._client: httpx.AsyncClient | None = None
        self.in_flight: dict[str, int] = {}  # member -> chat requests this replica placed there

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_chat(scope):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        body, disconnected = await _read_body(receive)
        if disconnected:
            return
        replay = _replaying(body, receive)
        key = conversation_key(scope["path"], headers, body)
        # The engine tags the KV cells this request leaves with its conversation's key.
        token = CONVERSATION.set(key)
        forwarded = FORWARDED.set(HOP_HEADER in headers)
        try:
            await self._place(scope, headers, key, body, replay, receive, send)
        finally:
            FORWARDED.reset(forwarded)
            CONVERSATION.reset(token)

    async def _place(self, scope: Scope, headers: dict[bytes, bytes], key: str | None,
                     body: bytes, replay: Receive, receive: Receive, send: Send) -> None:
        if HOP_HEADER in headers:
            self.metrics.count("received")
            return await self._local(scope, replay, send)
        ring = await self.peers.current()
        if len(ring) < 2:
            return await self._local(scope, replay, send)
        down = self.peers.down()
        owner = None if key is None else ring.owner(
            key, self.in_flight, self.load_factor, skip=down, min_bound=self.min_bound)
        if owner is not None and owner != ring.owner(key, skip=down):
            self.metrics.passed_over()
            log.info("bounded load: %s passed over for %s (in flight: %s)",
                     ring.owner(key, skip=down), owner, self.in_flight)
        if owner is None or owner == self.peers.self_url:
            self.metrics.count("local" if key is not None else "no_key")
            return await self._local(scope, replay, send)
        placed = await self._forward(owner, scope, body, receive, send)
        if placed != "forwarded":
            self.metrics.count(f"fallback_{placed}")
            return await self._local(scope, replay, send)
        self.metrics.count("forwarded")

    async def _local(self, scope: Scope, receive: Receive, send: Send) -> None:
        me = self.peers.self_url

        done = self._placed(me)

        async def with_served_by(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []),
                                      (SERVED_BY_HEADER, self.served_by)]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                done()  # answered: what runs after (metrics) holds nothing of the engine
            await send(message)

        try:
            await self.app(scope, receive, with_served_by)
        finally:
            done()

    def _placed(self, member: str):
        """Counts a request in flight at `member`; returns what ends it (once), called as
        its answer's last byte goes out, so that a client's next turn never finds its own
        previous one still counted."""
        self.in_flight[member] = self.in_flight.get(member, 0) + 1
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                self.in_flight[member] -= 1

        return end

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_S))
        return self._client

    async def _forward(self, owner: str, scope: Scope, body: bytes, receive: Receive,
                       send: Send) -> str:
        """Sends the request to `owner` and streams its answer back: "forwarded", or why
        not (nothing was sent to the client then)."""
        path = scope.get("raw_path") or scope["path"].encode()
        url = owner + path.decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"]
                   if k not in _HOP_BY_HOP and k != b"x-request-id"]
        request_id = scope.get("state", {}).get("request_id")
        if request_id:  # the id this replica gave the request (the caller's, if sane)
            headers.append((b"x-request-id", request_id.encode("latin-1")))
        headers.append((HOP_HEADER, self.served_by))
        client = self._http()
        done = self._placed(owner)
        try:
            try:
                response = await self._owners_answer(
                    client, client.build_request(scope["method"], url, headers=headers,
                                                 content=body))
            except ServiceShuttingDownError:
                log.warning("peer %s had not answered when this replica's shutdown grace "
                            "ended: the client is told to retry", owner)
                return "shutdown"
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                log.warning("peer %s unreachable (%s): serving here", owner, exc)
                self.peers.mark_down(owner)
                return "unreachable"
            except httpx.HTTPError as exc:  # it took the request and failed before answering
                log.warning("peer %s failed before answering (%s): serving here", owner, exc)
                return "failed"
            try:
                if response.status_code in _FALL_BACK:
                    return _FALL_BACK[response.status_code]
                await self._relay(response, receive, send, done)
                return "forwarded"
            finally:
                await response.aclose()
        finally:
            done()

    async def _owners_answer(self, client: httpx.AsyncClient,
                             request: httpx.Request) -> httpx.Response:
        """The owner's answer as far as its headers, unless this replica's shutdown grace
        period ends first (ServiceShuttingDownError)."""
        if self.shutdown is None:
            return await client.send(request, stream=True)
        async with self.shutdown.cutoff(admitted=True):
            return await client.send(request, stream=True)

    async def _relay(self, response: httpx.Response, receive: Receive, send: Send,
                     done) -> None:
        """The owner's answer to the client as it comes; a client that leaves closes the
        request to the owner too (which stops its generation)."""
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP
                   or k.lower() == b"content-length"]
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": headers})

        # A body of known length: its last chunk is held back and goes out as the end of
        # the answer, once this request no longer counts; a stream (SSE) goes out as it
        # comes, each event at once.
        sized = "content-length" in response.headers

        async def pump() -> None:
            last = b""
            async for chunk in response.aiter_raw():
                if not sized:
                    await send({"type": "http.response.body", "body": chunk,
                                "more_body": True})
                    continue
                if last:
                    await send({"type": "http.response.body", "body": last,
                                "more_body": True})
                last = chunk
            done()
            await send({"type": "http.response.body", "body": last, "more_body": False})

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        relay, left = asyncio.ensure_future(pump()), asyncio.ensure_future(gone())
        try:
            await asyncio.wait({relay, left}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
            if not relay.done():
                relay.cancel()
                self.client_left()
            with contextlib.suppress(asyncio.CancelledError):
                await relay  # a peer lost mid-answer raises: the client's connection drops


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", True
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks), False


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the app the body already read, then the client's own."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
