"""A headless, bounded Locust run through Locust's library API, with progress lines, the
servers' counters before and after (each replica's the route answers from), the CSVs and
the report."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import gevent

# Importing locust monkey-patches the standard library for gevent; requests comes after it.
import locust  # noqa: F401
import requests
from locust.env import Environment

from chatbot_loadtest import analysis
from chatbot_loadtest.records import read_rows
from chatbot_loadtest.report import write_report
from chatbot_loadtest.session import LoadOptions, RunSession, attach
from chatbot_loadtest.users import USER_CLASSES


@dataclass
class RunConfig:
    host: str
    out_dir: Path
    users: int = 20
    spawn_rate: float = 5.0
    run_time_s: float = 30.0
    personas: tuple[str, ...] = ("office", "character")
    stop_timeout_s: float = 30.0  # after run_time: in-flight questions get this long
    progress_every_s: float = 2.0
    options: LoadOptions = field(default_factory=LoadOptions)
    # The Prometheus that scrapes the personas: the report adds replicas and queue depth.
    prometheus: str | None = None
    prometheus_selector: str = ""


def run(config: RunConfig, say: Callable[[str], None] = print) -> dict:
    """Runs the load test and writes `<persona>_<stamp>.csv`, `summary.json` and
    `report.html` into `config.out_dir`; returns the summary."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    host = config.host.rstrip("/")
    session = RunSession(config.out_dir, config.options)
    env = Environment(user_classes=[USER_CLASSES[p] for p in config.personas], host=host,
                      stop_timeout=config.stop_timeout_s)
    attach(env, session)
    before = {p: replica_counters(host, p) for p in config.personas}
    runner = env.create_local_runner()
    started_at = datetime.now(UTC)
    started = time.monotonic()
    say(f"load test: {config.users} users ({', '.join(config.personas)}) at "
        f"{config.spawn_rate:g}/s against {host}, for at most {config.run_time_s:g}s")
    progress = gevent.spawn(_progress, session, runner, config, started, say)
    runner.start(config.users, spawn_rate=config.spawn_rate)
    ended_by = "run time"
    while time.monotonic() - started < config.run_time_s:
        if (config.options.requests_per_user
                and session.users_done >= config.users):
            ended_by = "every user got its answers"
            break
        gevent.sleep(0.2)
    if ended_by == "run time" and runner.user_count:
        say(f"run time over: in-flight questions get up to {config.stop_timeout_s:g}s")
    runner.quit()
    progress.kill()
    _print_progress(session, runner, config, started, say)
    summary = finish(session, host, config.personas, before, config.out_dir, {
        "host": host, "started_at": started_at.isoformat(timespec="seconds"),
        "users": config.users, "spawn_rate": config.spawn_rate,
        "run_time_s": config.run_time_s, "ended_by": ended_by,
        "requests per user": config.options.requests_per_user or "until the run ends",
    }, scaling_from=(config.prometheus, config.prometheus_selector, started_at.timestamp())
        if config.prometheus else None)
    _say_results(summary, config.out_dir, say)
    return summary


