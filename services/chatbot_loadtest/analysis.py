"""What a run's attempts add up to: outcomes per user, percentiles, throughput, and the
reconciliation with the servers' own counters. Pure functions over typed CSV rows."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import timedelta

DIRECT, AFTER_RETRY, FAILED = "direct success", "success after retry", "final failure"
CUT_OFF = "no answer before the run ended"
OUTCOMES = (DIRECT, AFTER_RETRY, FAILED, CUT_OFF)
PERCENTILES = (50, 90, 95, 99)
IN_FLIGHT_PREFIX = "stopped in flight"
STOPPED_PREFIX = "stopped "  # the run ended before the question was answered
RECONCILED = ("total_requests", "succeeded", "rejected")  # /performance counters compared


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (the servers' /performance uses the same)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = math.ceil(pct / 100 * len(ordered)) - 1
    return ordered[max(0, min(len(ordered) - 1, rank))]


def logical_requests(rows: list[dict]) -> list[list[dict]]:
    """Each user's attempts in the order sent, split after every final attempt: one list
    per question asked (its first try and its retries). A trailing group without a final
    attempt (a run cut off between rows) is kept, and counts as unfinished."""
    by_user: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_user[row["user_id"]].append(row)
    requests = []
    for attempts in by_user.values():
        attempts.sort(key=lambda r: (r["sent_at"], r["retry_count"]))
        current: list[dict] = []
        for row in attempts:
            current.append(row)
            if row["is_final_success"] or row["is_final_failure"]:
                requests.append(current)
                current = []
        if current:
            requests.append(current)
    return requests


def request_outcome(attempts: list[dict]) -> str:
    last = attempts[-1]
    if not last["is_final_success"]:
        return FAILED
    return AFTER_RETRY if len(attempts) > 1 else DIRECT


def user_outcomes(rows: list[dict]) -> Counter:
    """Each simulated user counted once, by the worst of its finished questions: a final
    failure of any makes it a failure, else a retry before any answer makes it a success
    after retry. A question cut off by the end of the run is not held against a user that
    finished others; a user that finished none was cut off."""
    per_user: dict[str, str] = {}
    rank = {CUT_OFF: -1, DIRECT: 0, AFTER_RETRY: 1, FAILED: 2}
    for attempts in logical_requests(rows):
        user = attempts[0]["user_id"]
        outcome = CUT_OFF if _cut_off(attempts[-1]) else request_outcome(attempts)
        if user not in per_user or rank[outcome] > rank[per_user[user]]:
            per_user[user] = outcome
    counts = Counter({outcome: 0 for outcome in OUTCOMES})
    counts.update(per_user.values())
    return counts


def end_to_end_s(attempts: list[dict]) -> float:
    """From the first try's send to the last attempt's answer, retry waits included."""
    last = attempts[-1]
    finished = last["sent_at"] + timedelta(seconds=last["response_time"])
    return (finished - attempts[0]["sent_at"]).total_seconds()


def percentile_table(rows: list[dict]) -> list[dict]:
    """p50/p90/p95/p99 per persona of the answered attempts' response time, the end-to-end
    time of answered questions (retry waits included) and the servers' processing time."""
    table = []
    for persona in sorted({r["test_type"] for r in rows}):
        mine = [r for r in rows if r["test_type"] == persona]
        answered = [r for r in mine if r["is_final_success"]]
        series = {
            "response time of answers (s)": [r["response_time"] for r in answered],
            "end to end incl. retries (s)": [
                end_to_end_s(a) for a in logical_requests(mine)
                if a[-1]["is_final_success"]],
            "server processing time (s)": [
                r["process_time"] for r in answered if r["process_time"] is not None],
        }
        for measure, values in series.items():
            table.append({"persona": persona, "measure": measure, "count": len(values),
                          **{f"p{p}": percentile(values, p) for p in PERCENTILES}})
    return table


