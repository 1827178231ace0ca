"""API keys in a real `chatbot serve` on the tiny model: tokens charged as the model's own
tokenizer counts them, two processes sharing one budget through FerretDB."""

from __future__ import annotations

import json
import re

WEB = "sk-web-served-0123456789abc"
OFFICE = {"input_data": "Hello, how are you?", "google_access": False}


def _keys(tmp_path, tpm: int):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps([{
        "name": "web", "key": WEB, "routes": ["local", "v1"],
        "budgets": {"requestsPerMinute": 1000, "tokensPerMinute": tpm}}]))
    return path


def _tokens_charged(metrics: str) -> float:
    match = re.search(r'^chatbot_api_key_tokens_total\{key="web",persona="office"\} (\S+)$',
                      metrics, re.M)
    return float(match.group(1)) if match else 0.0


def test_an_answers_prompt_and_generated_tokens_are_charged_to_its_key(start_server, tmp_path):
    server = start_server("office", env={"CHATBOT_API_KEYS_FILE": str(_keys(tmp_path, 10**6))})
    with server.client() as http:
        assert http.post("/Llama", json=OFFICE).status_code == 401
        r = http.post("/Llama", json=OFFICE, headers={"Authorization": f"Bearer {WEB}"})
        v1 = http.post("/v1/chat/completions", headers={"X-API-Key": WEB}, json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})
        metrics = http.get("/metrics").text
        ready = http.get("/readyz").json()
    assert r.status_code == 200 and v1.status_code == 200
    answer = int(r.headers["x-prompt-tokens"]) + int(r.headers["x-generated-tokens"])
    assert int(r.headers["x-prompt-tokens"]) > 0
    assert _tokens_charged(metrics) == answer + v1.json()["usage"]["total_tokens"]
    assert ready["api_keys"]["names"] == ["web"]
    assert ready["api_keys"]["budgets"]["state"] == "local"


def test_two_processes_share_one_token_budget_through_mongodb(start_server, ferretdb, tmp_path):
    """Each answer of the first process counts against the second's: the second refuses the
    key once both together spent its budget."""
    keys = _keys(tmp_path, 1)  # spent by the first answer
    env = {"CHATBOT_API_KEYS_FILE": str(keys), "MONGO_URL": ferretdb.url,
           "MONGO_DATABASE": f"budgets_{tmp_path.name[-20:]}", "CHATBOT_API_KEYS_REPLICAS": "2"}
    first, second = start_server("office", env=env), start_server("office", env=env)
    auth = {"Authorization": f"Bearer {WEB}"}
    with first.client() as a, second.client() as b:
        for _ in range(2):  # a second try only if a minute window ended in between
            assert a.post("/Llama", json=OFFICE, headers=auth).status_code == 200
            refused = b.post("/Llama", json=OFFICE, headers=auth)
            if refused.status_code != 200:
                break
        ready = b.get("/readyz").json()
    assert refused.status_code == 429 and refused.json()["code"] == "RATE_LIMITED"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert ready["api_keys"]["budgets"]["state"] == "shared"
