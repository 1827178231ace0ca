#!/usr/bin/env python3
"""A decode step of several conversations: how long it takes with their tokens in sequence-id
order (llama-server's order, and the batched engine's since 2026-12-07) against other orders.

llama.cpp gives each sequence its own KV stream (the engine's non-unified cache) and splits
a batch into micro-batches of sequences whose ids follow each other in batch order
(`llama_batch_allocr::split_equal`); each micro-batch is one pass over the model's weights.
Directly on llama.cpp (no service): `--seqs` sequences of `--history` cells each, then
`--steps` steps of one token per sequence in each order, and a step that also prefills
`--prompt` tokens of one sequence (a new turn arriving while the others generate). Prints
the p50 step time per order.

    .venv/bin/python tests/bench/bench_step_order.py --model PATH [--seqs 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--seqs", type=int, default=8)
    parser.add_argument("--history", type=int, default=400, help="cells per sequence")
    parser.add_argument("--prompt", type=int, default=128,
                        help="tokens prefilled in the mixed step")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.seqs < 2:
        parser.error("--seqs must be at least 2")

    import llama_cpp as lc
    from llama_cpp import _internals

    model = _internals.LlamaModel(path_model=str(args.model),
                                  params=lc.llama_model_default_params(), verbose=False)
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch = 2048 * args.seqs, 2048, 512
    cp.n_seq_max, cp.kv_unified = args.seqs, False
    cp.n_threads = cp.n_threads_batch = args.threads
    cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
    ctx = _internals.LlamaContext(model=model, params=cp, verbose=False)
    batch = _internals.LlamaBatch(n_tokens=2048, embd=0, n_seq_max=1, verbose=False)
    b = batch.batch
    pos = [0] * args.seqs

    def decode(items: list[tuple[int, int]]) -> float:
        n = 0
        for seq, count in items:
            for _ in range(count):
                b.token[n], b.pos[n], b.seq_id[n][0], b.n_seq_id[n], b.logits[n] = (
                    100 + n % 50, pos[seq], seq, 1, 0)
                pos[seq] += 1
                n += 1
        b.logits[n - 1], b.n_tokens = 1, n
        started = time.perf_counter()
        if lc.llama_decode(ctx.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")
        return time.perf_counter() - started

    for seq in range(args.seqs):
        decode([(seq, args.history)])
    ids = list(range(args.seqs))
    shuffled = ids[:]
    random.Random(7).shuffle(shuffled)
    orders = {"sequence id (llama-server, ours now)": ids, "shuffled (start order)": shuffled,
              "reversed": ids[::-1]}
    print(f"{args.model.name}: {args.seqs} sequences of {args.history} cells, {args.threads} "
          f"threads, load average {os.getloadavg()[0]:.2f}")
    for name, order in orders.items():
        gen = statistics.median(decode([(s, 1) for s in order]) for _ in range(args.steps))
        prefill = order[len(order) // 2]
        mixed = statistics.median(
            decode([(s, 1) for s in order if s != prefill] + [(prefill, args.prompt)])
            for _ in range(3))
        print(f"  {name:38s} one token each: {gen * 1000:6.1f} ms a step; with {args.prompt} "
              f"prompt tokens of one: {mixed * 1000:6.1f} ms")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
