"""A conversation's KV cells out of one batched engine and into another (real llama.cpp on the
tiny model): the receiving engine's next turn of that conversation evaluates only its new
part; cells of another size, or garbage of the right size, never reach a slot or break the
engine; the fingerprint tells model files and KV settings apart."""

from __future__ import annotations

import asyncio
import os

from chatbot.core.affinity import CONVERSATION
from chatbot.llm.batched_engine import SavedKv
from tests.unit.test_batched_engine import answer, chat, engine

SYSTEM = "You are a careful office assistant. " * 8
QUESTION = "Summarise the quarterly report in three bullet points, please, and keep it short."


def kv_turns(e, before) -> dict[str, int]:
    after = e.status().facts
    return {k: after[f"kv_turns_{k}"] - before[f"kv_turns_{k}"]
            for k in ("new", "local", "restored", "handed_over", "evaluated")
            if after[f"kv_turns_{k}"] - before[f"kv_turns_{k}"]}


async def first_turn(e, key: str = "db:one") -> str:
    token = CONVERSATION.set(key)
    try:
        return (await answer(e, chat(QUESTION, system=SYSTEM))).strip()
    finally:
        CONVERSATION.reset(token)


async def next_turn(e, reply: str) -> tuple[str, dict[str, int], int]:
    before = e.status().facts
    token = CONVERSATION.set("db:one")
    try:
        text = await answer(e, chat("And then?", (QUESTION, reply), system=SYSTEM))
    finally:
        CONVERSATION.reset(token)
    evaluated = (e.status().facts["prompt_tokens_evaluated"]
                 - before["prompt_tokens_evaluated"])
    return text, kv_turns(e, before), evaluated


def test_cells_handed_over_serve_the_next_turn_as_if_it_stayed(tiny_models):
    async def scenario():
        async with engine(tiny_models, 2) as a, engine(tiny_models, 2) as b, \
                engine(tiny_models, 2) as c:
            assert await a.kv_fingerprint() == await b.kv_fingerprint()
            reply = await first_turn(a)
            stayed = await next_turn(a, reply)
            reply = await first_turn(b)  # the same first turn, then b drains
            exported = await b.export_kv()
            assert [s.key for s in exported] == ["db:one"]
            assert len(exported[0].state) == b.state_size(len(exported[0].tokens))
            assert await c.import_kv(exported[0])
            moved = await next_turn(c, reply)
            return stayed, moved

    (stayed_text, stayed_kv, stayed_eval), (moved_text, moved_kv, moved_eval) = \
        asyncio.run(scenario())
    assert stayed_kv == {"local": 1} and moved_kv == {"handed_over": 1}
    assert moved_text == stayed_text  # greedy: the same cells give the same answer
    assert moved_eval <= stayed_eval + 2, (moved_eval, stayed_eval)


def test_a_state_of_the_wrong_size_is_refused_and_garbage_of_the_right_size_is_evaluated(
        tiny_models):
    async def scenario():
        async with engine(tiny_models, 2) as a, engine(tiny_models, 2) as b:
            reply = await first_turn(a)
            saved = (await a.export_kv())[0]
            results = [
                await b.import_kv(SavedKv(saved.key, saved.tokens, saved.state[:-1])),
                await b.import_kv(SavedKv(saved.key, saved.tokens[:-1], saved.state)),
                await b.import_kv(SavedKv(saved.key, [10**9] * len(saved.tokens),
                                          saved.state)),
            ]
            crafted = bytearray(saved.state)
            crafted[:64] = os.urandom(64)  # the cell count, positions, sequence ids
            results.append(await b.import_kv(SavedKv(saved.key, saved.tokens, bytes(crafted))))
            text, turns, _ = await next_turn(b, reply)
            again, _, _ = await next_turn(b, reply)  # the engine still works
            return results, text, turns, again

    results, text, turns, again = asyncio.run(scenario())
    assert results == [False, False, False, True]  # sizes and tokens checked on arrival
    assert turns == {"evaluated": 1}  # llama.cpp or the position check refused the cells
    assert text.strip() and again == text


def test_the_fingerprint_differs_across_model_files_and_kv_settings(tiny_models):
    async def fingerprints():
        found = []
        for path, model in ((tiny_models["office"], {}), (tiny_models["character"], {}),
                            (tiny_models["office"], {"kv_cache_type": "q8_0"}),
                            (tiny_models["office"], {"n_ctx": 1024})):
            async with engine(tiny_models, 1, path=path, **model) as e:
                found.append(await e.kv_fingerprint())
        return found

    found = asyncio.run(fingerprints())
    assert len(set(found)) == len(found)
