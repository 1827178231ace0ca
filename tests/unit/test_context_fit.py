"""Fitting history to the context: the pure rules, over token counts."""

from __future__ import annotations

import pytest

from chatbot.core.context_fit import (
    MIN_ANSWER_TOKENS,
    block_size,
    fit_history,
    fit_prompt,
    replay_block,
    window_start,
)
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
    assert calls == [8]  # the prompt that is sent, counted once


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
def test_without_blocks_the_search_finds_the_largest_fitting_suffix(turns):
    sizes = [37 * (i % 5 + 1) for i in range(turns)]
    count = counter(200, sizes)
    fit = fit_history(turns, count, 1000, 300)
    best = max(k for k in range(turns + 1) if count(k) + 300 <= 1000)
    assert fit.turns == best and fit.dropped == turns - best


@pytest.mark.parametrize(("history_turns", "block"), [(1, 1), (2, 1), (4, 2), (8, 4),
                                                      (10, 4), (16, 8)])
def test_a_persona_drops_half_its_replay_limit_as_a_power_of_two(history_turns, block):
    assert replay_block(history_turns) == block


@pytest.mark.parametrize(("fitting", "block"), [(0, 1), (1, 1), (2, 2), (3, 2), (4, 2),
                                                (5, 2), (6, 4), (8, 4), (40, 4)])
def test_the_block_shrinks_only_when_it_could_leave_less_than_half_of_what_fits(fitting,
                                                                                 block):
    assert block_size(fitting, 4) == block
    assert fitting - block + 1 >= fitting / 2  # the fewest turns a drop leaves


def _windows(total: int, limit: int, sizes, context: int, max_tokens: int, block: int = 4):
    """Each turn of a `total`-turn conversation: the first replayed turn (a position), when
    the store hands over the `limit` most recent turns, as the chat use case calls it."""
    starts = []
    for position in range(total):
        n = min(position, limit)
        count = counter(500, sizes[position - n:position])
        fit = fit_history(n, count, context, max_tokens, position=position, block=block)
        starts.append(position - fit.turns)
    return starts


def _moves(starts):
    return [(t, b - a) for t, (a, b) in enumerate(zip(starts, starts[1:], strict=False), 1)
            if b != a]


def test_the_turn_limit_drops_a_block_at_a_time_and_the_window_stays_between_drops():
    # Everything fits the context; office replays at most 8 turns: blocks of 4.
    starts = _windows(30, 8, [100] * 30, 100_000, 1024)
    assert starts[:9] == [0] * 9  # the first 8 turns replay everything
    assert _moves(starts) == [(9, 4), (13, 4), (17, 4), (21, 4), (25, 4), (29, 4)]
    assert all(4 < p - s <= 8 for p, s in enumerate(starts) if p > 8)  # 5 to 8 replayed


def test_the_context_drops_a_block_at_a_time_and_the_window_stays_between_drops():
    # 500 + 1024 for the answer leave room for 6 turns of 1000 in 8191.
    starts = _windows(40, 40, [1000] * 40, 8191, 1024)
    kept = [p - s for p, s in enumerate(starts)]
    assert max(kept) == 6 and kept[:7] == list(range(7))
    assert _moves(starts) == [(t, 4) for t in range(7, 40, 4)]
    assert all(k >= 3 for k in kept[7:])  # never fewer than 6 - 4 + 1
    sliding = _windows(40, 40, [1000] * 40, 8191, 1024, block=1)
    assert len(_moves(sliding)) == 40 - 7  # before: the window moved on every turn


def test_turns_of_varying_size_move_the_window_forward_a_block_at_a_time():
    sizes = [50 + (i * 7919) % 500 for i in range(60)]
    starts = _windows(60, 10, sizes, 6000, 512)
    assert starts == sorted(starts)  # a dropped turn is never replayed again
    assert all(moved == 4 for _, moved in _moves(starts))
    assert len(_moves(starts)) <= 60 // 4


def test_so_few_fitting_turns_that_a_block_is_too_coarse_still_replay_what_fits():
    starts = _windows(20, 10, [2000] * 20, 8191, 1024)  # 3 fit: blocks of 2
    kept = [p - s for p, s in enumerate(starts)]
    assert max(kept) == 3 and min(kept[4:]) == 2
    assert _moves(starts) == [(t, 2) for t in range(4, 20, 2)]


def test_window_start_stays_on_the_first_turn_until_something_must_go():
    assert window_start(5, 5, 4) == 0 and window_start(0, 0, 4) == 0
    assert window_start(9, 8, 4) == 4 and window_start(12, 8, 4) == 4
    assert window_start(13, 8, 4) == 8


def test_position_cannot_be_below_the_turns_handed_over():
    with pytest.raises(ValueError):
        fit_history(3, lambda k: 1, 100, 10, position=2)


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
