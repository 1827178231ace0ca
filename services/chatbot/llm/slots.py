"""KV slots of a batched context: which sequence id holds which tokens, and prefix reuse."""

from __future__ import annotations

from dataclasses import dataclass, field


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class Slot:
    seq_id: int
    tokens: list[int] = field(default_factory=list)  # resident in the KV cache, in order
    busy: bool = False
    last_used: int = 0


class SlotTable:
    """`n` sequence ids of one context. A new prompt takes the free slot whose resident
    tokens share the longest prefix with it (a conversation's earlier turns, the system
    prompt), else the least recently used one, so another conversation's cells live on."""

    def __init__(self, n: int) -> None:
        self.slots = [Slot(i) for i in range(n)]
        self._clock = 0

    def has_free(self) -> bool:
        return any(not s.busy for s in self.slots)

    @property
    def busy(self) -> int:
        return sum(1 for s in self.slots if s.busy)

    def claim(self, prompt: list[int]) -> tuple[Slot, int]:
        """A free slot and how many leading prompt tokens it already holds.

        At least the last prompt token is always evaluated again: its logits give the
        first generated token.
        """
        best, best_len = None, -1
        for slot in self.slots:
            if slot.busy:
                continue
            n = common_prefix(slot.tokens, prompt)
            if n > best_len or (n == best_len and slot.last_used < best.last_used):
                best, best_len = slot, n
        if best is None:
            raise LookupError("no free slot")
        self._clock += 1
        best.busy, best.last_used = True, self._clock
        return best, min(best_len, len(prompt) - 1)

    def release(self, slot: Slot) -> None:
        slot.busy = False
