"""The load-test arithmetic: CSV round trip, per-user outcomes, percentiles, reconciliation,
and how a 429 or 503 wait is read. Rows go through the real CSV writer and reader."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta

import pytest
import requests

from chatbot_loadtest import analysis
from chatbot_loadtest.answers import is_real_answer, process_time_s, retry_after_s
from chatbot_loadtest.records import (
    CHARACTER_COLUMNS,
    OFFICE_COLUMNS,
    Attempt,
    CsvRecorder,
    read_rows,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _attempt(user: str, at: float, status: int, retry: int = 0, final: bool = True,
             persona: str = "character", rt: float = 1.0,
             request_id: str | None = None, served_by: str = "") -> Attempt:
    """`request_id`: the service's X-Request-ID; by default every HTTP answer has one.
    `served_by`: the replica that answered (X-Served-By)."""
    ok = status == 200
    retried = status in (429, 503) and not final
    extra = ({"character_name": "Rachel"} if persona == "character"
             else {"google_access": False, "question_length": 10})
    return Attempt(
        user_id=user, test_type=persona, endpoint=f"/{persona}/Llama", status_code=status,
        response_time=rt, success=ok, timestamp=(T0 + timedelta(seconds=at)).isoformat(),
        retry_count=retry, is_retry_record=retried, retry_after_seconds=2.0 if retried else None,
        is_final_success=final and ok, is_final_failure=final and not ok,
        process_time=rt - 0.1 if ok else None, extra=extra,
        request_id=(f"id-{user}-{retry}" if status else "") if request_id is None
        else request_id, served_by=served_by)


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
    # appended after the originals'
    assert header[-2:] == office_header[-2:] == ["request_id", "served_by"]
    assert {r["request_id"] for r in rows} == {"id-char_user_0001-0", "id-office_user_0001-0",
                                               "id-office_user_0001-1"}


def test_csv_files_from_before_the_request_id_column_still_read_and_reconcile(tmp_path):
    old_columns = [c for c in CHARACTER_COLUMNS if c not in ("request_id", "served_by")]
    rows = _rows(tmp_path, [_attempt("a", 0, 429, final=False), _attempt("a", 2, 200, retry=1)])
    old = tmp_path / "old" / "character_t.csv"
    old.parent.mkdir()
    with open(old, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=old_columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({**r, "timestamp": r["sent_at"].isoformat()} for r in rows)
    read = read_rows([old])
    assert [r["request_id"] for r in read] == [None, None]
    assert [r["served_by"] for r in read] == [None, None]
    assert [r["status_code"] for r in read] == [429, 200]
    # without the column every HTTP answer counts as one the server saw, as before
    assert analysis.reconcile(read, {"total_requests": 0, "succeeded": 0, "rejected": 0},
                              {"total_requests": 2, "succeeded": 1, "rejected": 1})["match"]


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


@pytest.mark.parametrize(("status", "body", "headers", "default", "wait"), [
    (429, {"retry_after": 7}, {"Retry-After": "3"}, 60.0, 7.0),  # the body first
    (429, {"code": "QUEUE_OVERLOADED"}, {"Retry-After": "3"}, 60.0, 3.0),  # then the header
    (429, None, {}, 60.0, 60.0),  # else the original's 60 s
    (503, None, {"Retry-After": "2"}, 60.0, 2.0),  # a 503 is read the same way
    (503, None, {}, 1.0, 1.0),  # a proxy's 503 names no wait: --default-retry-after
])
def test_a_429_or_503_waits_as_long_as_the_body_then_the_header_says(status, body, headers,
                                                                     default, wait):
    assert retry_after_s(_response(status, body, headers), default) == wait


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


def test_a_proxys_503_never_reached_a_server_and_is_not_reconciled(tmp_path):
    rows = _rows(tmp_path, [
        # no pod ready: the route answers 503 itself (no X-Request-ID), twice, then a 200
        _attempt("a", 0, 503, final=False, request_id=""),
        _attempt("a", 1, 503, retry=1, final=False, request_id=""),
        _attempt("a", 2, 200, retry=2),
        # the service's own 503 (model not loaded yet) is counted there, as a failure
        _attempt("b", 0, 503, final=False), _attempt("b", 1, 429, retry=1, final=False),
        _attempt("b", 3, 200, retry=2),
    ])
    assert analysis.client_counts(rows) == {"total_requests": 4, "succeeded": 2, "rejected": 1}
    zero = {"total_requests": 0, "succeeded": 0, "rejected": 0}
    served = {"total_requests": 4, "succeeded": 2, "rejected": 1, "failed": 1}
    assert analysis.reconcile(rows, zero, served)["match"]
    summary = analysis.summarize(rows)["character"]
    assert (summary["retried_429"], summary["retried_503"], summary["answers"]) == (1, 3, 2)
    assert analysis.user_outcomes(rows)[analysis.AFTER_RETRY] == 2


def test_a_rollouts_rows_reconcile_with_the_sum_of_every_pods_counters(tmp_path):
    rows = _rows(tmp_path, [
        _attempt("a", 0, 200), _attempt("b", 1, 200),
        _attempt("c", 2, 503, final=False, request_id=""),  # between the old and new pod
        _attempt("c", 3, 429, retry=1, final=False), _attempt("c", 5, 200, retry=2),
    ])
    old_pod_before = {"total_requests": 10, "succeeded": 9, "rejected": 1}
    # the old pod's `final counters` line: it served a and b; the new pod started at zero
    old_pod_final = {"total_requests": 12, "succeeded": 11, "rejected": 1}
    new_pod_after = {"total_requests": 2, "succeeded": 1, "rejected": 1}
    result = analysis.reconcile_pods(rows, [old_pod_before], [old_pod_final, new_pod_after])
    assert result == {"checked": True, "match": True,
                      "client": {"total_requests": 4, "succeeded": 3, "rejected": 1},
                      "server": {"total_requests": 4, "succeeded": 3, "rejected": 1}}
    # a pod's counters left out (its log line lost): the rows no longer add up
    assert not analysis.reconcile_pods(rows, [old_pod_before], [old_pod_final])["match"]
    assert analysis.reconcile_pods(rows, [old_pod_before], [])["checked"] is False


def test_counters_of_another_server_at_the_end_are_not_reconciled(tmp_path):
    """A rollout or a restart during the run: the end's counters began at zero elsewhere."""
    rows = _rows(tmp_path, [_attempt("a", 0, 200), _attempt("b", 0, 200)])
    before = {"instance": "office-abc/1f2e3d4c", "total_requests": 40, "succeeded": 40,
              "rejected": 0}
    replaced = {"instance": "office-def/9a8b7c6d", "total_requests": 1, "succeeded": 1,
                "rejected": 0}
    result = analysis.reconcile(rows, before, replaced)
    assert result["checked"] is False
    assert "office-abc/1f2e3d4c" in result["reason"] and "office-def/9a8b7c6d" in result["reason"]
    same = {**replaced, "instance": before["instance"], "total_requests": 42, "succeeded": 42}
    assert analysis.reconcile(rows, before, same)["match"] is True


