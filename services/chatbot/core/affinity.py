"""Which replica owns a conversation: consistent hashing with bounded load (CHWBL).

Several replicas of a persona each keep their own KV cells (slots, host RAM). A
conversation's next turn evaluates only its new part where its earlier turns were
evaluated, so every replica must send a conversation to the same one (its owner), and when
replicas come and go only the conversations of the ones that went (or a share for the one
that came) may move. A hash ring does both: each replica holds many points on a 64-bit
ring, a conversation belongs to the first point after its own hash. Bounded load (Mirrokni
et al., as KubeAI's prefix router and HAProxy use it) keeps a popular owner from taking
more than `load_factor` times the mean: a replica at its bound is passed over for the next
one on the ring, the same for every turn of that conversation while it stays there.

Pure: no I/O, no clock; the HTTP side (peers, forwarding) is `chatbot.peers`.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar

DEFAULT_POINTS = 100  # points per replica: shares within a few percent of each other
DEFAULT_LOAD_FACTOR = 1.25  # KubeAI's and HAProxy's default

# The affinity key of the conversation the current request belongs to (set by the placing
# middleware for the request's task, else by the chat use case for a persona conversation):
# the engine tags the KV cells it keeps with it, so a draining replica knows which peer owns
# each conversation next, and a conversation's next-turn prefill finds its own slot.
CONVERSATION: ContextVar[str | None] = ContextVar("chatbot_conversation", default=None)


def db_conversation_key(db_id: str) -> str:
    """A persona conversation's affinity key: its `db_id` (the placing middleware's, and
    the use case's where no middleware placed the request)."""
    return f"db:{db_id}"


# A request a peer forwarded here. When that peer lets it go before the answer (its own
# shutdown cut it, or its client left), the peer answers its client for it (a 503 it counts
# itself), so this replica does not count it as a failure of its own as well.
FORWARDED: ContextVar[bool] = ContextVar("chatbot_forwarded", default=False)


def ring_hash(text: str) -> int:
    """A stable 64-bit hash (the same in every process, unlike hash())."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


class HashRing:
    """The replicas of one persona on a hash ring (immutable: a new set is a new ring)."""

    def __init__(self, members: Iterable[str], points: int = DEFAULT_POINTS) -> None:
        self.members = tuple(sorted(set(members)))
        ring = sorted((ring_hash(f"{member}#{i}"), member)
                      for member in self.members for i in range(points))
        self._hashes = [h for h, _ in ring]
        self._owners = [m for _, m in ring]

    def __len__(self) -> int:
        return len(self.members)

    def walk(self, key: str) -> Iterator[str]:
        """Every member once, in ring order from the key's point: the owner first."""
        if not self.members:
            return
        start = bisect.bisect_right(self._hashes, ring_hash(key))
        seen: set[str] = set()
        n = len(self._owners)
        for i in range(n):
            member = self._owners[(start + i) % n]
            if member not in seen:
                seen.add(member)
                yield member
                if len(seen) == len(self.members):
                    return

    def owner(self, key: str, load: Mapping[str, int] | None = None,
              load_factor: float | None = DEFAULT_LOAD_FACTOR,
              skip: Iterable[str] = (), min_bound: int = 1) -> str | None:
        """The member that serves `key`: the first on the ring from the key's point that
        is not in `skip` and whose load (requests in flight) is under the bound
        ceil(load_factor * (total + 1) / members), or `min_bound` if larger (what a replica
        runs at once is never too much); None without members. Without `load` (or
        `load_factor`), plain consistent hashing."""
        skipped = set(skip)
        candidates = [m for m in self.walk(key) if m not in skipped]
        if not candidates:
            return None
        if not load or load_factor is None:
            return candidates[0]
        bound = max(min_bound, bounded_load(sum(load.get(m, 0) for m in self.members),
                                            len(self.members), load_factor))
        for member in candidates:
            if load.get(member, 0) < bound:
                return member
        return min(candidates, key=lambda m: load.get(m, 0))  # only with members skipped


def bounded_load(total: int, members: int, load_factor: float) -> int:
    """The most requests one member may hold with one more placed: at least 1, and at least
    the mean rounded up, so some member is always under it."""
    if load_factor < 1:
        raise ValueError("load_factor must be at least 1")
    return max(1, math.ceil(load_factor * (total + 1) / max(members, 1)))
