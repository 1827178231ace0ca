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


def replica_of(snapshot: dict) -> str:
    """The replica whose counters a `/performance` snapshot holds: the host part of its
    `instance` (a pod's name, which its answers carry as `X-Served-By`)."""
    return str(snapshot.get("instance", "")).split("/", 1)[0]


def reconcile_replicas(rows: list[dict], before: list[dict], after: list[dict]) -> dict:
    """Compares the client's rows of one persona with each replica's counters.

    Each answer names its replica (`served_by`, the `X-Served-By` header); `before`/`after`
    are the `/performance` snapshots the route gave at the start and the end, one per
    replica it answered from. A replica's rows are compared with the difference of its own
    counters (from zero when the replica was not there at the start: it started during the
    run; one such that counted fewer than its rows may have restarted since, and is left
    out). Attempts the service saw without naming a replica (cut off in flight) are counted
    by one of them in `total_requests`: the replicas' surplus there must add up to them.
    A replica that served but whose counters the end could not reach (removed by a scale
    down, or not reachable through the route) is left out, and said so: never a mismatch.
    """
    if not after:
        return {"checked": False, "reason": "no /performance snapshot"}
    reached = [r for r in rows if reached_server(r)]
    if not any(r.get("served_by") for r in reached):
        # No answer named its replica: a service without replicas to place turns on (it
        # adds no X-Served-By), or a file from before the column. One server's counters.
        if len(after) > 1:
            return {"checked": False, "reason": (
                f"{len(after)} replicas answered but no answer named its replica "
                "(X-Served-By): their counters cannot be told apart")}
        return reconcile(rows, before[0] if len(before) == 1 else None, after[0])
    by_replica: dict[str, list[dict]] = defaultdict(list)
    unnamed = 0
    for r in reached:
        if r.get("served_by"):
            by_replica[r["served_by"]].append(r)
        else:
            unnamed += 1
    starts = {replica_of(s): s for s in before}
    ends = {replica_of(s): s for s in after}
    if not set(by_replica) & set(ends):
        if len(ends) > 1 or len(by_replica) > 1 or len(starts) > 1:
            return {"checked": False, "reason": (
                f"the replicas named in the answers ({', '.join(sorted(by_replica))}) are "
                f"not those whose counters were read ({', '.join(sorted(ends))})")}
        # One replica answered and one server's counters were read, but under another name
        # (a process outside Kubernetes names its answers by a hash of its address).
        (name,) = by_replica
        ends = {name: next(iter(ends.values()))}
        starts = dict.fromkeys([name], next(iter(starts.values()))) if starts else {}
    replicas: dict[str, dict] = {}
    surplus = 0
    for name in sorted(set(by_replica) | set(ends)):
        client = client_counts(by_replica.get(name, []))
        end = ends.get(name)
        if end is None:
            replicas[name] = {"checked": False, "client": client, "reason": (
                "its counters could not be read at the end (the pod was removed by a scale "
                "down or a rollout, or the route does not reach it)")}
            continue
        start = starts.get(name)
        if start is not None and not same_counters(start, end):
            replicas[name] = {"checked": False, "client": client, "reason": (
                f"its counters restarted during the run ({start.get('instance')} at the "
                f"start, {end.get('instance')} at the end)")}
            continue
        server = {k: end.get(k, 0) - (start or {}).get(k, 0) for k in RECONCILED}
        if start is None and any(server[k] < client[k] for k in RECONCILED):
            replicas[name] = {"checked": False, "client": client, "reason": (
                f"it counted fewer than its rows ({server}) and was not seen at the start: "
                "its counters may have restarted during the run")}
            continue
        extra = server["total_requests"] - client["total_requests"]
        surplus += extra
        replicas[name] = {
            "checked": True, "client": client, "server": server,
            "from_zero": start is None,  # not seen at the start: started during the run
            "match": 0 <= extra <= unnamed and all(server[k] == client[k]
                                                   for k in RECONCILED if k != "total_requests")}
    checked = {n: r for n, r in replicas.items() if r["checked"]}
    if not checked:
        return {"checked": False, "replicas": replicas, "reason": "no replica's counters "
                "before and after the run could be read"}
    complete = len(checked) == len(replicas)
    match = all(r["match"] for r in checked.values()) and (
        surplus == unnamed if complete else surplus <= unnamed)
    return {"checked": True, "match": match, "complete": complete, "replicas": replicas,
            "unnamed": unnamed,
            "client": {k: sum(r["client"][k] for r in checked.values()) for k in RECONCILED},
            "server": {k: sum(r["server"][k] for r in checked.values()) for k in RECONCILED}}


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
            "with several replicas; analysis.reconcile_replicas compares each one's")}
    return reconcile_pods(rows, [before], [after])


def same_counters(before: dict, after: dict) -> bool:
    """Whether two /performance snapshots are of the same server's counters (servers from
    before `instance` existed are taken to be)."""
    return before.get("instance") == after.get("instance")


def _cut_off(row: dict) -> bool:
    return row["status_code"] == 0 and row["failure_reason"].startswith(STOPPED_PREFIX)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def reconciliation_lines(rec: dict) -> list[str]:
    """`reconcile_replicas`' answer for a person: the verdict, then one line per replica
    when several served (or one could not be reconciled)."""
    if not rec.get("checked"):
        return [f"not reconciled with the server ({rec['reason']})"]
    replicas = rec.get("replicas") or {}
    checked = [n for n, r in replicas.items() if r["checked"]]
    verdict = "match" if rec["match"] else "MISMATCH"
    if not replicas:
        return [f"client {rec['client']} vs server {rec['server']}: {verdict}"]
    left = [n for n in replicas if n not in checked]
    scope = (f"{len(checked)} replica{'s' * (len(checked) != 1)}" if not left else
             f"{len(checked)} of {len(replicas)} replicas")
    lines = [f"client {rec['client']} vs server {rec['server']} ({scope}): {verdict}"]
    if len(replicas) > 1 or left:
        for name, r in replicas.items():
            if r["checked"]:
                how = "match" if r["match"] else "MISMATCH"
                zero = ", started during the run" if r.get("from_zero") else ""
                lines.append(f"  {name}: client {r['client']} vs server {r['server']}{zero}: "
                             f"{how}")
            else:
                lines.append(f"  {name}: {r['client']['total_requests']} requests not "
                             f"reconciled: {r['reason']}")
    if rec.get("unnamed"):
        lines.append(f"  {rec['unnamed']} cut off in flight without naming a replica: "
                     "counted in one replica's total_requests")
    return lines
