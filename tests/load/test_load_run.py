"""A short real load run: `chatbot loadtest` against `chatbot serve` on tiny models, over
loopback, with queues small enough that 429s and retries really happen."""

from __future__ import annotations

from datetime import datetime

CHARACTER_COLUMNS = [  # the original's character CSV, in its order
    "user_id", "test_type", "endpoint", "character_name", "status_code", "response_time",
    "success", "failure_reason", "retry_count", "retry_after_seconds", "timestamp",
    "response_size", "is_retry_record", "is_final_failure", "is_final_success", "error",
    "process_time"]
OFFICE_COLUMNS = [  # the original's office CSV, in its order
    "user_id", "test_type", "endpoint", "google_access", "question_length", "status_code",
    "response_time", "success", "timestamp", "response_size"]


def _rows(load_run) -> dict[str, list[dict]]:
    return {p: load_run.csv(p)[1] for p in ("office", "character")}


def test_the_run_finishes_with_every_question_answered(load_run):
    assert load_run.returncode == 0, load_run.output
    for persona, rows in _rows(load_run).items():
        users = {r["user_id"] for r in rows}
        finals = [r for r in rows if r["is_retry_record"] == "False"]
        assert len(finals) == len(users), (persona, finals)  # one question per user
        assert all(r["status_code"] == "200" and r["is_final_success"] == "True"
                   for r in finals), [r for r in finals if r["status_code"] != "200"]
        assert {r["status_code"] for r in rows} <= {"200", "429"}  # no 5xx, nothing else
    users = sum(len({r["user_id"] for r in rows}) for rows in _rows(load_run).values())
    assert users == 20


def test_429s_were_retried_after_the_wait_they_asked_for(load_run):
    rows = [r for persona_rows in _rows(load_run).values() for r in persona_rows]
    retried = [r for r in rows if r["status_code"] == "429"]
    assert retried, "the queues never filled: the test did not exercise retries"
    by_user: dict[str, list[dict]] = {}
    for r in rows:
        by_user.setdefault(r["user_id"], []).append(r)
    for attempts in by_user.values():
        attempts.sort(key=lambda r: int(r["retry_count"]))
        assert [int(r["retry_count"]) for r in attempts] == list(range(len(attempts)))
        for first, second in zip(attempts, attempts[1:], strict=False):
            assert first["status_code"] == "429" and first["is_retry_record"] == "True"
            waited = (datetime.fromisoformat(second["timestamp"])
                      - datetime.fromisoformat(first["timestamp"])).total_seconds()
            assert waited >= float(first["retry_after_seconds"]) >= 1, (first, second)


def test_no_request_is_lost_csv_rows_match_the_servers_counters(load_run):
    for persona, rows in _rows(load_run).items():
        before, after = load_run.before[persona], load_run.after[persona]
        counted = {k: after[k] - before[k]
                   for k in ("total_requests", "succeeded", "rejected", "failed")}
        assert counted == {
            "total_requests": len(rows),
            "succeeded": sum(r["status_code"] == "200" for r in rows),
            "rejected": sum(r["status_code"] == "429" for r in rows),
            "failed": 0,
        }, persona
        # every answer came from the service itself: each carries its X-Request-ID
        assert all(r["request_id"] for r in rows), persona
        assert len({r["request_id"] for r in rows}) == len(rows)


def test_the_csvs_keep_the_originals_columns(load_run):
    character = load_run.csv("character")[0]
    assert character[:len(CHARACTER_COLUMNS)] == CHARACTER_COLUMNS
    office = load_run.csv("office")[0]
    assert office[:len(OFFICE_COLUMNS)] == OFFICE_COLUMNS
    assert {"retry_count", "is_retry_record", "is_final_success"} <= set(office)
    # appended after the originals'
    assert character[-2:] == office[-2:] == ["request_id", "served_by"]


def test_progress_is_shown_while_it_runs(load_run):
    progress = [line for line in load_run.output.splitlines() if " spawned, " in line]
    assert progress, load_run.output
    assert "users 20/20 spawned" in progress[-1]
    assert "requests " in progress[-1] and "errors 0" in progress[-1]
    assert "match" in load_run.output and "MISMATCH" not in load_run.output
