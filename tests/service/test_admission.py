"""Admission under load: 429 + Retry-After, the 504 deadline, and clients that go away."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.service.test_shutdown import final_counters

LONG = {"input_data": "긴 보고서를 써 주세요."}


def _wait_idle(server, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        perf = server.performance("office")
        if not perf["engine_generating"] and perf["active_connections"] == 0:
            return perf
        time.sleep(0.05)
    raise AssertionError(f"engine still busy after {timeout}s: {perf}")


def test_a_flood_gets_429_with_retry_after_and_everything_else_200(start_server):
    server = start_server(env={"CHATBOT_OFFICE__MAX_QUEUE": "2",
                               "CHATBOT_OFFICE__GENERATION__MAX_TOKENS": "300"})

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            return await asyncio.gather(*(http.post("/office/Llama", json=LONG)
                                          for _ in range(12)))

    responses = asyncio.run(flood())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(200) >= 3  # one running plus a full queue of two
    rejected = [r for r in responses if r.status_code == 429]
    assert rejected, statuses
    for r in rejected:
        body = r.json()
        assert body["code"] == "QUEUE_OVERLOADED"
        assert int(r.headers["retry-after"]) == body["retry_after"] >= 1
        assert body["queue_info"]["max_concurrent"] == 1 and body["queue_info"]["max_queue"] == 2
    perf = _wait_idle(server)
    assert perf["total_requests"] == 12
    assert perf["rejected"] == len(rejected) and perf["succeeded"] == statuses.count(200)


def test_the_deadline_gives_504_and_stops_the_generation(start_server):
    server = start_server(env={"CHATBOT_OFFICE__REQUEST_TIMEOUT_S": "0.4",
                               "CHATBOT_OFFICE__GENERATION__MAX_TOKENS": "6000"})
    with server.client() as http:
        started = time.monotonic()
        r = http.post("/office/Llama", json=LONG)
        elapsed = time.monotonic() - started
    assert r.status_code == 504, r.text
    assert r.json()["code"] == "DEADLINE_EXCEEDED" and "deadline" in r.json()["detail"]
    assert elapsed < 5
    stopped = _wait_idle(server)
    time.sleep(0.5)
    assert (server.performance("office")["engine_generated_tokens"]
            == stopped["engine_generated_tokens"])
    assert stopped["engine_generated_tokens"] < 6000
    assert stopped["failed"] == 1 and stopped["success_rate"] == 0.0


def test_clients_that_disconnect_free_their_slot_and_never_generate(start_server):
    server = start_server(env={"CHATBOT_OFFICE__GENERATION__MAX_TOKENS": "6000"})

    async def impatient() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=0.6) as http:
            results = await asyncio.gather(
                http.post("/office/Llama", json=LONG),  # runs, then its client leaves
                http.post("/office/Llama", json=LONG),  # waits in the queue, then leaves
                return_exceptions=True)
        assert all(isinstance(r, httpx.TimeoutException) for r in results), results

    asyncio.run(impatient())
    idle = _wait_idle(server)
    time.sleep(0.5)
    after = server.performance("office")
    # The queued request never started: no tokens appear after the first one stopped.
    assert after["engine_generated_tokens"] == idle["engine_generated_tokens"]
    assert after["queue_size"] == 0 and after["active_connections"] == 0
    assert after["failed"] == 2


def test_shutdown_stops_a_long_generation_within_the_grace_period(start_server):
    import signal
    import threading

    server = start_server(env={"CHATBOT_OFFICE__GENERATION__MAX_TOKENS": "6000",
                               "CHATBOT_SHUTDOWN_GRACE_S": "1"})
    outcome = {}

    def ask() -> None:
        try:
            outcome["status"] = httpx.post(server.url + "/office/Llama", json=LONG,
                                           timeout=60).status_code
        except httpx.HTTPError as exc:
            outcome["error"] = type(exc).__name__

    asker = threading.Thread(target=ask)
    asker.start()
    deadline = time.monotonic() + 10
    while not server.performance("office")["engine_generating"]:
        assert time.monotonic() < deadline, "the generation never started"
        time.sleep(0.05)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    asker.join(timeout=30)
    assert time.monotonic() - started < 10
    assert server.proc.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    assert outcome.get("status") != 200  # cut short, never a half answer in a 200
    # ... and counted as failed in the counters the server logs last
    office = final_counters(server.log.read_text(errors="replace"))["office"]
    assert (office["failed"], office["succeeded"], office["active_connections"]) == (1, 0, 0)
