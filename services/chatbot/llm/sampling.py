"""A native llama.cpp sampler chain per sequence, built from a persona's sampling parameters.

The chain runs in C (`llama_sampler_sample`), so sampling costs no Python per vocabulary
entry. Order and defaults follow llama-cpp-python's own chain: penalties over the last 64
tokens, then top-k, typical (off), top-p, min-p, temperature, a seeded draw; temperature 0
is greedy.
"""

from __future__ import annotations

import random

from chatbot.domain.personas import SamplingParams

PENALTY_LAST_N = 64


def sampler_chain(params: SamplingParams, n_vocab: int, seed: int | None):
    """A new `llama_sampler *`; the caller frees it with `llama_sampler_free`."""
    import llama_cpp as lc

    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())

    def add(sampler) -> None:
        lc.llama_sampler_chain_add(chain, sampler)

    if (params.repeat_penalty != 1.0 or params.frequency_penalty != 0.0
            or params.presence_penalty != 0.0):
        add(lc.llama_sampler_init_penalties(
            n_vocab, PENALTY_LAST_N, params.repeat_penalty, params.frequency_penalty,
            params.presence_penalty))
    if params.temperature == 0:
        add(lc.llama_sampler_init_greedy())
        return chain
    add(lc.llama_sampler_init_top_k(params.top_k))
    add(lc.llama_sampler_init_top_p(params.top_p, 1))
    add(lc.llama_sampler_init_min_p(params.min_p, 1))
    add(lc.llama_sampler_init_temp(params.temperature))
    add(lc.llama_sampler_init_dist(seed if seed is not None else random.getrandbits(32)))
    return chain
