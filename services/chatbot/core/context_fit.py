"""Fitting a conversation to the model's context, by token count (pure: no I/O, no model).

The prompt is the system prompt (persona, context), the replayed turns and the new turn
(the question, with the current time and search results in front of it). The parts without
history always stay; then as many of the most recent turns as fit while leaving room for
the answer's `max_tokens`; older turns are dropped whole. When not even the prompt without
history leaves `max_tokens`, the answer budget shrinks to what is left, down to a floor;
below the floor the request cannot be answered (`ContextLengthExceededError`, a 400).

Drops keep the prefix: the replayed window starts at a turn whose position in the
conversation is a multiple of a block (half the persona's replay limit as a power of two:
4 turns for both; smaller when so few turns fit that dropping 4 could leave fewer than half
of them), so when a turn no longer fits (by tokens or by the replay limit), a whole block
of the oldest turns goes at once, and the next turns replay the very same earlier ones
(their KV cells, still in the engine, stay valid) until the window is full again. Sliding
by one turn changed the prompt right after the system prompt on every turn, and the whole
history was evaluated again each time.

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


def replay_block(history_turns: int) -> int:
    """The block a persona's history is dropped by: half the turns it replays at most,
    rounded down to a power of two (4 for office's 8 and character's 10)."""
    return _power_of_two(max(1, history_turns // 2))


def _power_of_two(n: int) -> int:
    """The largest power of two not above n (n >= 1)."""
    return 1 << (n.bit_length() - 1)


def block_size(fitting: int, block: int) -> int:
    """The block when `fitting` turns fit: `block`, or a smaller power of two where a drop
    of `block` turns could leave fewer than half of those that fit."""
    return min(_power_of_two(max(1, block)), _power_of_two(fitting // 2 + 1))


def window_start(position: int, fitting: int, block: int) -> int:
    """Where the replayed window starts (a position in the conversation, 0 = its first turn)
    when `position` turns came before this one and the `fitting` most recent of them fit:
    the first block boundary at or after the oldest turn that fits. As the conversation
    grows it stays put until a turn no longer fits, then moves by a whole block."""
    earliest = position - fitting
    if earliest <= 0:
        return 0
    size = block_size(fitting, block)
    return -(-earliest // size) * size


def aligned(kept: int, position: int, block: int) -> int:
    """Of the `kept` most recent turns (of `position` so far), those from the window's
    block boundary on (`window_start`)."""
    return position - max(window_start(position, kept, block), position - kept)


def fit_history(turns: int, prompt_tokens: Callable[[int], int], context_tokens: int,
                max_tokens: int, min_answer_tokens: int = MIN_ANSWER_TOKENS, *,
                position: int | None = None, block: int = 1) -> Fit:
    """How many of `turns` recent turns to replay, and the answer budget. `position` is how
    many turns the conversation has before this one (default: `turns`, all of them);
    the window starts on a multiple of `block` (`window_start`; 1: the most recent turns
    that fit, whatever their position)."""
    if turns < 0 or context_tokens <= 0 or max_tokens <= 0:
        raise ValueError("turns >= 0, context_tokens > 0 and max_tokens > 0 are required")
    position = turns if position is None else position
    if position < turns:
        raise ValueError("position (turns before this one) cannot be below turns")
    counts: dict[int, int] = {}

    def count(k: int) -> int:
        if k not in counts:
            counts[k] = prompt_tokens(k)
        return counts[k]

    def fits(k: int) -> bool:
        return count(k) + max_tokens <= context_tokens

    # The common case first: everything fits, and then so does the prompt alone with the
    # answer floor (at most max_tokens), so it is not counted: each count renders and
    # tokenizes a whole prompt, a few milliseconds of a turn on a 135M model.
    if fits(turns):
        kept = turns
    else:
        base = count(0)
        floor = answer_floor(max_tokens, min_answer_tokens)
        if base + floor > context_tokens:
            raise ContextLengthExceededError.counted(base, floor, context_tokens)
        kept = 0 if not fits(0) else _largest_fitting(turns, fits)
    kept = aligned(kept, position, block)
    used = count(kept)
    return Fit(kept, turns - kept, used, min(max_tokens, context_tokens - used),
               context_tokens)


def _largest_fitting(turns: int, fits: Callable[[int], bool]) -> int:
    """The most turns that fit, given that 0 fit and `turns` do not (binary search)."""
    lo, hi = 0, turns
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo
