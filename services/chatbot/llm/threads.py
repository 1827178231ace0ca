"""How many threads each decode step runs on: all the configured ones, or one, by measuring.

ggml splits every op of a step's graph across its threads and has them meet after each op,
a few hundred meetings a step. On idle cores a meeting costs a microsecond and two threads
nearly halve a step. On a busy machine (other processes, or a pod's CPU limit) a thread is
often preempted, and each meeting can wait a scheduler time slice for it: measured on the
2-core development machine at a load average of 11, the tiny test model generated 6 tokens
a second on two threads and ten times that on one, and SmolLM2 fell from about 140 to 3
(docs/benchmarks.md). Which is faster depends on the load of the moment, so it is measured:
steps are grouped by size (powers of two of their tokens), each group keeps the seconds per
token of its current choice, and now and then runs a step on the other choice; the faster
one is used. A check that finds the current choice still faster waits twice as long before
the next, so a steady machine pays little for them; one that finds the other faster
switches at once.

Before anything is measured, a step with less work than `PARALLEL_MIN_MACS` starts on one
thread (the meetings cost more than such a step's work even on idle cores), any other on
all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Weights x tokens (multiply-adds) below which a step starts on one thread: one token of a
# model of a few million weights; a 135M model's single token is above it.
PARALLEL_MIN_MACS = 32_000_000
# Steps of a group between two runs on the choice not in use (few at first: prompt chunks
# of one size are rare), doubled (up to the maximum)
# each time the check confirms the choice.
CHECK_EVERY = 4
CHECK_EVERY_MAX = 2048
# Weight of a new measurement in a choice's running average of seconds per token.
ALPHA = 0.25


def step_threads(n_tokens: int, n_params: int, threads: int) -> int:
    """The threads a step of `n_tokens` starts on before any is measured: all of them, or
    one when its work is below `PARALLEL_MIN_MACS`."""
    return threads if n_tokens * n_params >= PARALLEL_MIN_MACS else 1


@dataclass
class _Group:
    cost: dict[int, float] = field(default_factory=dict)  # threads -> seconds per token
    since_check: int = 0
    check_every: int = CHECK_EVERY
    checking: int | None = None  # the threads of a check in flight


class StepThreads:
    """Chooses 1 or `threads` for each step (decode thread only; not thread-safe)."""

    def __init__(self, threads: int, n_params: int) -> None:
        self.threads = threads
        self.n_params = n_params
        self._groups: dict[int, _Group] = {}

    def choose(self, n_tokens: int) -> int:
        if self.threads <= 1:
            return self.threads
        group = self._groups.setdefault(n_tokens.bit_length(), _Group())
        current = self._current(group, n_tokens)
        group.since_check += 1
        if group.since_check >= group.check_every:
            group.since_check = 0
            group.checking = self.threads if current == 1 else 1
            return group.checking
        return current

    def observe(self, n_tokens: int, threads: int, seconds: float) -> None:
        """A step of `n_tokens` on `threads` took `seconds`."""
        if self.threads <= 1 or n_tokens <= 0:
            return
        group = self._groups.setdefault(n_tokens.bit_length(), _Group())
        per_token = seconds / n_tokens
        if group.checking == threads:
            group.checking = None
            before = self._current(group, n_tokens)
            group.cost[threads] = per_token  # a fresh measurement of the other choice
            if self._current(group, n_tokens) == before:
                group.check_every = min(2 * group.check_every, CHECK_EVERY_MAX)
            else:
                group.check_every = CHECK_EVERY
            return
        old = group.cost.get(threads)
        group.cost[threads] = per_token if old is None else old + ALPHA * (per_token - old)

    def _current(self, group: _Group, n_tokens: int) -> int:
        one, all_ = group.cost.get(1), group.cost.get(self.threads)
        if one is None or all_ is None:
            return step_threads(n_tokens, self.n_params, self.threads)
        return 1 if one < all_ else self.threads
