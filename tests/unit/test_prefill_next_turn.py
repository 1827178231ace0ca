"""The batched engine evaluates a conversation's next prompt start while its user reads
(`BatchedEngine.prefill_next_turn`), on a real tiny GGUF model.

A turn's question carries a per-turn block (time, search results) that the next turn replays
without, so the answer's cells follow tokens the next prompt does not have: without the
prefill the next turn evaluates the answer again while its user waits. The prefill is idle
work: it never takes another conversation's slot, gives its slot to a generation that waits
for one, and stops when its own conversation's turn arrives, which keeps what it evaluated.
"""

from __future__ import annotations

import asyncio

import pytest

from chatbot.core.affinity import CONVERSATION
from chatbot.domain.conversation import ChatMessage
from chatbot.llm.slots import common_prefix
from tests.unit.test_batched_engine import (
    GREEDY,
    GREEDY_PLAIN,
    answer,
    chat,
    engine,
    start_in_one_step,
    until,
)

REFERENCE = "\n\nReference (use only if relevant):\nIt is 10:01 on 6 December 2026."
SYSTEM = "Keep answers short and plain. " * 12


def first_turn(question: str) -> list[ChatMessage]:
    return chat(question + REFERENCE, system=SYSTEM)


def next_head(question: str, reply: str) -> list[ChatMessage]:
    """What the next turn replays: the question without its reference block, the answer."""
    return chat(question, system=SYSTEM)[:-1] + [ChatMessage("user", question),
                                                ChatMessage("assistant", reply)]


def as_conversation(coroutine, key: str = "db:test"):
    """Runs `coroutine` as conversation `key` (the affinity key the chat use case sets: a
    conversation's cells carry it, and its prefill finds its slot by it)."""
    async def run():
        CONVERSATION.set(key)
        return await coroutine
    return run()


def facts(e) -> dict:
    return e.status().facts


async def prefilled(e) -> None:
    await until(lambda: not e._prefills_live)


