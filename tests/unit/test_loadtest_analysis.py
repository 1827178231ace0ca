"""The load-test arithmetic: CSV round trip, per-user outcomes, percentiles, reconciliation,
and how a 429's wait is read. Rows go through the real CSV writer and reader."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import requests

from chatbot.loadtest import analysis
from chatbot.loadtest.answers import is_real_answer, process_time_s, retry_after_s
from chatbot.loadtest.records import (
    CHARACTER_COLUMNS,
    OFFICE_COLUMNS,
    Attempt,
    CsvRecorder,
    read_rows,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _attempt(user: str, at: float, status: int, retry: int = 0, final: bool = True,
             persona: str = "character", rt: float = 1.0) -> Attempt:
    ok = status == 200
    extra = ({"character_name": "Rachel"} if persona == "character"
             else {"google_access": False, "question_length": 10})
    return Attempt(
        user_id=user, test_type=persona, endpoint=f"/{persona}/Llama", status_code=status,
        response_time=rt, success=ok, timestamp=(T0 + timedelta(seconds=at)).isoformat(),
        retry_count=retry, is_retry_record=status == 429 and not final,
        retry_after_seconds=2.0 if status == 429 and not final else None,
        is_final_success=final and ok, is_final_failure=final and not ok,
        process_time=rt - 0.1 if ok else None, extra=extra)


def _rows(tmp_path, attempts: list[Attempt]) -> list[dict]:
    recorder = CsvRecorder(tmp_path, stamp="t")
    for attempt in attempts:
        recorder.record(attempt)
    recorder.close()
    return read_rows(recorder.paths())


def test_csv_files_have_the_original_columns_first_and_round_trip(tmp_path):
    rows = _rows(tmp_path, [_attempt("char_user_0001", 0, 200),
                            _attempt("office_user_0001", 0, 429, final=False, persona="office"),
                            _attempt("office_user_0001", 3, 200, retry=1, persona="office")])
    header = (tmp_path / "character_t.csv").read_text().splitlines()[0].split(",")
    assert header == list(CHARACTER_COLUMNS)
    office_header = (tmp_path / "office_t.csv").read_text().splitlines()[0].split(",")
    assert office_header[:10] == ["user_id", "test_type", "endpoint", "google_access",
                                  "question_length", "status_code", "response_time", "success",
                                  "timestamp", "response_size"]
    assert office_header == list(OFFICE_COLUMNS)
    retried = [r for r in rows if r["status_code"] == 429]
    assert retried[0]["is_retry_record"] and retried[0]["retry_after_seconds"] == 2.0
    assert sum(r["is_final_success"] for r in rows) == 2


def test_the_outcome_pie_counts_each_user_once(tmp_path):
    rows = _rows(tmp_path, [
        _attempt("direct", 0, 200),
        # three 429s then an answer: one "success after retry", not four slices' worth
        *[_attempt("patient", i * 2, 429, retry=i, final=False) for i in range(3)],
        _attempt("patient", 6, 200, retry=3),
        # ten retries, then the eleventh 429 is final
        *[_attempt("unlucky", i, 429, retry=i, final=False) for i in range(10)],
        _attempt("unlucky", 10, 429, retry=10),
        _attempt("broken", 0, 500),
    ])
    counts = analysis.user_outcomes(rows)
    assert counts == {analysis.DIRECT: 1, analysis.AFTER_RETRY: 1, analysis.FAILED: 2,
                      analysis.CUT_OFF: 0}
    assert sum(counts.values()) == len({r["user_id"] for r in rows})


def test_a_user_asking_several_times_is_still_one_user_with_its_worst_outcome(tmp_path):
    rows = _rows(tmp_path, [
        _attempt("u", 0, 200), _attempt("u", 2, 429, final=False),
        _attempt("u", 4, 200, retry=1), _attempt("u", 6, 200),
    ])
    assert len(analysis.logical_requests(rows)) == 3
    assert analysis.user_outcomes(rows)[analysis.AFTER_RETRY] == 1
    assert sum(analysis.user_outcomes(rows).values()) == 1


def test_percentiles_and_end_to_end_time_include_the_retry_wait(tmp_path):
    rows = _rows(tmp_path, [_attempt(f"u{i}", i, 200, rt=float(i + 1)) for i in range(10)]
                 + [_attempt("w", 0, 429, final=False, rt=0.1), _attempt("w", 5, 200, retry=1)])
    table = {r["measure"]: r for r in analysis.percentile_table(rows)}
    answers = table["response time of answers (s)"]
    assert (answers["count"], answers["p50"], answers["p90"], answers["p99"]) == (11, 5.0, 9.0,
                                                                                  10.0)
    assert max(analysis.end_to_end_s(a) for a in analysis.logical_requests(rows)) == 10.0
    assert table["end to end incl. retries (s)"]["count"] == 11
    assert analysis.percentile([], 50) is None


def test_reconcile_finds_a_lost_request(tmp_path):
    rows = _rows(tmp_path, [_attempt("a", 0, 429, final=False), _attempt("a", 2, 200, retry=1),
                            _attempt("b", 0, 200)])
    before = {"total_requests": 5, "succeeded": 4, "rejected": 1}
    good = {"total_requests": 8, "succeeded": 6, "rejected": 2}
    assert analysis.reconcile(rows, before, good)["match"] is True
    lost = {"total_requests": 9, "succeeded": 7, "rejected": 2}
    assert analysis.reconcile(rows, before, lost)["match"] is False
    assert analysis.reconcile(rows, None, good)["checked"] is False


def _response(status: int, body: dict | None = None, headers: dict | None = None):
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode() if body is not None else b"busy"
    response.headers.update(headers or {})
    return response


@pytest.mark.parametrize(("body", "headers", "wait"), [
    ({"retry_after": 7}, {"Retry-After": "3"}, 7.0),  # the body first
    ({"code": "QUEUE_OVERLOADED"}, {"Retry-After": "3"}, 3.0),  # then the header
    (None, {}, 60.0),  # else the original's 60 s
])
def test_a_429_waits_as_long_as_the_body_then_the_header_says(body, headers, wait):
    assert retry_after_s(_response(429, body, headers), 60.0) == wait


def test_process_time_is_the_servers_total_from_server_timing():
    assert process_time_s("queue;dur=1.0, ttft;dur=5.5, gen;dur=90.0, total;dur=1234.5") == 1.2345
    assert process_time_s("") is None


def test_a_real_answer_is_a_json_string_of_ten_non_space_characters():
    assert is_real_answer("안녕하세요, 무엇을 도와드릴까요?")
    assert not is_real_answer("   short    ")
    assert not is_real_answer({"detail": "an error object is not an answer"})


def test_questions_cut_off_by_the_end_of_the_run_are_not_counted_as_server_failures(tmp_path):
    cut = _attempt("late", 3, 0)
    cut.failure_reason = "stopped in flight at the end of the run"
    rows = _rows(tmp_path, [_attempt("a", 0, 200), _attempt("b", 1, 500), cut])
    summary = analysis.summarize(rows)["character"]
    assert (summary["answers"], summary["final_failures"], summary["cut_off"]) == (1, 1, 1)
    outcomes = analysis.user_outcomes(rows)
    assert (outcomes[analysis.FAILED], outcomes[analysis.CUT_OFF]) == (1, 1)
    # the cut-off attempt reached the server, so it must be in its total
    assert analysis.reconcile(rows, {"total_requests": 0, "succeeded": 0, "rejected": 0},
                              {"total_requests": 3, "succeeded": 1, "rejected": 0})["match"]


def test_a_user_that_was_answered_before_the_run_ended_is_not_counted_as_cut_off(tmp_path):
    cut = _attempt("looping", 9, 0)
    cut.failure_reason = "stopped in flight at the end of the run"
    rows = _rows(tmp_path, [_attempt("looping", 0, 200), _attempt("looping", 2, 429,
                                                                  final=False),
                            _attempt("looping", 4, 200, retry=1), cut])
    outcomes = analysis.user_outcomes(rows)
    assert outcomes[analysis.AFTER_RETRY] == 1 and sum(outcomes.values()) == 1
