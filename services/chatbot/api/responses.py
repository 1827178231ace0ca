"""What every route can answer, as the OpenAPI document states it: each status with the
schema of its body, its content types and headers.

These are the bodies `chatbot.api.errors` (and `BodyLimitMiddleware`'s 413) really send;
tests/unit/test_openapi_contract.py generates requests from the served document and checks
every response against it, so the document and the server cannot drift apart unnoticed.
"""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

_STRING = {"type": "string"}
_INT = {"type": "integer"}

ERROR: Schema = {
    "type": "object", "required": ["detail"],
    "properties": {"detail": {**_STRING, "description": "what went wrong, for a person"},
                   "code": {**_STRING, "description": "what went wrong, for a program"}},
}


def _error(*codes: str, required_code: bool = True, **properties: Schema) -> Schema:
    """An error body whose `code` is one of `codes`, with these further fields."""
    schema = {"type": "object", "required": ["detail", *(["code"] if required_code else [])],
              "properties": {"detail": _STRING, "code": {"enum": list(codes)}, **properties}}
    return schema


FIELD_ERRORS: Schema = {
    "type": "array", "description": "one entry per invalid field",
    "items": {"type": "object", "required": ["field", "reason", "type"],
              "properties": {"field": {**_STRING, "description": "e.g. messages.0.role"},
                             "reason": _STRING, "type": _STRING}},
}
VALIDATION: Schema = _error("VALIDATION_ERROR", errors=FIELD_ERRORS)
MALFORMED_JSON: Schema = _error("MALFORMED_JSON", errors=FIELD_ERRORS)
INVALID_MODEL: Schema = {"type": "object", "required": ["detail"],
                         "properties": {"detail": {"const": "Invalid model name."}},
                         "additionalProperties": False}
CONTEXT_LENGTH: Schema = _error("context_length_exceeded", prompt_tokens=_INT,
                                min_answer_tokens=_INT, context_tokens=_INT)
QUEUE_FULL: Schema = _error(
    "QUEUE_OVERLOADED", error=_STRING, message=_STRING,
    retry_after={**_INT, "description": "seconds; also in the Retry-After header"},
    queue_info={"type": "object", "required": ["active", "waiting", "max_concurrent",
                                               "max_queue"],
                "properties": {k: _INT for k in ("active", "waiting", "max_concurrent",
                                                 "max_queue")}})
SHUTTING_DOWN: Schema = _error("SHUTTING_DOWN", retry_after=_INT)
HTTP_ERROR: Schema = {"type": "object", "required": ["detail"], "properties": {"detail": _STRING}}

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}}}