def finish(session: RunSession, host: str, personas, before: dict, out_dir: Path,
           meta: dict, scaling_from: tuple[str, str, float] | None = None) -> dict:
    """After the users stopped: the servers' counters once idle, the CSVs read back,
    `summary.json` and `report.html`; with `scaling_from` (Prometheus URL, label matchers,
    start), the replicas and queue depth it recorded during the run."""
    after = {p: replica_counters(host, p, idle=True) for p in personas}
    paths = session.close()
    rows = read_rows(paths)
    scaling_series = None
    if scaling_from:
        from chatbot_loadtest import scaling

        url, selector, start = scaling_from
        scaling_series = scaling.fetch(url, start, time.time(), selector)
        scaling_series["p95"] = scaling.p95_over_time(rows)
    reconciliation = {p: analysis.reconcile_replicas(
        [r for r in rows if r["test_type"] == p], before.get(p) or [], after[p])
        for p in personas}
    meta = {**meta, "csv": [p.name for p in paths]}
    results = analysis.summarize(rows)
    for persona in personas:
        start = {s["instance"]: s for s in before.get(persona) or [] if "instance" in s}
        end = after[persona]
        if persona in results and end and all(s.get("instance") in start for s in end):
            tokens = sum(s.get("generated_tokens", 0)
                         - start[s["instance"]].get("generated_tokens", 0) for s in end)
            results[persona]["server_generated_tokens"] = tokens
            results[persona]["server_tokens_per_s"] = round(
                tokens / max(results[persona]["duration_s"], 1e-9), 2)
    summary = {
        **meta, "options": asdict(session.options),
        "results": results, "reconciliation": reconciliation,
        "percentiles": analysis.percentile_table(rows),
        **({"scaling": scaling_series} if scaling_series else {}),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    write_report(out_dir / "report.html", rows, meta, reconciliation, scaling_series)
    return summary


def performance(host: str, persona: str) -> dict | None:
    try:
        response = requests.get(f"{host}/{persona}/performance", timeout=10)
        return response.json() if response.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def replica_counters(host: str, persona: str, *, idle: bool = False, quiet_polls: int = 6,
                     timeout_s: float = 30.0) -> list[dict]:
    """The `/performance` snapshot of each replica the route answers from, one per replica
    (`analysis.replica_of`): asked until `quiet_polls` answers in a row bring no replica not
    seen yet (a route spreads them over its replicas). With `idle`, until none of them runs
    or queues anything (cut-off requests are counted by the server when it notices the
    client left). Empty when the route gives no counters."""
    deadline = time.monotonic() + timeout_s
    seen: dict[str, dict] = {}
    quiet = 0
    while True:
        perf = performance(host, persona)
        if perf is None and not seen:
            return []
        if perf is not None:
            name = analysis.replica_of(perf)
            quiet = quiet + 1 if name in seen else 0
            seen[name] = perf
        busy = idle and any(s.get("active_connections") or s.get("queue_size")
                            for s in seen.values())
        if (quiet >= quiet_polls and not busy) or time.monotonic() > deadline:
            return list(seen.values())
        gevent.sleep(0.2 if busy else 0.02)


def _progress(session, runner, config, started, say) -> None:
    while True:
        gevent.sleep(config.progress_every_s)
        _print_progress(session, runner, config, started, say)


def _print_progress(session: RunSession, runner, config: RunConfig, started: float,
                    say) -> None:
    c = session.recorder.counts
    errors = c["final_failures"]  # includes questions cut off by the end of the run
    done = f", {session.users_done} done" if config.options.requests_per_user else ""
    say(f"[{time.monotonic() - started:5.1f}s] users {session.users_started}/{config.users} "
        f"spawned{done} | requests {c['attempts']} "
        f"(answers {c['answers']}, retried 429 {c['retried_429']} / 503 {c['retried_503']}) "
        f"| errors {errors}")


def _say_results(summary: dict, out_dir: Path, say) -> None:
    for persona, r in summary["results"].items():
        p50 = "-" if r["p50_s"] is None else f"{r['p50_s']:.2f}s"
        p95 = "-" if r["p95_s"] is None else f"{r['p95_s']:.2f}s"
        say(f"{persona:>9}: {r['answers']}/{r['questions']} answered, "
            f"{r['retried_429']}/{r['retried_503']} retries after 429/503, "
            f"{r['final_failures']} failed, "
            f"{r['cut_off']} cut off by the end of the run, "
            f"{r['answers_per_s']:.3f} answers/s, p50 {p50}, p95 {p95}, "
            f"status {r['status_codes']}")
    for persona, rec in summary["reconciliation"].items():
        for line in analysis.reconciliation_lines(rec):
            say(f"{persona:>9}: {line}")
    say(f"report: {out_dir / 'report.html'}")
