"""API keys: the keys file, the door (401/403/429), reloading, budgets, fair admission.

The service in process (create_app with scripted engines, TestClient, lifespan included);
the budgets shared in MongoDB are checked against FerretDB in tests/service.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest
from fastapi.testclient import TestClient

from chatbot.composition_root import create_app
from chatbot.core.admission_queue import AdmissionQueue
from chatbot.core.budgets import Budgets
from chatbot.core.callers import current_caller
from chatbot.domain.api_keys import KeysFileError, find_key, key_hash, parse_keys
from chatbot.domain.errors import QueueFullError, RateLimitedError
from chatbot.domain.personas import Persona
from chatbot.settings import CharacterSettings, OfficeSettings, Settings
from tests.support.engines import ScriptedEngine

ANSWER = ["A scripted ", "answer, ", "long enough."]  # 3 generated tokens
OFFICE = {"input_data": "회의록을 잘 쓰는 방법을 알려주세요.", "google_access": False}
V1 = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}

LOCAL_KEY = "sk-local-0123456789abcdef"
GPT_KEY = "sk-gpt-0123456789abcdef0"
BIG = {"requestsPerMinute": 1000, "tokensPerMinute": 100000}


def _entry(name, key, routes, budgets=None, hashed=False):
    secret = {"sha256": key_hash(key)} if hashed else {"key": key}
    return {"name": name, **secret, "routes": routes, "budgets": budgets or BIG}


def _write_keys(path, entries) -> None:
    """Writes the file the way the kubelet updates a mounted Secret: a new file, then an
    atomic rename over the old name (a new inode at the same path)."""
    tmp = path.with_suffix(".new")
    tmp.write_text(json.dumps({"keys": entries}))
    os.replace(tmp, path)


def _client(tmp_path, entries, **settings) -> TestClient:
    keys = tmp_path / "keys.json"
    if entries is not None:
        _write_keys(keys, entries)
    config = Settings(history_path=tmp_path / "history.sqlite3", search="none",
                      office=OfficeSettings(), character=CharacterSettings(),
                      api_keys_file=keys, api_keys_reload_s=0.05, **settings)
    engines = {p: ScriptedEngine(ANSWER) for p in Persona}
    return TestClient(create_app(config, engines=engines))


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# -- the file ------------------------------------------------------------------------------

def test_a_keys_file_with_no_budget_a_negative_budget_or_a_duplicate_name_names_the_entry():
    entries = [
        _entry("web", LOCAL_KEY, ["local"]),
        {"name": "nobudget", "key": "sk-nobudget-0123456789", "routes": ["local"]},
        _entry("negative", "sk-negative-0123456789", ["v1"],
               {"requestsPerMinute": 10, "tokensPerMinute": -5}),
        _entry("web", GPT_KEY, ["gpt"]),
        _entry("odd", "sk-odd-route-0123456789", ["admin"]),
    ]
    with pytest.raises(KeysFileError) as caught:
        parse_keys(json.dumps(entries))
    problems = caught.value.problems
    assert any(p.startswith("keys[1] (nobudget): budgets: is required") for p in problems)
    assert any(p.startswith("keys[2] (negative): budgets.tokensPerMinute:") and "greater than 0"
               in p for p in problems), problems
    assert any(p.startswith("keys[3] (web): duplicate name (also keys[0])") for p in problems)
    assert any(p.startswith("keys[4] (odd): routes.0:") for p in problems), problems
    assert not any("keys[0]" in p.split(":")[0] for p in problems)


def test_a_key_is_found_by_its_hash_and_the_file_may_hold_the_hash_only():
    keys = parse_keys(json.dumps([_entry("web", LOCAL_KEY, ["local"]),
                                  _entry("batch", GPT_KEY, ["gpt"], hashed=True)]))
    assert find_key(keys, GPT_KEY).name == "batch"
    assert find_key(keys, LOCAL_KEY).name == "web"
    assert find_key(keys, LOCAL_KEY + "x") is None
    assert "sk-" not in repr(keys)  # only hashes are held


# -- the door --------------------------------------------------------------------------------

def test_no_key_a_wrong_key_a_key_for_another_route_and_a_valid_key_get_401_401_403_200(
        tmp_path):
    entries = [_entry("web", LOCAL_KEY, ["local", "v1"]), _entry("batch", GPT_KEY, ["gpt"])]
    with _client(tmp_path, entries) as client:
        none = client.post("/office/Llama", json=OFFICE)
        wrong = client.post("/office/Llama", json=OFFICE, headers=_bearer("sk-wrong-0123456789"))
        other = client.post("/office/Llama", json=OFFICE, headers=_bearer(GPT_KEY))
        valid = client.post("/office/Llama", json=OFFICE, headers=_bearer(LOCAL_KEY))
        by_header = client.post("/character/v1/chat/completions", json=V1,
                                headers={"X-API-Key": LOCAL_KEY})
        gpt_refused = client.post("/office/gpt4.1", json=OFFICE, headers=_bearer(LOCAL_KEY))
        gpt_let_in = client.post("/office/gpt4.1", json=OFFICE, headers=_bearer(GPT_KEY))
        open_paths = [client.get(f"/office/{p}").status_code
                      for p in ("healthz", "readyz", "metrics")]
    assert [none.status_code, wrong.status_code, other.status_code, valid.status_code] == \
        [401, 401, 403, 200]
    assert none.headers["www-authenticate"] == "Bearer"
    assert none.json()["code"] == "API_KEY_REQUIRED"
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert wrong.json()["code"] == "API_KEY_INVALID"
    assert other.json()["code"] == "ROUTE_NOT_ALLOWED" and "'batch'" in other.json()["detail"]
    assert valid.json() == "A scripted answer, long enough."
    assert by_header.status_code == 200
    assert gpt_refused.status_code == 403
    # Past the door: no OpenAI configured here, so the GPT route itself answers 503.
    assert gpt_let_in.status_code == 503
    assert open_paths == [200, 200, 200]


def test_without_a_keys_file_setting_every_route_stays_open(tmp_path):
    config = Settings(history_path=tmp_path / "h.sqlite3", search="none")
    engines = {p: ScriptedEngine(ANSWER) for p in Persona}
    with TestClient(create_app(config, engines=engines)) as client:
        assert client.post("/office/Llama", json=OFFICE).status_code == 200
        assert "ApiKeyBearer" not in json.dumps(client.get("/office/openapi.json").json())


def test_the_openapi_document_names_401_403_and_429_rate_limited_on_guarded_routes_only(
        tmp_path):
    with _client(tmp_path, [_entry("web", LOCAL_KEY, ["local"])]) as client:
        doc = client.get("/office/openapi.json").json()
    llama = doc["paths"]["/Llama"]["post"]
    assert {"401", "403", "429"} <= set(llama["responses"])
    assert "RATE_LIMITED" in llama["responses"]["429"]["description"]
    assert "QUEUE" in llama["responses"]["429"]["description"].upper()  # the queue's 429 too
    assert {"ApiKeyBearer", "ApiKeyHeader"} <= set(doc["components"]["securitySchemes"])
    assert "401" in doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    for open_path in ("/healthz", "/readyz", "/metrics"):
        operation = doc["paths"][open_path]["get"]
        assert not operation.get("security") and "401" not in operation["responses"]


# -- reloading -------------------------------------------------------------------------------

def test_a_rotated_key_takes_effect_without_a_restart_and_a_malformed_file_keeps_the_last(
        tmp_path):
    new_key = "sk-rotated-0123456789abc"
    keys = tmp_path / "keys.json"
    with _client(tmp_path, [_entry("web", LOCAL_KEY, ["local"])]) as client:
        assert client.post("/office/Llama", json=OFFICE, headers=_bearer(LOCAL_KEY)).is_success
        _write_keys(keys, [_entry("web", new_key, ["local"])])
        time.sleep(0.1)  # past the reload interval (0.05 s here)
        old = client.post("/office/Llama", json=OFFICE, headers=_bearer(LOCAL_KEY))
        new = client.post("/office/Llama", json=OFFICE, headers=_bearer(new_key))
        _write_keys(keys, [_entry("web", LOCAL_KEY, ["local"], {"requestsPerMinute": 5})])
        time.sleep(0.1)
        kept = client.post("/office/Llama", json=OFFICE, headers=_bearer(new_key))
        ready = client.get("/office/readyz").json()["api_keys"]
    assert (old.status_code, new.status_code) == (401, 200)
    assert kept.status_code == 200  # the malformed file did not replace the good keys
    assert ready["state"] == "error" and ready["names"] == ["web"]
    assert "keys[0] (web): budgets.tokensPerMinute: is required" in ready["detail"]


def test_a_keys_file_that_was_never_good_accepts_no_key(tmp_path):
    keys = tmp_path / "keys.json"
    keys.write_text("{not json")
    with _client(tmp_path, None) as client:
        r = client.post("/office/Llama", json=OFFICE, headers=_bearer(LOCAL_KEY))
        ready = client.get("/office/readyz").json()["api_keys"]
    assert r.status_code == 401
    assert ready["state"] == "error" and "not valid JSON" in ready["detail"]


# -- budgets ---------------------------------------------------------------------------------

def test_a_key_over_its_token_budget_gets_429_rate_limited_and_another_key_is_answered(
        tmp_path):
    entries = [_entry("small", LOCAL_KEY, ["local"],
                      {"requestsPerMinute": 100, "tokensPerMinute": 5}),
               _entry("other", GPT_KEY, ["local"])]
    with _client(tmp_path, entries) as client:
        codes = [client.post("/office/Llama", json=OFFICE, headers=_bearer(LOCAL_KEY))
                 for _ in range(3)]
        other = client.post("/office/Llama", json=OFFICE, headers=_bearer(GPT_KEY))
        metrics = client.get("/office/metrics").text
    # 3 tokens each: the first two are admitted (0 and 3 < 5 used), the third is refused.
    assert [r.status_code for r in codes] == [200, 200, 429]
    refused = codes[2]
    body = refused.json()
    assert body["code"] == "RATE_LIMITED" and body["budget"]["name"] == "tokensPerMinute"
    assert body["budget"] == {"name": "tokensPerMinute", "limit": 5, "used": 6, "window_s": 60}
    assert 1 <= int(refused.headers["retry-after"]) <= 60 == body["budget"]["window_s"]
    assert other.status_code == 200
    assert 'chatbot_api_key_tokens_total{key="small",persona="office"} 6.0' in metrics
    assert ('chatbot_api_key_requests_total{key="small",persona="office",route="local"} 2.0'
            in metrics)
    assert ('chatbot_api_key_refusals_total{key="small",persona="office",'
            'reason="tokensPerMinute"} 1.0') in metrics


def test_a_v1_stream_charges_its_tokens_to_the_key(tmp_path):
    entries = [_entry("web", LOCAL_KEY, ["v1"], {"requestsPerMinute": 10,
                                                 "tokensPerMinute": 3})]
    with _client(tmp_path, entries) as client:
        stream = client.post("/office/v1/chat/completions", json={**V1, "stream": True},
                             headers=_bearer(LOCAL_KEY))
        after = client.post("/office/v1/chat/completions", json=V1, headers=_bearer(LOCAL_KEY))
        metrics = client.get("/office/metrics").text
    assert stream.status_code == 200 and "[DONE]" in stream.text
    assert after.status_code == 429 and after.json()["code"] == "RATE_LIMITED"
    assert 'chatbot_api_key_tokens_total{key="web",persona="office"} 3.0' in metrics


def test_an_answer_is_charged_to_its_key_before_its_last_piece_reaches_the_client():
    """Else the key's next request, sent the moment the answer arrives, can be admitted
    before the charge is stored: one answer more past the budget per client thread."""
    from prometheus_client import CollectorRegistry
    from starlette.responses import JSONResponse, StreamingResponse

    from chatbot.api.auth import ApiKeyUsageMiddleware, KeyGuard, KeyMetrics

    events: list[str] = []

    class Recording:
        async def charge(self, name: str, tokens: int) -> None:
            await asyncio.sleep(0.01)  # a store's round trip
            events.append(f"charged {name} {tokens}")

    async def answer(scope, receive, send):
        scope["state"]["api_key"] = "web"
        if scope["path"] == "/stream":
            async def pieces():
                yield b"data: 1\n\n"
                scope["state"]["api_key_tokens"] = 7  # what record_tokens does
                yield b"data: [DONE]\n\n"
            response = StreamingResponse(pieces(), media_type="text/event-stream")
        else:
            response = JSONResponse({"a": 1}, headers={"X-Prompt-Tokens": "4",
                                                       "X-Generated-Tokens": "2"})
        await response(scope, receive, send)

    metrics = KeyMetrics("office", CollectorRegistry())
    app = ApiKeyUsageMiddleware(answer, KeyGuard(None, Recording()), metrics)  # type: ignore[arg-type]

    async def call(path: str) -> None:
        async def receive():
            await asyncio.sleep(3600)  # no disconnect while answering

        async def send(message):
            if message["type"] == "http.response.body" and not message.get("more_body"):
                events.append("last piece sent")

        scope = {"type": "http", "method": "POST", "path": path, "headers": [],
                 "query_string": b"", "state": {}}
        await app(scope, receive, send)

    asyncio.run(call("/json"))
    asyncio.run(call("/stream"))
    assert events == ["charged web 6", "last piece sent", "charged web 7", "last piece sent"]


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_refuse_until_the_window_ends_then_the_key_is_answered_again():
    key = parse_keys(json.dumps([_entry("web", LOCAL_KEY, ["local"],
                                        {"requestsPerMinute": 2, "tokensPerMinute": 100})]))[0]
    clock = _Clock(6000.0 + 45.5)  # 45.5 s into a window

    async def scenario():
        budgets = Budgets(None, clock=clock)
        await budgets.admit(key)
        await budgets.admit(key)
        with pytest.raises(RateLimitedError) as caught:
            await budgets.admit(key)
        clock.now += caught.value.retry_after_s
        await budgets.admit(key)  # a new window
        return caught.value

    refused = asyncio.run(scenario())
    assert refused.budget == "requestsPerMinute" and refused.retry_after_s == 15


def test_without_the_shared_store_a_replica_enforces_its_share_of_each_budget():
    key = parse_keys(json.dumps([_entry("web", LOCAL_KEY, ["local"],
                                        {"requestsPerMinute": 10, "tokensPerMinute": 100})]))[0]

    async def scenario():
        budgets = Budgets(None, replicas=2, clock=_Clock(60.0))
        admitted = 0
        with pytest.raises(RateLimitedError):
            for _ in range(10):
                await budgets.admit(key)
                admitted += 1
        return admitted, budgets.status()

    admitted, status = asyncio.run(scenario())
    assert admitted == 5
    assert status["state"] == "local" and "1/2" in status["detail"]


# -- fair admission --------------------------------------------------------------------------

def test_one_key_with_many_queued_requests_cannot_keep_another_keys_request_waiting():
    async def scenario():
        adm = AdmissionQueue(1, 16, lambda: 1.0)
        order: list[str] = []
        release = asyncio.Event()

        async def request(caller: str, name: str) -> None:
            current_caller.set(caller)
            async with adm.slot():
                order.append(name)
                await release.wait()
                release.clear()

        flood = [asyncio.create_task(request("a", f"a{i}")) for i in range(8)]
        await asyncio.sleep(0)
        single = asyncio.create_task(request("b", "b0"))
        await asyncio.sleep(0)
        assert adm.active == 1 and adm.waiting == 8
        while len(order) < 9:
            await asyncio.sleep(0)
            release.set()
            await asyncio.sleep(0)
        await asyncio.gather(*flood, single)
        return order

    order = asyncio.run(scenario())
    assert order[:2] == ["a0", "b0"]  # b waited for the one answer in progress, no more
    assert order[2:] == [f"a{i}" for i in range(1, 8)]  # a's own requests keep their order


def test_the_admission_queue_sees_which_key_asks(tmp_path):
    seen = []

    class Recording(ScriptedEngine):
        async def stream(self, messages, params):
            seen.append(current_caller.get())
            async for piece in super().stream(messages, params):
                yield piece

    keys = tmp_path / "keys.json"
    _write_keys(keys, [_entry("web", LOCAL_KEY, ["local"])])
    config = Settings(history_path=tmp_path / "h.sqlite3", search="none", api_keys_file=keys)
    engines = {p: Recording(ANSWER) for p in Persona}
    with TestClient(create_app(config, engines=engines)) as client:
        assert client.post("/office/Llama", json=OFFICE, headers=_bearer(LOCAL_KEY)).is_success
    assert seen == ["web"]


def test_the_pods_report_the_keys_they_read_and_a_refused_file_into_their_chatbotmodel(
        tmp_path, monkeypatch):
    from chatbot import status_report

    sent = []
    monkeypatch.setattr(status_report, "send", lambda settings, body: sent.append(body))
    keys = tmp_path / "keys.json"
    _write_keys(keys, [_entry("web", LOCAL_KEY, ["local"])])
    config = Settings(history_path=tmp_path / "h.sqlite3", search="none", api_keys_file=keys,
                      api_keys_reload_s=0.05, status_report="ns1/chat", pod_name="chat-office-1")
    engines = {p: ScriptedEngine(ANSWER) for p in Persona}

    def reports(state):
        return [b["status"]["apiKeys"] for b in sent if "apiKeys" in b["status"]
                and state in {e["state"] for e in b["status"]["apiKeys"].values()}]

    with TestClient(create_app(config, [Persona.OFFICE], engines=engines)) as client:
        deadline = time.monotonic() + 10
        while not reports("ok") and time.monotonic() < deadline:
            time.sleep(0.01)
        _write_keys(keys, [_entry("web", LOCAL_KEY, ["local"]),
                           {"name": "batch", "key": GPT_KEY, "routes": ["gpt"]}])
        time.sleep(0.1)
        assert client.post("/Llama", json=OFFICE, headers=_bearer(LOCAL_KEY)).is_success
        while not reports("error") and time.monotonic() < deadline:
            time.sleep(0.01)
    ok, error = reports("ok")[0]["office"], reports("error")[0]["office"]
    assert (ok["pod"], ok["names"]) == ("chat-office-1", ["web"])
    assert error["names"] == ["web"]  # still in force
    assert "keys[1] (batch): budgets: is required" in error["detail"]


def test_one_keys_burst_leaves_room_in_the_queue_for_another_key():
    async def scenario():
        adm = AdmissionQueue(1, 8, lambda: 1.0)
        release = asyncio.Event()
        refused: list[str] = []

        async def request(caller: str | None) -> None:
            current_caller.set(caller)
            try:
                async with adm.slot():
                    await release.wait()
            except QueueFullError as exc:
                refused.append(f"{caller}: {exc.message}")

        burst = [asyncio.create_task(request("a")) for _ in range(12)]
        await asyncio.sleep(0)
        waiting_a = adm.waiting  # one runs, a's share of the 8 places waits
        other = asyncio.create_task(request("b"))
        await asyncio.sleep(0)
        waiting_after_b = adm.waiting
        release.set()
        await asyncio.gather(*burst, other)
        return waiting_a, waiting_after_b, refused

    waiting_a, waiting_after_b, refused = asyncio.run(scenario())
    assert waiting_a == 4  # ceil(8 / 2): half the queue kept for a caller yet to come
    assert waiting_after_b == 5 and not any(r.startswith("b") for r in refused)
    assert len(refused) == 7 and "'a' holds its share of the queue (4 of 8 places)" in refused[0]


def test_without_keys_the_queue_is_one_fifo_as_before():
    async def scenario():
        adm = AdmissionQueue(1, 8, lambda: 1.0)
        release = asyncio.Event()

        async def request() -> None:
            async with adm.slot():
                await release.wait()

        tasks = [asyncio.create_task(request()) for _ in range(9)]
        await asyncio.sleep(0)
        waiting = adm.waiting
        release.set()
        await asyncio.gather(*tasks)
        return waiting

    assert asyncio.run(scenario()) == 8


def test_the_playground_page_stays_open_and_its_turn_needs_a_key_and_spends_its_budget(
        tmp_path):
    entries = [_entry("web", LOCAL_KEY, ["local"], {"requestsPerMinute": 10,
                                                    "tokensPerMinute": 3})]
    with _client(tmp_path, entries) as client:
        page = client.get("/office/")
        anonymous = client.post("/office/playground/chat", json=OFFICE)
        streamed = client.post("/office/playground/chat", json=OFFICE,
                               headers=_bearer(LOCAL_KEY))
        after = client.post("/office/playground/chat", json=OFFICE, headers=_bearer(LOCAL_KEY))
        metrics = client.get("/office/metrics").text
    assert page.status_code == 200 and 'id="api-key"' in page.text
    assert anonymous.status_code == 401
    assert streamed.status_code == 200 and '"done": true' in streamed.text
    assert after.status_code == 429 and after.json()["code"] == "RATE_LIMITED"
    assert 'chatbot_api_key_requests_total{key="web",persona="office",route="local"} 1.0' \
        in metrics
