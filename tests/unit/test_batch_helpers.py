"""The batched engine's pure helpers: slot choice for prefix reuse, the order of a step's
batch, when prompts wait, text streaming."""

from __future__ import annotations

from types import SimpleNamespace

from chatbot.llm.batched_engine import (
    FIRST_TEXT_TOKENS,
    decode_order,
    prompt_order,
    prompts_wait,
)
from chatbot.llm.slots import SlotTable
from chatbot.llm.text_stream import TextStream


def test_a_conversation_gets_back_the_slot_holding_its_earlier_turns():
    table = SlotTable(2)
    first, reused, _ = table.claim([1, 2, 3, 4, 5])
    assert reused == 0
    first.tokens[:] = [1, 2, 3, 4, 5, 6, 7]
    table.release(first)
    # Another conversation sharing only the system prompt takes the other slot ...
    other, reused, _ = table.claim([1, 2, 9])
    assert other is not first and reused == 0
    other.tokens[:] = [1, 2, 9]
    table.release(other)
    # ... so the first one's next turn still finds all of its cells.
    again, reused, _ = table.claim([1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert again is first and reused == 7


def test_a_new_conversation_takes_an_empty_slot_over_one_sharing_only_the_system_prompt():
    table = SlotTable(2)
    system = list(range(100))
    first, _, _ = table.claim([*system, 1])
    first.tokens[:] = [*system, 1, 2, 3]  # early in its conversation: mostly system prompt
    table.release(first)
    # A new conversation leaves the first one's turn in place and copies the system prompt.
    slot, reused, donor = table.claim([*system, 9])
    assert slot is not first and donor is first and reused == 100
    assert first.tokens == [*system, 1, 2, 3]


def test_a_follow_up_turn_takes_its_own_slot_over_an_empty_one():
    table = SlotTable(3)
    system = list(range(100))
    first, _, _ = table.claim([*system, 1, 1])
    first.tokens[:] = [*system, 1, 1, 5, 5]  # the first question, the time, the answer
    table.release(first)
    # Its next turn: the first question and answer replayed, the time block gone.
    slot, reused, donor = table.claim([*system, 1, 1, 6, 6, 2], own_from=101)
    assert slot is first and donor is None and reused == 102


def test_a_conversation_that_asked_the_same_first_question_does_not_take_anothers_history():
    table = SlotTable(3)
    system, question = list(range(100)), [7] * 20
    other, _, _ = table.claim([*system, *question, 1])
    other.tokens[:] = [*system, *question, 1, *[5] * 300]  # another user, many turns on
    table.release(other)
    # A follow-up whose first question matched the other's but for its last token.
    slot, reused, donor = table.claim([*system, *question, 2, 6, 6], own_from=110)
    assert slot is not other and donor is other and reused == 120
    assert other.tokens[-1] == 5


def test_a_slot_claimed_earlier_in_the_same_round_lends_only_what_it_will_keep():
    table = SlotTable(2)
    system = list(range(100))
    a, _, _ = table.claim([*system, 1])
    a.tokens[:] = [*system, 1, *[5] * 50]  # conversation A's first turn
    table.release(a)
    b, _, _ = table.claim([*system, 2])
    b.tokens[:] = [*system, 2, *[6] * 50]
    table.release(b)
    # A new conversation takes A's slot (least recently used) and keeps the system prompt;
    x, reused, _ = table.claim([*system, 3])
    assert x is a and reused == 100
    # A's next turn, in the same round, cannot copy its cells from there: they are about
    # to be overwritten (the engine finds them in host RAM instead).
    slot, reused, donor = table.claim([*system, 1, *[5] * 50, 7], own_from=101,
                                      claimed={x.seq_id: system})
    assert slot is b and donor is None and reused == 100


def test_when_every_slot_is_taken_the_least_recently_used_is_overwritten():
    table = SlotTable(2)
    a, _, _ = table.claim([1])
    b, _, _ = table.claim([2])
    a.tokens[:], b.tokens[:] = [1, 5, 5, 5], [1, 6, 6, 6]
    table.release(b)
    table.release(a)
    c, reused, _ = table.claim([1, 7, 7])
    assert c is a  # a was claimed first: least recently used
    assert reused == 1  # its shared first token is still reused


def test_the_last_prompt_token_is_always_evaluated_again():
    table = SlotTable(1)
    slot, _, _ = table.claim([1, 2, 3])
    slot.tokens[:] = [1, 2, 3]
    table.release(slot)
    assert table.claim([1, 2, 3]) == (slot, 2, None)


def test_a_character_split_over_tokens_comes_out_whole():
    stream = TextStream()
    han = "회".encode()
    assert stream.feed(han[:1]) == ("", False)
    assert stream.feed(han[1:] + b"!") == ("회!", False)


def test_text_that_may_start_a_stop_string_waits_and_a_stop_string_ends_the_text():
    stream = TextStream(("<|eot_id|>",))
    assert stream.feed(b"Hello <|") == ("Hello ", False)
    assert stream.feed(b"x") == ("<|x", False)  # not a stop string after all
    assert stream.feed(b" bye<|eot") == (" bye", False)
    assert stream.feed(b"_id|>ignored") == ("", True)


def test_held_text_comes_out_at_the_end():
    stream = TextStream(("<|eot_id|>",))
    assert stream.feed(b"ok <") == ("ok ", False)
    assert stream.flush() == "<"


def test_a_slot_that_never_saw_the_system_prompt_copies_it_from_another():
    table = SlotTable(2)
    first, _, _ = table.claim([1, 2, 3])
    first.tokens[:] = [*range(100), 7]  # a long system prompt and an answer; still busy
    slot, reused, donor = table.claim([*range(100), 8])
    assert slot is not first and donor is first and reused == 100


def test_a_short_shared_prefix_is_not_worth_a_copy():
    table = SlotTable(2)
    first, _, _ = table.claim([1])
    first.tokens[:] = [1, 2, 3, 4]
    assert table.claim([1, 2, 3, 9])[1:] == (0, None)



def test_generating_conversations_go_into_a_step_by_sequence_id_whatever_order_they_started():
    # llama.cpp passes over the weights once per run of consecutive sequence ids in the
    # batch (one KV stream per sequence): ids 0..7 in order are one pass, shuffled up to 8.
    started = [SimpleNamespace(slot=SimpleNamespace(seq_id=i)) for i in (3, 0, 6, 1, 7, 2, 5, 4)]
    assert [seq.slot.seq_id for seq in decode_order(started)] == list(range(8))
    assert [seq.slot.seq_id for seq in started] == [3, 0, 6, 1, 7, 2, 5, 4]  # prompts: oldest first


def test_prompts_wait_while_a_started_answer_has_no_text_to_show():
    def seq(generated: int, shown: bool):
        return SimpleNamespace(generated=generated, shown=shown)

    assert not prompts_wait([])
    assert not prompts_wait([seq(0, False), seq(9, True)])  # prefilling, and a shown answer
    # The first byte of a 3-byte syllable: the next steps decode without prompts.
    assert prompts_wait([seq(1, False), seq(9, True)])
    assert prompts_wait([seq(FIRST_TEXT_TOKENS - 1, False)])
    assert not prompts_wait([seq(2, True)])
    # Text held longer (a stop string's prefix, say) no longer holds the prompts back.
    assert not prompts_wait([seq(FIRST_TEXT_TOKENS, False)])


def test_prefills_get_the_prompt_budget_after_every_generation_waiting_for_it():
    def seq(name: str, prefill: bool, last: int = -1):
        return SimpleNamespace(name=name, last=last, request=SimpleNamespace(prefill=prefill))

    running = [seq("p1", True), seq("g1", False), seq("decoding", False, last=7),
               seq("p2", True), seq("g2", False)]
    assert [s.name for s in prompt_order(running)] == ["g1", "g2", "p1", "p2"]


def test_a_prefill_takes_only_its_own_conversations_slot():
    table = SlotTable(3)
    system, mine, other = list(range(50)), [100, 101, 102], [200, 201]
    for tokens, key in (([*system, *mine, 7, 8], "mine"), ([*system, *other, 9], "other"),
                        ([], None)):
        slot, _, _ = table.claim(tokens)
        slot.tokens[:], slot.key = tokens, key
        table.release(slot)
    head = [*system, *mine, 5, 6]
    # Its slot shares the first question: claimed, with what it holds of the head.
    slot, n = table.claim_own(head, own_from=51, key="mine")
    assert slot.tokens[:53] == [*system, *mine] and n == 53 and slot.busy
    table.release(slot)
    # Not another conversation's slot, though it shares the system prompt, nor one of its
    # own whose cells no longer reach into the first question, nor a busy or unsettled one.
    assert table.claim_own([*system, *other, 5], own_from=51, key="mine") is None
    assert table.claim_own(head, own_from=51, key="someone else") is None
    assert table.claim_own(head, own_from=51, key="mine", unsettled={slot.seq_id}) is None
    slot.busy = True
    assert table.claim_own(head, own_from=51, key="mine") is None
    slot.busy = False
    del slot.tokens[50:]
    assert table.claim_own(head, own_from=51, key="mine") is None
