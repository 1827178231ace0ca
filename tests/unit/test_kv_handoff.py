"""The KV handoff's wire format and placement (pure): a transfer decodes to what was
encoded; another fingerprint, a foreign body or a bad header are refused with the reason
that is counted; on a join only the conversations the joiner now owns are handed to it."""

from __future__ import annotations

import json
import struct

import pytest

from chatbot.core.affinity import HashRing
from chatbot.llm.batched_engine import SavedKv
from chatbot.peers.handoff import MAGIC, Refused, _new_owner, decode, encode

SAVED = SavedKv("db:one", [1, 2, 3, 4], b"\x00\x01state")


def test_a_transfer_decodes_to_what_was_encoded():
    assert decode(encode("fp", SAVED), "fp") == SAVED


@pytest.mark.parametrize(("body", "result"), [
    (encode("other", SAVED), "refused_mismatch"),
    (b"GET / HTTP/1.1", "refused_invalid"),
    (MAGIC + struct.pack(">I", 10**6) + b"{}", "refused_invalid"),
    (MAGIC + struct.pack(">I", 2) + b"{}", "refused_invalid"),
    (MAGIC + struct.pack(">I", 60) + json.dumps(
        {"fingerprint": "fp", "key": "k", "tokens": ["1"]}).encode().ljust(60), "refused_invalid"),
    (MAGIC + struct.pack(">I", 50) + json.dumps(
        {"fingerprint": "fp", "key": "", "tokens": [1]}).encode().ljust(50), "refused_invalid"),
])
def test_a_transfer_from_another_model_or_not_a_transfer_is_refused(body, result):
    with pytest.raises(Refused) as refused:
        decode(body, "fp")
    assert refused.value.result == result


def test_a_joining_replica_gets_only_the_conversations_it_now_owns():
    before = HashRing(["a", "b"])
    after = HashRing(["a", "b", "c"])
    keys = [f"db:{i}" for i in range(300)]
    owner = _new_owner(after, set(), {"c"})
    moved = [k for k in keys if owner(k) is not None]
    assert all(owner(k) == "c" for k in moved)
    assert 50 < len(moved) < 150  # about a third
    assert all(after.owner(k) == before.owner(k) for k in keys if k not in moved)