def _perf(instance: str, total: int, succeeded: int, rejected: int = 0) -> dict:
    return {"instance": instance, "total_requests": total, "succeeded": succeeded,
            "rejected": rejected}


def test_each_replica_is_reconciled_with_its_own_counters(tmp_path):
    """Two replicas behind the route: each answer names its replica (X-Served-By), and each
    replica's rows are compared with its own counters, the second from zero (it was added
    during the run)."""
    rows = _rows(tmp_path, [
        _attempt("a", 0, 200, served_by="chat-a"),
        _attempt("b", 0, 429, final=False, served_by="chat-a"),
        _attempt("b", 2, 200, retry=1, served_by="chat-b"),
        _attempt("c", 3, 200, served_by="chat-b"),
    ])
    before = [_perf("chat-a/11111111", 10, 10)]
    after = [_perf("chat-a/11111111", 12, 11, 1), _perf("chat-b/22222222", 2, 2)]
    result = analysis.reconcile_replicas(rows, before, after)
    assert (result["checked"], result["match"], result["complete"]) == (True, True, True)
    assert result["client"] == result["server"] == {"total_requests": 4, "succeeded": 3,
                                                    "rejected": 1}
    assert result["replicas"]["chat-b"]["from_zero"] is True
    assert not result["replicas"]["chat-a"]["from_zero"]
    lines = analysis.reconciliation_lines(result)
    assert lines[0].endswith("(2 replicas): match")
    assert any(line.startswith("  chat-b:") and "started during the run" in line
               for line in lines)
    # the sums agree, but one answer counted by the wrong replica is still a mismatch
    swapped = [_perf("chat-a/11111111", 11, 10, 1), _perf("chat-b/22222222", 3, 3)]
    wrong = analysis.reconcile_replicas(rows, before, swapped)
    assert wrong["client"] == wrong["server"] and wrong["match"] is False
    assert wrong["replicas"]["chat-b"]["match"] is False
    assert "MISMATCH" in analysis.reconciliation_lines(wrong)[0]


