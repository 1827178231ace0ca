"""API key budgets shared by replicas through a real MongoDB-wire server (FerretDB v1, SQLite).

Two `Budgets` on one store stand for two replicas of an installation: what one admits and
charges, the other sees. FerretDB v1's updates are not atomic, which is why the store
inserts one document per event instead of `$inc`-ing a counter: concurrent charges from both
"replicas" must all be counted. With the server killed, each replica enforces its share and
says so; once it is back, the budgets are shared again.
"""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from chatbot.core.budgets import Budgets
from chatbot.domain.api_keys import parse_keys
from chatbot.domain.errors import RateLimitedError
from chatbot.stores.usage_mongo import MongoUsageStore


def _key(rpm: int, tpm: int):
    return parse_keys(json.dumps([{
        "name": "web", "key": "sk-web-0123456789abcdef", "routes": ["local"],
        "budgets": {"requestsPerMinute": rpm, "tokensPerMinute": tpm}}]))[0]


class _Clock:
    """The middle of one window, so that no test straddles two."""

    def __init__(self) -> None:
        self.now = 60.0 * 1000 + 30.0

    def __call__(self) -> float:
        return self.now


def test_two_replicas_share_one_budget_and_concurrent_charges_are_all_counted(ferretdb):
    key = _key(rpm=1000, tpm=400)
    database = f"test_{uuid.uuid4().hex[:8]}"

    async def scenario():
        clock = _Clock()
        stores = [MongoUsageStore(ferretdb.url, database) for _ in range(2)]
        a, b = (Budgets(s, replicas=2, clock=clock) for s in stores)
        try:
            # 40 answers of 10 tokens, charged concurrently from both replicas.
            await asyncio.gather(*(r.charge("web", 10) for r in (a, b) for _ in range(20)))
            totals = await stores[0].totals("web", a.window(clock.now))
            with pytest.raises(RateLimitedError) as on_b:
                await b.admit(key)  # b itself charged only 200 of the 400
            status = a.status()
        finally:
            await a.close()
            await b.close()
        return totals, on_b.value, status

    totals, refused, status = asyncio.run(scenario())
    assert totals.tokens == 400  # not one of the 40 concurrent inserts lost
    assert refused.budget == "tokensPerMinute" and refused.used == 400
    assert status["state"] == "shared"


def test_requests_per_minute_hold_across_replicas(ferretdb):
    key = _key(rpm=6, tpm=10_000)
    database = f"test_{uuid.uuid4().hex[:8]}"

    async def scenario():
        clock = _Clock()
        replicas = [Budgets(MongoUsageStore(ferretdb.url, database), 2, clock=clock)
                    for _ in range(2)]
        admitted = refused = 0
        try:
            for i in range(10):
                try:
                    await replicas[i % 2].admit(key)
                    admitted += 1
                except RateLimitedError:
                    refused += 1
        finally:
            for r in replicas:
                await r.close()
        return admitted, refused

    assert asyncio.run(scenario()) == (6, 4)


def test_while_the_store_is_away_each_replica_enforces_its_share_and_says_so(fresh_ferretdb):
    key = _key(rpm=10, tpm=10_000)

    async def scenario():
        clock = _Clock()
        budgets = Budgets(MongoUsageStore(fresh_ferretdb.url, "budgets", timeout_s=0.5), 2,
                          timeout_s=1.0, retry_store_s=0.2, clock=clock)
        try:
            await budgets.admit(key)
            shared = budgets.status()
            fresh_ferretdb.kill()
            admitted = 1
            with pytest.raises(RateLimitedError) as caught:
                for _ in range(10):
                    await budgets.admit(key)
                    admitted += 1
            away = budgets.status()
            fresh_ferretdb.start()
            clock.now += 60  # a new window
            for _ in range(50):  # the store is tried again every retry_store_s
                await asyncio.sleep(0.2)
                await budgets.admit(key)
                if budgets.shared:
                    break
            back = budgets.status()
        finally:
            await budgets.close()
        return shared, admitted, caught.value, away, back

    shared, admitted, refused, away, back = asyncio.run(scenario())
    assert shared["state"] == "shared"
    assert admitted == 5 and refused.limit == 5  # ceil(10 / 2 replicas), counted here alone
    assert away["state"] == "local share" and "unavailable" in away["detail"]
    assert back["state"] == "shared"


def test_windows_long_past_are_deleted(ferretdb):
    database = f"test_{uuid.uuid4().hex[:8]}"

    async def scenario():
        store = MongoUsageStore(ferretdb.url, database)
        try:
            await store.add("web", 100, 1, 50)
            await store.add("web", 101, 1, 0)
            before = await store.totals("web", 100)
            await store.add("web", 103, 1, 0)  # the first write of a new window sweeps
            return before, await store.totals("web", 100), await store.totals("web", 101)
        finally:
            await store.close()

    before, swept, kept = asyncio.run(scenario())
    assert (before.requests, before.tokens) == (1, 50)
    assert (swept.requests, swept.tokens) == (0, 0)  # 3 windows back: gone
    assert kept.requests == 1  # 2 windows back: still there