def throughput(rows: list[dict], bins: int = 60) -> dict:
    """Answers per second over the run, per persona, in at most `bins` equal bins."""
    if not rows:
        return {"bin_s": 1.0, "start": None, "series": {}}
    start = min(r["sent_at"] for r in rows)
    done = [(r["test_type"], (r["sent_at"] - start).total_seconds() + r["response_time"])
            for r in rows if r["is_final_success"]]
    span = max([t for _, t in done] + [1.0])
    bin_s = max(1.0, math.ceil(span / bins))
    count = int(span // bin_s) + 1
    series: dict[str, list[float]] = {}
    for persona, t in done:
        counts = series.setdefault(persona, [0.0] * count)
        counts[int(t // bin_s)] += 1 / bin_s
    return {"bin_s": bin_s, "start": start, "series": series}


def summarize(rows: list[dict]) -> dict:
    """The run's headline numbers, per persona and overall."""
    summary: dict = {}
    for persona in sorted({r["test_type"] for r in rows}) + ["all"]:
        mine = [r for r in rows if persona in ("all", r["test_type"])]
        if not mine:
            continue
        start = min(r["sent_at"] for r in mine)
        end = max(r["sent_at"] + timedelta(seconds=r["response_time"]) for r in mine)
        span = max((end - start).total_seconds(), 1e-9)
        answers = [r for r in mine if r["is_final_success"]]
        latencies = [r["response_time"] for r in answers]
        statuses = Counter(r["status_code"] for r in mine)
        summary[persona] = {
            "attempts": len(mine),
            "questions": len(logical_requests(mine)),
            "answers": len(answers),
            "retried_429": sum(r["is_retry_record"] and r["status_code"] == 429 for r in mine),
            "retried_503": sum(r["is_retry_record"] and r["status_code"] == 503 for r in mine),
            "final_failures": sum(r["is_final_failure"] and not _cut_off(r) for r in mine),
            "cut_off": sum(r["is_final_failure"] and _cut_off(r) for r in mine),
            "status_codes": {str(k): v for k, v in sorted(statuses.items())},
            "duration_s": round(span, 3),
            "answers_per_s": round(len(answers) / span, 4),
            "p50_s": _round(percentile(latencies, 50)),
            "p95_s": _round(percentile(latencies, 95)),
            "users": dict(user_outcomes(mine)),
        }
    return summary


def reached_server(row: dict) -> bool:
    """Whether the service saw this attempt: it answered (its `X-Request-ID` is in the row),
    or the attempt was cut off in flight by the end of the run. A proxy's answer in its
    place (a 503 while no pod is ready) never reached it. Rows of files from before the
    `request_id` column count every HTTP answer."""
    if row["failure_reason"].startswith(IN_FLIGHT_PREFIX):
        return True
    if row.get("request_id") is None:
        return row["status_code"] != 0
    return bool(row["request_id"])


def client_counts(rows: list[dict]) -> dict:
    """What the service must have counted of these rows, as its /performance names it."""
    reached = [r for r in rows if reached_server(r)]
    return {"total_requests": len(reached),
            "succeeded": sum(r["status_code"] == 200 for r in reached),
            "rejected": sum(r["status_code"] == 429 for r in reached)}


def reconcile_pods(rows: list[dict], before: list[dict], after: list[dict]) -> dict:
    """Compares the client's rows of one persona with the counters of every pod that served
    them, summed: `before` holds the pods' `/performance` snapshots at the start (a pod
    started during the run has none: it began at zero), `after` their snapshots at the end,
    or a terminated pod's `final counters` log line."""
    if not after:
        return {"checked": False, "reason": "no counters after the run"}
    client = client_counts(rows)
    server = {key: sum(s.get(key, 0) for s in after) - sum(s.get(key, 0) for s in before)
              for key in RECONCILED}
    return {"checked": True, "client": client, "server": server, "match": client == server}


def reconcile(rows: list[dict], before: dict | None, after: dict | None) -> dict:
    """Compares what the client sent with what the server counted, per persona.

    `before`/`after` are `/performance` snapshots of one persona. Every attempt that reached
    the server (`reached_server`) must be in its `total_requests`; its 200s in `succeeded`
    and its 429s in `rejected`. Snapshots of two servers' counters (`instance` differs) are
    not compared: the difference of their counts means nothing.
    """
    if before is None or after is None:
        return {"checked": False, "reason": "no /performance snapshot"}
    if not same_counters(before, after):
        return {"checked": False, "reason": (
            f"the counters at the end are another server's: {before.get('instance')} at the "
            f"start, {after.get('instance')} at the end, after a restart or a rollout, or "
            "with several replicas; analysis.reconcile_pods sums each pod's")}
    return reconcile_pods(rows, [before], [after])


def same_counters(before: dict, after: dict) -> bool:
    """Whether two /performance snapshots are of the same server's counters (servers from
    before `instance` existed are taken to be)."""
    return before.get("instance") == after.get("instance")


def _cut_off(row: dict) -> bool:
    return row["status_code"] == 0 and row["failure_reason"].startswith(STOPPED_PREFIX)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
