"""At least 25 bad inputs, each with its precise 4xx and a JSON message naming the field."""

from __future__ import annotations

import json

import pytest

OK_DB = "b440780c-cbaa-454f-a8d2-cf884786d89f"
OFFICE = {"input_data": "안녕하세요"}
CHAR = {"input_data": "Hi!", "character_name": "Rachel", "greeting": "Hello.",
        "context": "A shy student."}


def office(**changes):
    return {**OFFICE, **changes}


def char(**changes):
    body = {**CHAR, **changes}
    return {k: v for k, v in body.items() if v is not ...}


# (id, path, body or raw bytes, content type, expected status, field named in the message)
CASES = [
    ("empty input", "/office/Llama", office(input_data=""), None, 422, "input_data"),
    ("whitespace input", "/office/Llama", office(input_data="   \n\t"), None, 422, "input_data"),
    ("501 characters", "/office/Llama", office(input_data="가" * 501), None, 422, "input_data"),
    ("input is a number", "/office/Llama", office(input_data=42), None, 422, "input_data"),
    ("input is null", "/office/Llama", office(input_data=None), None, 422, "input_data"),
    ("input is a list", "/office/Llama", office(input_data=["hi"]), None, 422, "input_data"),
    ("input missing", "/office/Llama", {"google_access": True}, None, 422, "input_data"),
    ("google_access is a string", "/office/Llama", office(google_access="true"), None, 422,
     "google_access"),
    ("google_access is 1", "/office/Llama", office(google_access=1), None, 422, "google_access"),
    ("db_id not a UUID", "/office/Llama", office(db_id="test-uuid", user_id="u1"), None, 422,
     "db_id"),
    ("db_id a number", "/office/Llama", office(db_id=123, user_id="u1"), None, 422, "db_id"),
    ("db_id without user_id", "/office/Llama", office(db_id=OK_DB), None, 422, "user_id"),
    ("user_id without db_id", "/office/Llama", office(user_id="u1"), None, 422, "db_id"),
    ("user_id empty", "/office/Llama", office(db_id=OK_DB, user_id=""), None, 422, "user_id"),
    ("user_id 51 chars", "/office/Llama", office(db_id=OK_DB, user_id="u" * 51), None, 422,
     "user_id"),
    ("user_id with $", "/office/Llama", office(db_id=OK_DB, user_id="a$b"), None, 422,
     "user_id"),
    ("unknown field", "/office/Llama", office(question="?"), None, 422, "question"),
    ("body is a JSON string", "/office/Llama", "hello", None, 422, "body"),
    ("body is a JSON list", "/office/Llama", [OFFICE], None, 422, "body"),
    ("character name missing", "/character/Llama", char(character_name=...), None, 422,
     "character_name"),
    ("character greeting blank", "/character/Llama", char(greeting="  "), None, 422,
     "greeting"),
    ("character context missing", "/character/Llama", char(context=...), None, 422, "context"),
    ("character context too long", "/character/Llama", char(context="x" * 4001), None, 422,
     "context"),
    ("character input 501", "/character/Llama", char(input_data="a" * 501), None, 422,
     "input_data"),
    ("character name a number", "/character/Llama", char(character_name=7), None, 422,
     "character_name"),
    ("non-JSON body", "/office/Llama", b'{"input_data": "hi"', "application/json", 400,
     "body"),
    ("form-encoded body", "/office/Llama", b"input_data=hi", "application/x-www-form-urlencoded",
     415, "Content-Type"),
    ("text/plain body", "/character/Llama", json.dumps(CHAR).encode(), "text/plain", 415,
     "Content-Type"),
    ("no content type", "/office/Llama", json.dumps(OFFICE).encode(), "", 415, "Content-Type"),
    ("oversized body", "/office/Llama", office(input_data="a" * 70_000), None, 413, "body"),
    ("persona context beyond the model's context", "/character/Llama",
     char(greeting="뷁" * 2000, context="뷁" * 4000), None, 400, "context"),
    ("/v1 messages beyond the model's context", "/office/v1/chat/completions",
     {"messages": [{"role": "user", "content": "뷁" * 8000}]}, None, 400, "context"),
    ("/v1 streamed messages beyond the model's context", "/character/v1/chat/completions",
     {"messages": [{"role": "user", "content": "뷁" * 8000}], "stream": True}, None, 400,
     "context"),
    ("unknown GPT model (office)", "/office/gpt5", OFFICE, None, 400, None),
    ("unknown GPT model (character)", "/character/llama2", CHAR, None, 400, None),
]


@pytest.mark.parametrize(("path", "body", "content_type", "status", "field"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_its_precise_4xx(gateway, path, body, content_type, status, field):
    if isinstance(body, bytes):
        headers = {"Content-Type": content_type} if content_type else {}
        request = {"content": body, "headers": headers}
    elif content_type is not None:
        request = {"content": json.dumps(body).encode(), "headers": {"Content-Type": content_type}}
    else:
        request = {"json": body}
    with gateway.client() as http:
        r = http.post(path, **request)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    payload = r.json()
    if field is None:
        assert payload == {"detail": "Invalid model name."}
    else:
        assert field in payload["detail"], payload
    if status == 400 and field == "context":  # names the token counts
        assert payload["code"] == "context_length_exceeded", payload
        assert payload["prompt_tokens"] > payload["context_tokens"], payload


def test_the_table_is_big_enough():
    assert len(CASES) >= 25


def test_body_validation_runs_before_the_model_name_check(gateway):
    with gateway.client() as http:
        r = http.post("/office/gpt5", json={"input_data": ""})
    assert r.status_code == 422 and "input_data" in r.json()["detail"]


def test_known_gpt_model_without_a_key_is_503_with_a_clear_message(gateway):
    with gateway.client() as http:
        r = http.post("/office/gpt4.1_mini", json=OFFICE)
    assert r.status_code == 503
    assert "OPENAI_API_KEY" in r.json()["detail"]


def test_a_chunked_body_over_the_limit_is_413(gateway):
    def chunks():
        yield b'{"input_data": "'
        for _ in range(80):
            yield b"a" * 1024
        yield b'"}'

    with gateway.client() as http:
        r = http.post("/office/Llama", content=chunks(),
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["detail"]
