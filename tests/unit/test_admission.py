"""AdmissionQueue: FIFO hand-over, bounded queue, monotonic rejection, cancellation while queued."""

from __future__ import annotations

import asyncio

import pytest

from chatbot.core.admission_queue import AdmissionQueue
from chatbot.domain.errors import QueueFullError


async def _hold(adm: AdmissionQueue, log: list, name: str, release: asyncio.Event) -> None:
    async with adm.slot():
        log.append(name)
        await release.wait()


def test_slots_are_handed_over_in_arrival_order():
    async def scenario():
        adm = AdmissionQueue(1, 10, lambda: 2.0)
        log, gate = [], asyncio.Event()
        tasks = [asyncio.create_task(_hold(adm, log, str(i), gate)) for i in range(4)]
        await asyncio.sleep(0)
        assert adm.active == 1 and adm.waiting == 3
        gate.set()
        await asyncio.gather(*tasks)
        assert log == ["0", "1", "2", "3"] and adm.active == 0

    asyncio.run(scenario())


def test_a_full_queue_rejects_and_rejection_is_monotonic_in_queue_length():
    async def scenario():
        adm = AdmissionQueue(2, 3, lambda: 10.0)
        gate = asyncio.Event()
        tasks = [asyncio.create_task(_hold(adm, [], str(i), gate)) for i in range(5)]
        await asyncio.sleep(0)
        assert adm.active == 2 and adm.waiting == 3
        retry_afters = []
        for _ in range(3):  # every arrival beyond the queue is rejected, none admitted
            with pytest.raises(QueueFullError) as info:
                async with adm.slot():
                    pass
            retry_afters.append(info.value.retry_after_s)
        # 5 ahead, served 2 at a time, 10 s each: 3 rounds
        assert retry_afters == [30, 30, 30]
        assert info.value.queue.waiting == 3 and info.value.queue.max_queue == 3
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_a_waiter_cancelled_in_the_queue_never_runs_and_frees_its_place():
    async def scenario():
        adm = AdmissionQueue(1, 1, lambda: 1.0)
        log, gate = [], asyncio.Event()
        first = asyncio.create_task(_hold(adm, log, "first", gate))
        queued = asyncio.create_task(_hold(adm, log, "queued", gate))
        await asyncio.sleep(0)
        queued.cancel()
        await asyncio.gather(queued, return_exceptions=True)
        assert adm.waiting == 0
        late = asyncio.create_task(_hold(adm, log, "late", gate))  # the place is free again
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, late)
        assert log == ["first", "late"] and adm.active == 0

    asyncio.run(scenario())


def test_retry_after_is_at_least_one_second():
    assert AdmissionQueue(1, 0, lambda: 0.01).retry_after_s() == 1
