"""How a simulated user reads an HTTP answer (pure: no Locust here, so it can be tested
without gevent's monkey-patching)."""

from __future__ import annotations

import json

MIN_ANSWER_CHARS = 10


def body_json(response):
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError):
        return None


def is_real_answer(body) -> bool:
    """The original's success: the answer (a JSON string) has at least 10 characters; we
    count non-space ones, so whitespace padding does not pass."""
    return isinstance(body, str) and len("".join(body.split())) >= MIN_ANSWER_CHARS


def retry_after_s(response, default_s: float) -> float:
    """The wait a 429 or 503 asks for: `retry_after` in the body, then `Retry-After`, else
    default."""
    body = body_json(response)
    if isinstance(body, dict) and isinstance(body.get("retry_after"), int | float):
        return float(body["retry_after"])
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return default_s


def server_timing_s(header: str) -> dict[str, float]:
    """`Server-Timing: queue;dur=<ms>, ..., total;dur=<ms>` as seconds by name."""
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";")
        if rest.startswith("dur="):
            out[name] = float(rest[4:]) / 1000
    return out


def process_time_s(server_timing: str) -> float | None:
    """The server's own total time, from `Server-Timing: ..., total;dur=<ms>`."""
    total = server_timing_s(server_timing).get("total")
    return round(total, 4) if total is not None else None


def error_detail(response) -> str:
    body = body_json(response)
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])[:300]
    return (response.text or "")[:300]
