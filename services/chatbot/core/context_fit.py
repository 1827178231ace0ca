"""Fitting a conversation to the model's context, by token count (pure: no I/O, no model).

The prompt is the system prompt (persona, context, search results), the replayed turns and
the new question. The parts without history always stay; then as many of the most recent
turns as fit while leaving room for the answer's `max_tokens`; older turns are dropped
whole. When not even the prompt without history leaves `max_tokens`, the answer budget
shrinks to what is left, down to a floor; below the floor the request cannot be answered
(`ContextLengthExceededError`, a 400).

Counts come from a callable `prompt_tokens(k)`: the exact token count of the prompt that
replays the `k` most recent turns (the engine renders the chat template and tokenizes).
It must grow with `k`, which any chat template does; the search asks it O(log n) times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from chatbot.domain.errors import ContextLengthExceededError

# The smallest answer budget worth generating (or the caller's max_tokens, if smaller).
MIN_ANSWER_TOKENS = 64


@dataclass(frozen=True)
class Fit:
    turns: int  # the most recent turns replayed
    dropped: int  # older turns left out to fit (still in the store)
    prompt_tokens: int  # the prompt that replays `turns` turns
    max_tokens: int  # the answer budget: the requested one, or what the context has left
    context_tokens: int

    @property
    def room(self) -> int:
        """Tokens the context has left after the prompt (a fallback may use them)."""
        return self.context_tokens - self.prompt_tokens


def answer_floor(max_tokens: int, min_answer_tokens: int = MIN_ANSWER_TOKENS) -> int:
    return max(1, min(max_tokens, min_answer_tokens))


def fit_prompt(prompt_tokens: int, context_tokens: int, max_tokens: int,
               min_answer_tokens: int = MIN_ANSWER_TOKENS) -> Fit:
    """A prompt without history to fit (the caller's own messages): budget or 400."""
    return fit_history(0, lambda _k: prompt_tokens, context_tokens, max_tokens,
                       min_answer_tokens)


def fit_history(turns: int, prompt_tokens: Callable[[int], int], context_tokens: int,
                max_tokens: int, min_answer_tokens: int = MIN_ANSWER_TOKENS) -> Fit:
    """How many of `turns` recent turns to replay, and the answer budget."""
    if turns < 0 or context_tokens <= 0 or max_tokens <= 0:
        raise ValueError("turns >= 0, context_tokens > 0 and max_tokens > 0 are required")
    counts: dict[int, int] = {}

    def count(k: int) -> int:
        if k not in counts:
            counts[k] = prompt_tokens(k)
        return counts[k]

    def fits(k: int) -> bool:
        return count(k) + max_tokens <= context_tokens

    base = count(0)
    floor = answer_floor(max_tokens, min_answer_tokens)
    if base + floor > context_tokens:
        raise ContextLengthExceededError.counted(base, floor, context_tokens)
    if fits(turns):  # the common case: one count
        kept = turns
    elif not fits(0):
        kept = 0
    else:  # fits(lo) and not fits(hi)
        lo, hi = 0, turns
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        kept = lo
    used = count(kept)
    return Fit(kept, turns - kept, used, min(max_tokens, context_tokens - used),
               context_tokens)
