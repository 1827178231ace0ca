"""Fitting history to the context: the pure rules, over token counts."""

from __future__ import annotations

import pytest

from chatbot.core.context_fit import MIN_ANSWER_TOKENS, fit_history, fit_prompt
from chatbot.domain.errors import ContextLengthExceededError


def counter(fixed: int, turns: list[int], calls: list[int] | None = None):
    """prompt_tokens(k) for a prompt of `fixed` tokens plus the k most recent `turns`."""

    def count(k: int) -> int:
        if calls is not None:
            calls.append(k)
        return fixed + sum(turns[len(turns) - k:]) if k else fixed

    return count


def test_everything_fits_with_one_count():
    calls: list[int] = []
    fit = fit_history(8, counter(500, [100] * 8, calls), 8191, 1024)
    assert (fit.turns, fit.dropped, fit.prompt_tokens, fit.max_tokens) == (8, 0, 1300, 1024)
    assert calls == [0, 8]


def test_the_most_recent_turns_that_leave_max_tokens_are_kept():
    # 8 office turns of ~1000 tokens (the case): 500 + 8*1000 + 1024 > 8191.
    fit = fit_history(8, counter(500, [1000] * 8), 8191, 1024)
    assert fit.turns == 6 and fit.dropped == 2
    assert fit.prompt_tokens == 6500 and fit.prompt_tokens + fit.max_tokens <= 8191
    assert fit.max_tokens == 1024  # the full budget, not shrunk


def test_a_long_old_turn_is_dropped_whole_with_every_turn_before_it():
    # Oldest first: the 5000-token turn cannot fit; only the 3 turns after it are kept.
    fit = fit_history(5, counter(100, [10, 5000, 50, 50, 50]), 4096, 256)
    assert (fit.turns, fit.dropped, fit.prompt_tokens) == (3, 2, 250)


@pytest.mark.parametrize("turns", range(0, 12))
def test_the_search_finds_the_largest_fitting_suffix(turns):
    sizes = [37 * (i % 5 + 1) for i in range(turns)]
    count = counter(200, sizes)
    fit = fit_history(turns, count, 1000, 300)
    best = max(k for k in range(turns + 1) if count(k) + 300 <= 1000)
    assert fit.turns == best and fit.dropped == turns - best


def test_the_budget_shrinks_when_even_the_bare_prompt_leaves_less_than_max_tokens():
    fit = fit_history(3, counter(7900, [200, 200, 200]), 8191, 1024)
    assert (fit.turns, fit.dropped, fit.prompt_tokens, fit.max_tokens) == (0, 3, 7900, 291)


def test_below_the_floor_is_context_length_exceeded_with_the_counts():
    with pytest.raises(ContextLengthExceededError) as caught:
        fit_history(2, counter(8150, [10, 10]), 8191, 1024)
    err = caught.value
    assert (err.prompt_tokens, err.min_answer_tokens, err.context_tokens) == (
        8150, MIN_ANSWER_TOKENS, 8191)
    assert "8150" in err.message and "8191" in err.message


def test_the_floor_is_the_callers_max_tokens_when_smaller():
    assert fit_prompt(8180, 8191, 8).max_tokens == 8
    with pytest.raises(ContextLengthExceededError):
        fit_prompt(8185, 8191, 8)
    fit = fit_prompt(8127, 8191, 4000)  # exactly the floor left
    assert fit.max_tokens == MIN_ANSWER_TOKENS and fit.room == MIN_ANSWER_TOKENS


def test_a_prompt_as_large_as_the_context_is_refused():
    with pytest.raises(ContextLengthExceededError):
        fit_prompt(8191, 8191, 1)
    assert fit_prompt(8190, 8191, 1).max_tokens == 1


@pytest.mark.parametrize("args", [(-1, 100, 10), (0, 0, 10), (0, 100, 0)])
def test_nonsense_arguments_are_refused(args):
    turns, context, max_tokens = args
    with pytest.raises(ValueError):
        fit_history(turns, lambda k: 1, context, max_tokens)
