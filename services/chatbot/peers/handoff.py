"""A draining replica hands its conversations' KV cells to the replicas that own them next.

A rollout, a scale-down or a node drain would otherwise throw away every conversation's
KV: its next turn, on another replica, evaluates the whole history again. On drain (after
the answers in flight are done, before the engine closes) the replica exports each
conversation's cells (idle slots and host RAM, tagged with the conversation's affinity
key) and POSTs each to the replica the hash ring without itself names as the
conversation's owner: where the conversation's next turn goes. The receiver keeps them in
its host-RAM KV cache (its budget, least recently used first; nothing on disk) and the next
turn restores them (`chatbot_kv_turns_total{kv="handed_over"}`).

The same transfer runs when a replica joins (a rollout's new pod, a scale-up): every
replica hands the joiner the cells of the conversations the joiner now owns, so that a
rollout that replaces pods one by one (maxSurge 0: the drained pod's conversations go to the
pod still running, then on to the new one) leaves each conversation's cells at its owner.

Never across models or settings: every transfer carries the sender's fingerprint (model
file sha256, llama.cpp build, KV-relevant settings); a receiver with another refuses it.
The receiver also checks the state has exactly the size a state of that many tokens has
there, and the engine checks the cells' positions after restoring them.

Served on a port of its own (`kv_handoff_port`) on the pod's address, which only the
persona's headless peers Service names and its NetworkPolicy opens to the persona's own
pods: the public route never reaches it. Bodies are bounded by the largest state the
receiver takes.

Wire format of `POST /kv/<persona>`: MAGIC, a 4-byte big-endian header length, the JSON
header {fingerprint, key, tokens}, then the state's bytes.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import struct

import httpx
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from chatbot.core.affinity import HashRing
from chatbot.llm.batched_engine import BatchedEngine, SavedKv
from chatbot.peers.discovery import Peers

log = logging.getLogger(__name__)

MAGIC = b"CBKV1\n"
# The JSON header: the fingerprint and key (bounded) and up to n_ctx tokens as decimals.
HEADER_BYTES_PER_TOKEN = 12
HEADER_OVERHEAD = 1024
MAX_KEY = 256
# Transfers in flight at once from a draining replica.
CONCURRENCY = 4
SENT_REMEMBERED = 10_000

RESULTS = ("sent", "refused", "failed", "received", "refused_mismatch", "refused_invalid")


class Refused(ValueError):
    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result


def encode(fingerprint: str, saved: SavedKv) -> bytes:
    header = json.dumps({"fingerprint": fingerprint, "key": saved.key,
                         "tokens": saved.tokens}, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(header)) + header + saved.state


def decode(body: bytes, fingerprint: str) -> SavedKv:
    """The transfer in `body`, or `Refused`: refused_invalid (not this format),
    refused_mismatch (made by another model file or other KV settings)."""
    if not body.startswith(MAGIC) or len(body) < len(MAGIC) + 4:
        raise Refused("refused_invalid", "not a KV transfer")
    (n,) = struct.unpack(">I", body[len(MAGIC):len(MAGIC) + 4])
    start = len(MAGIC) + 4
    if n > len(body) - start:
        raise Refused("refused_invalid", "the header is longer than the body")
    try:
        header = json.loads(body[start:start + n])
        theirs, key, tokens = header["fingerprint"], header["key"], header["tokens"]
    except (ValueError, KeyError, TypeError) as exc:
        raise Refused("refused_invalid", f"bad header: {exc}") from None
    if not (isinstance(key, str) and 0 < len(key) <= MAX_KEY and isinstance(tokens, list)
            and all(type(t) is int for t in tokens)):
        raise Refused("refused_invalid", "bad header: key or tokens")
    if theirs != fingerprint:
        raise Refused("refused_mismatch", "made by another model file or other KV settings")
    return SavedKv(key, tokens, body[start + n:])


class HandoffMetrics:
    """`chatbot_kv_transfers_total{persona, result}` and `chatbot_kv_transfer_bytes_total
    {persona, direction}`."""

    def __init__(self, persona: str, registry: CollectorRegistry) -> None:
        self.persona = persona
        self.transfers = Counter(
            "chatbot_kv_transfers",
            "Conversations' KV cells handed between replicas: sent (to the next owner, on "
            "drain), refused (by it), failed (unreachable, timed out); received (kept in host "
            "RAM here), refused_mismatch (another model file or KV settings), "
            "refused_invalid (not a state of the right size, bad tokens, too large)",
            ["persona", "result"], registry=registry)
        self.bytes = Counter(
            "chatbot_kv_transfer_bytes", "Bytes of KV state handed between replicas",
            ["persona", "direction"], registry=registry)
        for result in RESULTS:
            self.transfers.labels(persona, result)
        for direction in ("sent", "received"):
            self.bytes.labels(persona, direction)

    def count(self, result: str, size: int = 0) -> None:
        self.transfers.labels(self.persona, result).inc()
        if size and result in ("sent", "received"):
            self.bytes.labels(self.persona, result).inc(size)


class KvHandoff:
    """One persona's side of the handoff: what it sends on drain, what it takes."""

    def __init__(self, persona: str, engine: BatchedEngine, peers: Peers, port: int,
                 metrics: HandoffMetrics, timeout_s: float) -> None:
        self.persona, self.engine, self.peers, self.port = persona, engine, peers, port
        self.metrics, self.timeout_s = metrics, timeout_s
        # (peer, conversation) -> the tokens last handed there: a replica whose readiness
        # flaps (it leaves the DNS name and joins again) is not sent the same cells again.
        self._sent: dict[tuple[str, str], int] = {}

    def peer_url(self, member: str) -> str:
        return str(httpx.URL(member).copy_with(port=self.port, path=f"/kv/{self.persona}"))

    async def drain(self) -> None:
        """Hands every conversation's cells to its next owner (the ring without this
        replica), within `timeout_s`."""
        ring, skip = self.peers.ring, {self.peers.self_url} | self.peers.down()
        if not set(ring.members) - skip:  # a DNS answer that missed the others: ask again
            ring = await self.peers.resolve_now()
        await self._bounded(lambda key: ring.owner(key, skip=skip), "drain")

    async def watch(self) -> None:
        """Runs while the replica serves: when replicas join, hands each the cells of the
        conversations it now owns."""
        known = set(self.peers.ring.members)
        while True:
            ring = await self.peers.current()
            joined = set(ring.members) - known - {self.peers.self_url}
            known = set(ring.members)
            if joined:
                await self._bounded(_new_owner(ring, self.peers.down(), joined), "join")
            await asyncio.sleep(self.peers.refresh_s)

    async def _bounded(self, owner_of, why: str) -> None:
        if not self.engine.status().ready:
            return
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._send_all(owner_of, why)
        except TimeoutError:
            log.warning("KV handoff (%s): not done within %g s; the rest is evaluated again",
                        why, self.timeout_s)
        except Exception:
            log.exception("KV handoff (%s) failed", why)

    async def _send_all(self, owner_of, why: str) -> None:
        fingerprint = await self.engine.kv_fingerprint()
        saved = await self.engine.export_kv(lambda key: owner_of(key) is not None)
        targets = [(s, owner_of(s.key)) for s in saved]
        targets = [(s, owner) for s, owner in targets if owner is not None
                   and self._sent.get((owner, s.key)) != len(s.tokens)]
        if not targets:
            if why == "drain":
                log.info("KV handoff (drain): nothing to hand over (%d conversations here; "
                         "replicas: %s)", len(saved), ", ".join(self.peers.ring.members))
            return
        log.info("KV handoff (%s): %d conversations to %d peers", why, len(targets),
                 len({o for _, o in targets}))
        gate = asyncio.Semaphore(CONCURRENCY)
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:

            async def send(saved: SavedKv, owner: str) -> str:
                async with gate:
                    body = encode(fingerprint, saved)
                    try:
                        response = await client.post(
                            self.peer_url(owner), content=body,
                            headers={"content-type": "application/octet-stream"})
                    except httpx.HTTPError as exc:
                        log.warning("KV handoff to %s failed: %s", owner, exc)
                        self.metrics.count("failed")
                        return "failed"
                    if response.status_code == 200:
                        self.metrics.count("sent", len(saved.state))
                        if len(self._sent) >= SENT_REMEMBERED:
                            self._sent.clear()
                        self._sent[(owner, saved.key)] = len(saved.tokens)
                        return "sent"
                    else:
                        log.warning("KV handoff: %s refused (%d): %s", owner,
                                    response.status_code, response.text[:200])
                        self.metrics.count("refused")
                        return "refused"

            results = await asyncio.gather(*(send(s, o) for s, o in targets))
            log.info("KV handoff (%s): %s", why, dict(collections.Counter(results)))

    def max_body(self) -> int:
        engine = self.engine
        return (engine.max_state_bytes() + len(MAGIC) + 4 + HEADER_OVERHEAD
                + HEADER_BYTES_PER_TOKEN * engine.context_tokens())

    async def receive(self, request: Request) -> JSONResponse:
        if not self.engine.status().ready or not self.engine.state_size(1):
            return JSONResponse({"detail": "the model is not loaded"}, status_code=503)
        limit = self.max_body()
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return self._refuse("refused_invalid", f"body over {limit} bytes", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return self._refuse("refused_invalid", f"body over {limit} bytes", 413)
            chunks.append(chunk)
        try:
            saved = decode(b"".join(chunks), await self.engine.kv_fingerprint())
        except Refused as exc:
            return self._refuse(exc.result, str(exc),
                                409 if exc.result == "refused_mismatch" else 422)
        if not await self.engine.import_kv(saved):
            return self._refuse("refused_invalid", "not a state of its tokens' size here, "
                                "or over the host-RAM KV budget", 422)
        self.metrics.count("received", len(saved.state))
        return JSONResponse({"result": "received", "tokens": len(saved.tokens)})

    def _refuse(self, result: str, reason: str, status: int) -> JSONResponse:
        self.metrics.count(result)
        return JSONResponse({"result": result, "detail": reason}, status_code=status)


def _new_owner(ring: HashRing, down: set[str], joined: set[str]):
    """key -> its owner when that is one of the replicas that `joined`, else None."""

    def owner(key: str) -> str | None:
        member = ring.owner(key, skip=down)
        return member if member in joined else None

    return owner


def handoff_app(handoffs: dict[str, KvHandoff]) -> Starlette:
    """The peer port's app: `POST /kv/<persona>` only."""

    async def receive(request: Request) -> JSONResponse:
        handoff = handoffs.get(request.path_params["persona"])
        if handoff is None:
            return JSONResponse({"detail": "no such persona here"}, status_code=404)
        return await handoff.receive(request)

    return Starlette(routes=[Route("/kv/{persona}", receive, methods=["POST"])])