def _json(description: str, *schemas: Schema, headers: dict | None = None) -> dict:
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": list(schemas)}
    answer: dict = {"description": description,
                    "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def error_responses(*, gpt: bool = False, completions: bool = False) -> dict[int, dict]:
    """The error answers of a chat route (`gpt`: one that calls OpenAI; `completions`:
    `/v1/chat/completions`, whose refusals name unsupported fields)."""
    bad_request = [MALFORMED_JSON, CONTEXT_LENGTH]
    if gpt:
        bad_request.append(INVALID_MODEL)
    unsupported = ("; a field this server does not honour is refused the same way, named "
                   "as not supported") if completions else ""
    responses = {
        400: _json("Malformed JSON (code MALFORMED_JSON), or the prompt cannot fit the "
                   "context even without history (code context_length_exceeded)"
                   + ("; an unknown GPT model name (`Invalid model name.`)" if gpt else ""),
                   *bad_request),
        413: _json("Body too large (code BODY_TOO_LARGE)", _error("BODY_TOO_LARGE")),
        415: _json("The body is not JSON (Content-Type)", HTTP_ERROR),
        422: _json("A field is invalid; `errors` names each field and why" + unsupported,
                   VALIDATION),
        429: _json("Queue full (code QUEUE_OVERLOADED); see Retry-After", QUEUE_FULL,
                   headers={**_RETRY_AFTER,
                            "Retry-After": {**_RETRY_AFTER["Retry-After"], "required": True}}),
        499: _json("The client went away before the answer (never received; logged and "
                   "counted)", _error("CLIENT_DISCONNECTED")),
        500: _json("Generation failed (GENERATION_FAILED) or an unexpected error (INTERNAL, "
                   "with the request id)", _error("GENERATION_FAILED", "INTERNAL")),
        503: _json("Model not loaded (ENGINE_UNAVAILABLE)"
                   + (", OpenAI not configured (ENGINE_UNAVAILABLE: set OPENAI_API_KEY)"
                      if gpt else "")
                   + ", or the service is shutting down (SHUTTING_DOWN; see Retry-After)",
                   _error("ENGINE_UNAVAILABLE"), SHUTTING_DOWN, headers=_RETRY_AFTER),
        504: _json("Generation deadline passed (DEADLINE_EXCEEDED)"
                   + ("; OpenAI timed out (UPSTREAM_TIMEOUT)" if gpt else ""),
                   _error("DEADLINE_EXCEEDED", "UPSTREAM_TIMEOUT")),
    }
    if gpt:
        responses[502] = _json("OpenAI answered an error (its status is named)",
                               _error("UPSTREAM_ERROR", upstream_status={
                                   "anyOf": [_INT, {"type": "null"}]}))
    return responses


ANSWER_HEADERS = {
    "X-Request-ID": {"description": "the caller's X-Request-ID if sane, else a new one",
                     "schema": _STRING},
    "Server-Timing": {"description": "queue, ttft, gen, total (ms); fallback if used",
                      "schema": _STRING},
    "X-Generated-Tokens": {"schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "X-History-Turns": {"description": "remembered turns replayed into the prompt",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "X-History-Turns-Dropped": {"description": "older turns left out to fit the context",
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "X-Prompt-Tokens": {"description": "the prompt's length in the model's tokens (local "
                                       "models)",
                        "schema": {"type": "string", "pattern": "^[0-9]+$"}},
    "X-History-Kept": {
        "description": "`false` when the turn could not be kept: the history store is away "
                       "and the pod's journal is full or failed (absent when it is kept, "
                       "or no conversation was named)",
        "schema": {"enum": ["false"]}},
}


def answer_responses(*, gpt: bool = False) -> dict[int, dict]:
    """A persona chat route's answers: 200 is the answer text as a JSON string."""
    return {200: {"description": "The answer text, as a JSON string (the seed's contract)",
                  "headers": ANSWER_HEADERS,
                  "content": {"application/json": {"schema": _STRING}}},
            **error_responses(gpt=gpt)}


_USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
          "properties": {k: _INT for k in ("prompt_tokens", "completion_tokens",
                                           "total_tokens")}}
CHAT_COMPLETION: Schema = {
    "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": _STRING, "object": {"const": "chat.completion"}, "created": _INT,
        "model": _STRING, "usage": _USAGE,
        "choices": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
            "type": "object", "required": ["index", "message", "finish_reason"],
            "properties": {
                "index": _INT, "logprobs": {"type": "null"},
                "finish_reason": {"enum": ["stop", "length"]},
                "message": {"type": "object", "required": ["role", "content"],
                            "properties": {"role": {"const": "assistant"},
                                           "content": _STRING}}}}},
    },
}


# One Server-Sent Event, as OpenAPI tools read a text/event-stream (its fields).
SSE_EVENT: Schema = {
    "type": "object", "required": ["data"],
    "properties": {"data": {**_STRING, "description": "a `chat.completion.chunk` as JSON, "
                                                     "an `{\"error\": ...}` object, or "
                                                     "`[DONE]` (the last event)"},
                   "event": {"const": "message"}},
}


def completion_responses() -> dict[int, dict]:
    return {
        200: {"description": "A `chat.completion` object; with `stream: true`, Server-Sent "
                             "Events (`data: <chat.completion.chunk JSON>` ... then "
                             "`data: [DONE]`; an error after the first event is a "
                             "`data: {\"error\": {...}}` event)",
              "content": {"application/json": {"schema": CHAT_COMPLETION},
                          "text/event-stream": {"schema": SSE_EVENT}}},
        **error_responses(completions=True),
    }


HEALTHZ = {200: {"description": "The process answers",
                 "content": {"application/json": {"schema": {
                     "type": "object", "required": ["status"],
                     "properties": {"status": {"const": "ok"}}}}}}}

_READY = {
    "type": "object", "required": ["status", "persona", "model", "detail", "engine", "history"],
    "properties": {
        "status": {"enum": ["ready", "not ready"]}, "persona": _STRING, "model": _STRING,
        "detail": _STRING, "engine": {"type": "object"},
        "history": {"type": "object", "required": ["kind", "state"], "properties": {
            "kind": _STRING, "state": _STRING,
            "pending": {**_INT, "description": "answered turns in the pod's journal, not "
                                               "yet written to the history store"},
            "journal": {"type": "object", "description": "the pod's journal of turns "
                                                         "answered while the store was away"}}},
    },
}
READYZ = {200: {"description": "Ready: the model is loaded",
                "content": {"application/json": {"schema": _READY}}},
          503: {"description": "Not ready (the model is loading or failed to load)",
                "content": {"application/json": {"schema": _READY}}}}

PERFORMANCE = {200: {"description": "Measured counters since this process started",
                     "content": {"application/json": {"schema": {
                         "type": "object",
                         "required": ["instance", "total_requests", "avg_response_time",
                                      "success_rate", "active_connections",
                                      "max_concurrent"],
                         "properties": {"instance": _STRING, "active_connections": _INT,
                                        "max_concurrent": _INT}}}}}}

METRICS = {200: {"description": "Prometheus text exposition",
                 "content": {"text/plain": {"schema": _STRING}}}}
