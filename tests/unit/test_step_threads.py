"""Decode steps on one thread or all of them: the measured choice (`llm/threads.py`)."""

from __future__ import annotations

from chatbot.llm.threads import CHECK_EVERY, StepThreads, step_threads

TINY, SMOLLM2 = 765_568, 134_515_008  # weights of the tiny test model and SmolLM2-135M


def run(choice: StepThreads, steps: int, seconds_per_step: dict[int, float],
        n_tokens: int = 1) -> list[int]:
    """`steps` steps of `n_tokens` that take `seconds_per_step[threads]`; their threads."""
    used = []
    for _ in range(steps):
        threads = choice.choose(n_tokens)
        choice.observe(n_tokens, threads, seconds_per_step[threads])
        used.append(threads)
    return used


def test_before_any_measurement_a_step_too_small_to_split_runs_on_one_thread():
    assert step_threads(1, TINY, 2) == 1  # one token each of a few sequences
    assert step_threads(8, TINY, 2) == 1
    assert step_threads(256, TINY, 2) == 2  # a prompt chunk is worth splitting
    assert step_threads(1, SMOLLM2, 2) == 2  # a real model's single token too
    assert StepThreads(2, SMOLLM2).choose(1) == 2
    assert StepThreads(2, TINY).choose(1) == 1


def test_a_busy_machine_moves_steps_to_one_thread_and_checks_ever_more_rarely():
    choice = StepThreads(2, SMOLLM2)
    # Two threads wait for each other: 10x slower than one.
    used = run(choice, 2000, {1: 0.01, 2: 0.1})
    assert used[:CHECK_EVERY - 1] == [2] * (CHECK_EVERY - 1)  # until the first check
    later = used[CHECK_EVERY:]
    assert later.count(1) > 0.99 * len(later)  # a few checks of two threads, doubling apart


def test_idle_cores_keep_all_threads_and_a_change_of_load_is_followed():
    choice = StepThreads(2, TINY)
    used = run(choice, 200, {1: 0.02, 2: 0.01}, n_tokens=256)
    assert used[-100:].count(2) > 95
    # The machine gets busy: within a check period or so, steps go to one thread.
    used = run(choice, 1000, {1: 0.02, 2: 0.2}, n_tokens=256)
    assert used[-500:].count(1) > 490


def test_steps_of_different_sizes_are_measured_apart():
    choice = StepThreads(2, SMOLLM2)
    run(choice, 500, {1: 0.001, 2: 0.01}, n_tokens=1)  # single tokens: one thread wins
    run(choice, 500, {1: 0.2, 2: 0.1}, n_tokens=512)  # prompt chunks: two threads win
    assert choice.choose(1) == 1 and choice.choose(512) == 2


def test_one_configured_thread_is_always_one():
    choice = StepThreads(1, SMOLLM2)
    assert set(run(choice, 100, {1: 0.1})) == {1}