def test_a_replica_gone_before_the_end_is_left_out_and_said_so_not_a_mismatch(tmp_path):
    """The scale down removed a replica before its counters could be read: what can be
    reconciled is, the rest is named, and the verdict is no false MISMATCH."""
    rows = _rows(tmp_path, [_attempt("a", 0, 200, served_by="chat-a"),
                            _attempt("b", 1, 200, served_by="chat-gone"),
                            _attempt("c", 2, 200, served_by="chat-gone")])
    before = [_perf("chat-a/11111111", 0, 0)]
    after = [_perf("chat-a/11111111", 1, 1)]
    result = analysis.reconcile_replicas(rows, before, after)
    assert (result["checked"], result["match"], result["complete"]) == (True, True, False)
    gone = result["replicas"]["chat-gone"]
    assert gone["checked"] is False and gone["client"]["total_requests"] == 2
    lines = analysis.reconciliation_lines(result)
    assert "(1 of 2 replicas): match" in lines[0]
    assert any("chat-gone: 2 requests not reconciled" in line and "removed" in line
               for line in lines)
    # the one left lost a request: that is still found
    lost = analysis.reconcile_replicas(rows, before, [_perf("chat-a/11111111", 2, 2)])
    assert lost["match"] is False
    # a replica added during the run that counted fewer than it answered may have restarted
    # since (its counters began again at zero): left out, not a mismatch
    restarted = analysis.reconcile_replicas(rows, before, [_perf("chat-a/11111111", 1, 1),
                                                           _perf("chat-gone/3", 1, 1)])
    assert restarted["match"] is True
    assert "may have restarted" in restarted["replicas"]["chat-gone"]["reason"]


def test_attempts_cut_off_without_a_replica_name_are_in_some_replicas_total(tmp_path):
    cut = _attempt("late", 3, 0)
    cut.failure_reason = "stopped in flight at the end of the run"
    rows = _rows(tmp_path, [_attempt("a", 0, 200, served_by="chat-a"),
                            _attempt("b", 0, 200, served_by="chat-b"), cut])
    zero = [_perf("chat-a/1", 0, 0), _perf("chat-b/2", 0, 0)]
    counted = [_perf("chat-a/1", 1, 1), _perf("chat-b/2", 2, 1)]  # b counted the cut one
    result = analysis.reconcile_replicas(rows, zero, counted)
    assert result["match"] is True and result["unnamed"] == 1
    twice = [_perf("chat-a/1", 2, 1), _perf("chat-b/2", 2, 1)]  # one more than was sent
    assert analysis.reconcile_replicas(rows, zero, twice)["match"] is False


def test_one_server_without_replica_names_reconciles_as_before(tmp_path):
    """A service run alone names no replica (no X-Served-By), or names it by a hash of its
    address rather than its host: one server's counters are still compared. Two servers'
    counters with no names to tell their answers apart are not compared at all."""
    plain = _rows(tmp_path / "plain", [_attempt("a", 0, 200), _attempt("b", 0, 200)])
    one = [_perf("laptop/1", 5, 5)]
    assert analysis.reconcile_replicas(plain, one, [_perf("laptop/1", 7, 7)])["match"]
    hashed = _rows(tmp_path / "hashed", [_attempt("a", 0, 200, served_by="9f86d081884c")])
    assert analysis.reconcile_replicas(hashed, one, [_perf("laptop/1", 6, 6)])["match"]
    two = analysis.reconcile_replicas(plain, one, [_perf("laptop/1", 6, 6),
                                                   _perf("other/2", 1, 1)])
    assert two["checked"] is False and "X-Served-By" in two["reason"]
    assert "MISMATCH" not in " ".join(analysis.reconciliation_lines(two))
    # names in the answers that no counters carry: nothing to pair, nothing compared
    named = _rows(tmp_path / "named", [_attempt("a", 0, 200, served_by="pod-a"),
                                       _attempt("b", 0, 200, served_by="pod-b")])
    other = analysis.reconcile_replicas(named, [], [_perf("host-1/1", 1, 1),
                                                    _perf("host-2/2", 1, 1)])
    assert other["checked"] is False and "pod-a, pod-b" in other["reason"]
