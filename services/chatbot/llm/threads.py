"""How many threads each decode step runs on: all the configured ones, or one for a step too
small to split.

ggml splits every op of a step's graph across its threads and has them meet after each op,
a few hundred meetings a step. When the whole step is a fraction of a millisecond of work,
as one token each of a few conversations on a model of a few million weights is, the
meetings cost more than the work; and on a busy machine (other processes, or a pod's CPU
limit) each meeting can wait a scheduler time slice for a preempted thread: on the 2-core
development machine at a load average of 11, the tiny test model generated 6 tokens a
second on two threads and ten times that on one. A 135M model's single token is above the
bound, so real models keep all their threads for every step.

The choice depends on the step alone (its tokens and the model's weights), never on
timings: the thread count can change llama.cpp's results at near-ties (the same greedy
prompt would answer differently from run to run otherwise).
"""

from __future__ import annotations

# Weights x tokens (multiply-adds) below which a step runs on one thread.
PARALLEL_MIN_MACS = 32_000_000


def step_threads(n_tokens: int, n_params: int, threads: int) -> int:
    """The threads a step of `n_tokens` runs on: all of them, or one when its work is below
    `PARALLEL_MIN_MACS`."""
    return threads if n_tokens * n_params >= PARALLEL_MIN_MACS else 1
