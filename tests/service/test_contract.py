"""The seed's API contract, over HTTP against a real `chatbot serve` on tiny models."""

from __future__ import annotations

import math
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

OFFICE_BODY = {"input_data": "회의록을 잘 쓰는 방법을 알려주세요."}
CHARACTER_BODY = {
    "input_data": "*I wave at Rachel with a smile.*",
    "character_name": "Rachel",
    "greeting": "*Rachel stands nervously at the lectern, adjusting her notes...*",
    "context": "Rachel is a shy 19 year old student who loves astronomy.",
}


def test_office_answers_with_a_json_string_and_timing_headers(gateway):
    with gateway.client() as http:
        r = http.post("/office/Llama", json=OFFICE_BODY)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    answer = r.json()
    assert isinstance(answer, str) and answer.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    timing = r.headers["server-timing"]
    for metric in ("queue;dur=", "ttft;dur=", "gen;dur=", "total;dur="):
        assert metric in timing
    assert int(r.headers["x-generated-tokens"]) > 0


def test_character_answers_with_a_json_string(gateway):
    with gateway.client() as http:
        r = http.post("/character/Llama", json=CHARACTER_BODY)
    assert r.status_code == 200, r.text
    assert isinstance(r.json(), str) and r.json().strip()


def test_a_callers_request_id_is_echoed_and_a_bad_one_replaced(gateway):
    with gateway.client() as http:
        mine = http.get("/office/healthz", headers={"X-Request-ID": "trace-123"})
        bad = http.get("/office/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert mine.headers["x-request-id"] == "trace-123"
    assert re.fullmatch(r"[0-9a-f]{32}", bad.headers["x-request-id"])


def test_gateway_routes_each_prefix_to_its_persona(gateway):
    with gateway.client() as http:
        for persona in ("office", "character"):
            assert http.get(f"/{persona}/healthz").json() == {"status": "ok"}
            ready = http.get(f"/{persona}/readyz").json()
            assert ready["persona"] == persona
        assert http.get("/office/readyz").json()["model"] == "tiny-office.Q4_1.gguf"
        assert http.get("/character/readyz").json()["model"] == "tiny-character.Q4_0.gguf"


def test_unmatched_paths_get_the_html_404_page(gateway):
    with gateway.client() as http:
        for path in ("/", "/nope", "/officex/Llama", "/v1/chat", "/office_Llama"):
            r = http.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"].startswith("text/html")
            assert "404 - 없는 페이지입니다" in r.text and "Page not found" in r.text
        assert http.post("/Llama", json=OFFICE_BODY).status_code == 404


def test_an_unknown_path_inside_a_persona_is_the_page_and_its_own_errors_stay_json(gateway):
    with gateway.client() as http:
        missing = http.get("/office/no/such/thing")
        wrong_method = http.get("/character/Llama")
        invalid = http.post("/office/Llama", json={})
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert "404 - 없는 페이지입니다" in missing.text
    assert wrong_method.status_code == 405 and invalid.status_code == 422
    for r in (wrong_method, invalid):
        assert r.headers["content-type"] == "application/json"
        assert r.json()["detail"]


def test_docs_work_behind_the_prefixes(gateway):
    with gateway.client() as http:
        for persona in ("office", "character"):
            docs = http.get(f"/{persona}/docs")
            assert docs.status_code == 200
            assert f"/{persona}/openapi.json" in docs.text
            spec = http.get(f"/{persona}/openapi.json").json()
            assert "/Llama" in spec["paths"] and "/performance" in spec["paths"]


def test_one_persona_at_the_root_keeps_docs_behind_a_stripping_proxy(start_server):
    server = start_server("office", env={"CHATBOT_ROOT_PATH": "/office"})
    with server.client() as http:
        assert http.post("/Llama", json=OFFICE_BODY).status_code == 200
        assert "/office/openapi.json" in http.get("/docs").text
        assert http.get("/character/healthz").status_code == 404


def test_readyz_reports_gpu_offload(gateway):
    with gateway.client() as http:
        office = http.get("/office/readyz").json()["engine"]
        character = http.get("/character/readyz").json()["engine"]
    assert office["gpu_layers_requested"] == -1 and character["gpu_layers_requested"] == 50
    # This machine's llama.cpp has no GPU backend, so nothing is really offloaded.
    assert office["gpu_offload_supported"] is False and office["gpu_layers_offloaded"] == 0
    assert office["n_ctx"] >= 8191 and office["n_batch"] == 2048 and office["flash_attn"] is True


def test_readyz_and_the_log_say_which_llama_cpp_build_was_loaded(gateway):
    with gateway.client() as http:
        build = http.get("/office/readyz").json()["engine"]["llama_cpp"]
    assert build["llama_cpp_python"] == "0.3.36"
    assert "CPU" in build["backends"] and build["amx"] is False
    assert "AVX2" in build["cpu_features"], build  # the portable x86-64-v3 build
    assert "AVX2 = 1" in build["system_info"]
    assert "CPU features AVX" in gateway.log.read_text()  # logged at start-up


def test_metrics_expose_latency_queue_inflight_tokens_and_ttft(gateway):
    with gateway.client() as http:
        assert http.post("/character/Llama", json=CHARACTER_BODY).status_code == 200
        text = http.get("/character/metrics").text
    for name in ("chatbot_request_duration_seconds_bucket", "chatbot_queue_depth",
                 "chatbot_requests_in_flight", "chatbot_generated_tokens_total",
                 "chatbot_time_to_first_token_seconds_count", "chatbot_engine_generated_tokens"):
        assert name in text, name
    assert 'route="/Llama"' in text and 'persona="character"' in text


def test_performance_numbers_match_the_traffic_sent(start_server):
    server = start_server()  # a fresh process: counters start at zero
    latencies = []
    with server.client() as http:
        before = http.get("/office/performance").json()
        assert before["total_requests"] == 0
        for _ in range(3):
            r = http.post("/office/Llama", json=OFFICE_BODY)
            assert r.status_code == 200
            latencies.append(r.elapsed.total_seconds())
        assert http.post("/office/Llama", json={"input_data": ""}).status_code == 422
        perf = http.get("/office/performance").json()
    assert perf["total_requests"] == 3  # invalid bodies are not service traffic
    assert perf["success_rate"] == 100.0
    assert perf["max_concurrent"] == 1 and perf["active_connections"] == 0
    assert 0 < perf["avg_response_time"] <= max(latencies)
    assert perf["p50_response_time"] <= perf["p95_response_time"] <= max(latencies)
    assert perf["tokens_per_second"] > 0 and perf["generated_tokens"] > 0
    assert perf["model"] == "tiny-office.Q4_1.gguf" and perf["queue_size"] == 0


def test_two_personas_on_the_same_file_share_one_model_instance(start_server, tiny_models):
    model = str(tiny_models["office"])
    server = start_server(env={"CHATBOT_OFFICE_MODEL": model, "CHATBOT_CHARACTER_MODEL": model})
    with server.client() as http:
        before = http.get("/character/performance").json()["engine_generated_tokens"]
        assert http.post("/office/Llama", json=OFFICE_BODY).status_code == 200
        after = http.get("/character/performance").json()["engine_generated_tokens"]
        office_ready = http.get("/office/readyz").json()["engine"]
        character_ready = http.get("/character/readyz").json()["engine"]
    assert after > before  # office's tokens came from the instance character uses too
    assert office_ready == character_ready


def llamacpp_metrics(http) -> dict[str, float]:
    """The unlabelled `llamacpp:*` samples of a persona's /metrics."""
    values = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("llamacpp:"):
            name, value = line.split(" ")
            values[name.removeprefix("llamacpp:")] = float(value)
    return values


def test_llama_server_metric_names_follow_the_traffic(start_server):
    """An autoscaler written for llama-server reads the same names here, and they move with
    the traffic: tokens, decode calls, busy slots, requests deferred, KV cells."""
    server = start_server("office", env={  # a fresh process: counters start at zero
        "CHATBOT_OFFICE__MAX_CONCURRENT": "2",
        "CHATBOT_OFFICE__GENERATION__MAX_TOKENS": "64",
        "CHATBOT_OFFICE__GENERATION__TEMPERATURE": "0",
        "CHATBOT_OFFICE__MODEL__N_THREADS": "1",  # no spin-waiting threads on a busy machine
        "CHATBOT_OFFICE__MODEL__PROMPT_TOKENS_PER_STEP": "64",
    })
    with server.client() as http:
        idle = llamacpp_metrics(http)
        engine = http.get("/readyz").json()["engine"]
        first = http.post("/Llama", json=OFFICE_BODY)
        once = llamacpp_metrics(http)
        second = http.post("/Llama", json=OFFICE_BODY)  # the same prompt: all but 1 cached
        twice = llamacpp_metrics(http)
    assert first.status_code == second.status_code == 200
    for name in ("prompt_tokens_total", "prompt_tokens_cached_total", "tokens_predicted_total",
                 "n_decode_total", "requests_processing", "requests_deferred",
                 "n_busy_slots_per_decode", "kv_cache_usage_ratio"):
        assert idle[name] == 0, name
    assert idle["kv_cache_cells"] == engine["n_ctx"]  # both sequences' cells
    # Every sampled token counts, the end-of-generation one too (not an answer piece).
    answered = int(first.headers["x-generated-tokens"])
    assert answered <= once["tokens_predicted_total"] <= answered + 1
    prompt = once["prompt_tokens_total"]
    assert prompt > 10 and once["prompt_tokens_cached_total"] == 0
    assert twice["prompt_tokens_total"] == prompt + 1  # only the last token evaluated again
    assert twice["prompt_tokens_cached_total"] == prompt - 1
    # One sequence at a time: a decode call per 64-token prompt chunk, then one per token
    # (the last chunk's call samples the first), one busy slot in each.
    assert once["n_decode_total"] == once["tokens_predicted_total"] + math.ceil(prompt / 64) - 1
    assert once["n_busy_slots_per_decode"] == 1
    assert once["prompt_seconds_total"] > 0 and once["tokens_predicted_seconds_total"] > 0
    assert once["predicted_tokens_seconds"] > 0 and once["prompt_tokens_seconds"] > 0
    assert prompt < once["n_tokens_max"] <= engine["n_ctx_per_sequence"]
    # Idle again: nothing processing, the conversation's cells kept for its next turn.
    assert twice["requests_processing"] == 0 and twice["kv_cache_usage_ratio"] == 0
    assert 0 < twice["kv_cache_tokens"] <= twice["kv_cache_cells"]

    # Four at once on two slots: two decode together, two are deferred.
    def ask(i: int):
        with server.client() as client:
            return client.post("/Llama", json={"input_data": f"Question {i}: the agenda?"})

    seen = {"requests_processing": 0.0, "requests_deferred": 0.0, "kv_cache_usage_ratio": 0.0}
    with ThreadPoolExecutor(4) as pool, server.client() as http:
        answers = [pool.submit(ask, i) for i in range(4)]
        while not all(a.done() for a in answers):
            now = llamacpp_metrics(http)
            for name in seen:
                seen[name] = max(seen[name], now[name])
        after = llamacpp_metrics(http)
    assert [a.result().status_code for a in answers] == [200] * 4
    assert seen["requests_processing"] == 2 and seen["requests_deferred"] >= 1
    assert 0 < seen["kv_cache_usage_ratio"] <= 1
    assert 1 < after["n_busy_slots_per_decode"] <= 2
    assert after["tokens_predicted_total"] > twice["tokens_predicted_total"]


def test_a_conversation_whose_slot_went_to_another_comes_back_from_ram(start_server):
    """One slot, two users: Alice's second turn finds Bob's conversation in the slot, gets
    her own cells back from host RAM, and evaluates only her new question; /metrics and
    /performance count the restored tokens. (The character persona: its prompt holds nothing
    per turn, so all of Alice's first turn comes back; office's turn-1 cells end at her
    question, before that turn's time block, which is less than a restore is worth.)"""
    server = start_server("character", env={
        "CHATBOT_CHARACTER__MAX_CONCURRENT": "1",
        "CHATBOT_CHARACTER__GENERATION__TEMPERATURE": "0",
    })
    alice = {"db_id": str(uuid.uuid4()), "user_id": "alice"}
    bob = {"db_id": str(uuid.uuid4()), "user_id": "bob"}

    def restored(http) -> float:
        for line in http.get("/metrics").text.splitlines():
            if line.startswith("chatbot_engine_prompt_tokens_restored_total{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError("no chatbot_engine_prompt_tokens_restored_total")

    with server.client() as http:
        for body in ({**CHARACTER_BODY, "input_data": "How do I write meeting minutes?", **alice},
                     {**CHARACTER_BODY, "input_data": "What should a project plan hold?",
                      **bob}):
            assert http.post("/Llama", json=body).status_code == 200
        settled = server.settled_performance()  # Bob's turn's prefill done
        before, restored_before = llamacpp_metrics(http), restored(http)
        second = http.post("/Llama", json={**CHARACTER_BODY,
                                           "input_data": "And the action items?", **alice})
        performance = server.settled_performance()  # and Alice's
        after, restored_after = llamacpp_metrics(http), restored(http)
    assert second.status_code == 200
    assert restored_before == 0
    # Alice's first turn (system prompt, question, answer) came back from RAM ...
    assert restored_after > 40
    assert performance["engine_prompt_tokens_restored"] == restored_after
    assert performance["engine_kv_host_restores"] == 1
    # ... and counts as cached, so only the new part was evaluated: what the restored cells
    # did not hold (the new question, and the end of the answer where its replayed text
    # tokenizes otherwise than it was generated), a small share of the prompt.
    assert after["prompt_tokens_cached_total"] - before["prompt_tokens_cached_total"] >= (
        restored_after)
    prompt_tokens = int(second.headers["x-prompt-tokens"])
    evaluated = (after["prompt_tokens_total"] - before["prompt_tokens_total"]
                 - (performance["engine_prompt_tokens_prefilled"]
                    - settled["engine_prompt_tokens_prefilled"]))  # Alice's next turn's
    assert evaluated <= prompt_tokens - restored_after
    assert evaluated < prompt_tokens / 4