def test_a_prefilled_next_turn_evaluates_only_its_new_message_and_no_more_in_all(tiny_models):
    question, follow_up = "Agenda?", "And who gets them?"  # a short question: own slot found

    async def conversation(prefill: bool):
        async with engine(tiny_models, 2, prefill_next_turn=prefill) as e:
            reply = (await answer(e, first_turn(question))).strip()
            head = next_head(question, reply)
            start = facts(e)
            await e.prefill_next_turn(head)
            await prefilled(e)
            before = facts(e)
            steps = before["decode_steps"] - start["decode_steps"]
            second = [*head, ChatMessage("user", follow_up + REFERENCE)]
            await answer(e, second)
            after = facts(e)
            n_head = len(e._next_turn_head(head)[0])
            return (n_head, len(e.tokenize_chat(second)[0]), before, after, steps)

    n_head, n_second, before, after, steps = asyncio.run(as_conversation(conversation(True)))
    _, _, plain_before, plain_after, _ = asyncio.run(as_conversation(conversation(False)))
    # The next turn evaluates only its own message: everything before it was prefilled.
    evaluated = after["prompt_tokens_evaluated"] - before["prompt_tokens_evaluated"]
    assert evaluated == n_second - n_head
    assert after["prompt_tokens_reused"] - before["prompt_tokens_reused"] == n_head
    # Without the prefill it evaluates the answer (and what follows the question) too.
    plain = plain_after["prompt_tokens_evaluated"] - plain_before["prompt_tokens_evaluated"]
    assert plain - evaluated > 20
    # The same work in all, only earlier: what was prefilled is what the plain turn added.
    assert before["prompt_tokens_prefilled"] == plain - evaluated
    assert after["prompt_tokens_evaluated"] == plain_after["prompt_tokens_evaluated"]
    assert plain_after["prompt_tokens_prefilled"] == 0
    assert after["kv_turns_local"] == 1 and after["prefills_cancelled"] == 0
    # In steps of a quarter of the prompt budget (256): it has the user's reading time.
    assert before["prompt_tokens_prefilled"] > 64 and steps == -(-before[
        "prompt_tokens_prefilled"] // 64)


def test_a_prefill_never_takes_another_conversations_slot(tiny_models):
    question = "How do I write good meeting notes?"

    async def scenario():
        async with engine(tiny_models, 1) as e:
            reply = (await answer(e, first_turn(question))).strip()
            other = chat("Someone else's question, long enough to be saved.")
            # Another conversation takes the only slot.
            other_reply = (await as_conversation(answer(e, other), "db:other")).strip()
            await e.prefill_next_turn(next_head(question, reply))
            await prefilled(e)
            before = facts(e)
            await as_conversation(answer(e, [*other, ChatMessage("assistant", other_reply),
                                             ChatMessage("user", "And then?")]), "db:other")
            return before, facts(e)

    before, after = asyncio.run(as_conversation(scenario()))
    assert before["prompt_tokens_prefilled"] == 0 and before["prefills_cancelled"] == 0
    # The other conversation still found its cells in the slot.
    assert after["kv_turns_local"] - before["kv_turns_local"] == 1


def test_a_generation_waiting_for_a_slot_takes_it_from_a_prefill(tiny_models):
    question = "How do I write good meeting notes?"

    async def scenario():
        async with engine(tiny_models, 1, prompt_tokens_per_step=2) as e:
            reply = (await answer(e, first_turn(question))).strip()
            head = next_head(question, reply)
            await e.prefill_next_turn(head)
            await until(lambda: facts(e)["prompt_tokens_prefilled"] > 0)
            (other,) = await start_in_one_step(e, lambda: as_conversation(
                answer(e, chat("Someone else asks.")), "db:other"))
            text = await asyncio.wait_for(other, 60)
            return text, len(e._next_turn_head(head)[0]), facts(e)

    text, n_head, after = asyncio.run(as_conversation(scenario()))
    assert text  # answered in the slot the prefill gave up
    assert after["prefills_cancelled"] == 1
    assert 0 < after["prompt_tokens_prefilled"] < n_head
    assert after["sequences_active"] == 0 and after["kv_turns_new"] == 2


def test_the_next_turn_stops_its_prefill_and_evaluates_nothing_twice(tiny_models):
    question, follow_up = "How do I write good meeting notes?", "And who gets them?"

    async def scenario():
        async with engine(tiny_models, 2, prompt_tokens_per_step=2) as e:
            first = first_turn(question)
            reply = (await answer(e, first)).strip()
            head = next_head(question, reply)
            second = [*head, ChatMessage("user", follow_up + REFERENCE)]
            start = facts(e)
            await e.prefill_next_turn(head)
            await until(lambda: facts(e)["prompt_tokens_prefilled"] > 0)
            (turn,) = await start_in_one_step(e, lambda: answer(e, second))
            await turn
            tokens = [e.tokenize_chat(m)[0] for m in (first, second)]
            return tokens, len(e._next_turn_head(head)[0]), start, facts(e)

    (first, second), n_head, start, after = asyncio.run(as_conversation(scenario()))
    kept = common_prefix(first, second)  # the first turn's cells the next prompt starts with
    prefilled = after["prompt_tokens_prefilled"]
    assert after["prefills_cancelled"] == 1
    assert 0 < prefilled < n_head - kept  # stopped half way ...
    # ... and the turn went on from there: every token of its prompt evaluated once.
    reused = after["prompt_tokens_reused"] - start["prompt_tokens_reused"]
    evaluated = after["prompt_tokens_evaluated"] - start["prompt_tokens_evaluated"]
    assert reused == kept + prefilled
    assert evaluated == len(second) - kept
    assert after["kv_turns_local"] == 1


@pytest.mark.parametrize("order", [("db:a", "db:b"), ("db:b", "db:a")])
def test_a_prefill_leaves_a_conversation_that_asked_the_same_first_question_alone(
        tiny_models, order):
    """Conversation b asked what a asked first, then went on; a's prefill shares as much of
    b's slot as of its own (the first question: both had a reference block after it), and
    still takes its own (its cells carry a's affinity key), whichever slot each is in: b's
    third turn finds its second turn in place."""
    question = "How do I write good meeting notes?"

    async def scenario():
        async with engine(tiny_models, 2) as e:
            replies = {}
            for key in order:  # their first turns: which slot each takes
                replies[key] = (await as_conversation(
                    answer(e, first_turn(question), GREEDY if key == "db:a" else GREEDY_PLAIN),
                    key)).strip()
            b2 = [*next_head(question, replies["db:b"]),
                  ChatMessage("user", "Who reads them?" + REFERENCE)]
            b2_reply = (await as_conversation(answer(e, b2), "db:b")).strip()
            await as_conversation(e.prefill_next_turn(next_head(question, replies["db:a"])),
                                  "db:a")
            await prefilled(e)
            b3 = [*b2[:-1], ChatMessage("user", "Who reads them?"),
                  ChatMessage("assistant", b2_reply), ChatMessage("user", "When?" + REFERENCE)]
            before = facts(e)
            await as_conversation(answer(e, b3), "db:b")
            after = facts(e)
            kept = common_prefix(*(e.tokenize_chat(m)[0] for m in (b2, b3)))
            return kept, before, after

    kept, before, after = asyncio.run(scenario())
    assert before["prompt_tokens_prefilled"] > 0
    assert after["prompt_tokens_reused"] - before["prompt_tokens_reused"] == kept
    assert after["kv_turns_local"] - before["kv_turns_local"] == 1
