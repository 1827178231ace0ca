"""Per-key budgets: requests and tokens per minute, shared by every replica of an installation.

Fixed one-minute windows (`window = floor(unix time / 60)`): a key is refused once its
requests in the window passed `requestsPerMinute`, or its tokens (prompt + generated,
charged when an answer ends) reached `tokensPerMinute`; `Retry-After` is the rest of the
window, after which both counts start again.

The counts live in a `UsageStore` every replica writes to (MongoDB, the installation's
store: stores/usage_mongo.py). While it does not answer (or without one), each replica counts
alone and allows itself its share, `ceil(budget / replicas)` with `replicas` the number the
operator sets (CHATBOT_API_KEYS_REPLICAS), and `status()` (/readyz) says so. It tries the
store again every `retry_store_s`.

Tokens are charged after the answer, so the last answers admitted in a window can take a key
past its token budget by at most what those answers used; requests are counted before.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from chatbot.domain.api_keys import ApiKey
from chatbot.domain.errors import RateLimitedError

log = logging.getLogger(__name__)

WINDOW_S = 60


@dataclass
class Usage:
    requests: int = 0
    tokens: int = 0


class UsageStore(Protocol):
    """Counts of one key in one window, added to by every replica."""

    async def add(self, name: str, window: int, requests: int, tokens: int) -> None: ...

    async def totals(self, name: str, window: int) -> Usage: ...

    async def close(self) -> None: ...


class Budgets:
    def __init__(self, store: UsageStore | None, replicas: int = 1, *,
                 timeout_s: float = 2.0, retry_store_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.replicas = max(1, replicas)
        self.timeout_s = timeout_s
        self.retry_store_s = retry_store_s
        self.clock = clock
        self._local: dict[tuple[str, int], Usage] = {}
        self._store_down_until = 0.0
        self._store_error = ""

    # -- what /readyz says ------------------------------------------------------------
    @property
    def shared(self) -> bool:
        """Whether the counts of all replicas are in use (else this replica's share)."""
        return self.store is not None and not self._store_error

    def status(self) -> dict:
        if self.store is None:
            return {"state": "local", "replicas": self.replicas,
                    "detail": "no shared store (MONGO_URL): this replica enforces "
                              f"1/{self.replicas} of each budget"}
        if self._store_error:
            return {"state": "local share", "replicas": self.replicas,
                    "detail": f"the budget store is unavailable ({self._store_error}); this "
                              f"replica enforces 1/{self.replicas} of each budget alone"}
        return {"state": "shared", "replicas": self.replicas, "detail": ""}

    # -- the window -----------------------------------------------------------------
    def window(self, now: float) -> int:
        return int(now // WINDOW_S)

    def retry_after_s(self, now: float) -> int:
        return max(1, math.ceil((self.window(now) + 1) * WINDOW_S - now))

    def _local_usage(self, name: str, window: int) -> Usage:
        usage = self._local.get((name, window))
        if usage is None:
            self._local = {k: v for k, v in self._local.items() if k[1] >= window - 1}
            usage = self._local[(name, window)] = Usage()
        return usage

    # -- admitting and charging -----------------------------------------------------
    async def admit(self, key: ApiKey) -> None:
        """Counts one request of `key`; raises RateLimitedError when the key is over either
        budget in this window."""
        now = self.clock()
        window = self.window(now)
        local = self._local_usage(key.name, window)
        local.requests += 1
        used, share = local, self.replicas
        totals = await self._stored(self._add_and_total, key.name, window, 1, 0)
        if totals is not None:
            used, share = totals, 1
        rpm = math.ceil(key.requests_per_minute / share)
        tpm = math.ceil(key.tokens_per_minute / share)
        if used.requests > rpm:
            raise RateLimitedError(key.name, "requestsPerMinute", rpm, used.requests - 1,
                                   self.retry_after_s(now))
        if used.tokens >= tpm:
            raise RateLimitedError(key.name, "tokensPerMinute", tpm, used.tokens,
                                   self.retry_after_s(now))

    async def charge(self, name: str, tokens: int) -> None:
        """Adds an answer's tokens to `name`'s window."""
        if tokens <= 0:
            return
        window = self.window(self.clock())
        self._local_usage(name, window).tokens += tokens
        await self._stored(self._add, name, window, 0, tokens)

    def usage(self, name: str) -> Usage:
        """This replica's own counts of `name` in the current window."""
        return self._local.get((name, self.window(self.clock())), Usage())

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()

    async def _add(self, name: str, window: int, requests: int, tokens: int) -> bool:
        await self.store.add(name, window, requests, tokens)
        return True

    async def _add_and_total(self, name: str, window: int, requests: int,
                             tokens: int) -> Usage:
        await self.store.add(name, window, requests, tokens)
        return await self.store.totals(name, window)

    async def _stored(self, operation, *args):
        """Runs a store operation unless the store is known to be away; None when it is
        (or the operation failed, which marks it away for `retry_store_s`)."""
        if self.store is None or time.monotonic() < self._store_down_until:
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await operation(*args)
        except Exception as exc:  # any failure of the store: count locally instead
            self._store_down_until = time.monotonic() + self.retry_store_s
            error = f"{type(exc).__name__}: {exc}"[:200]
            if not self._store_error:
                log.warning("API key budgets: the store is unavailable, each replica enforces "
                            "1/%d of every budget until it is back: %s", self.replicas, error)
            self._store_error = error
            return None
        if self._store_error:
            log.info("API key budgets: the store is back; budgets are shared again")
            self._store_error = ""
        return result
