"""`chatbot-loadtest` (also `chatbot loadtest`): parsed arguments -> a bounded headless run
(optionally against a stack it starts itself)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from chatbot_loadtest import MISSING_EXTRA, missing_load_packages


def add_arguments(load: argparse.ArgumentParser) -> None:
    load.add_argument("--host", default="http://127.0.0.1:8001", help="the stack's base URL")
    load.add_argument("--users", type=int, default=20, help="simulated users (default 20)")
    load.add_argument("--spawn-rate", type=float, default=5.0, help="users started per second")
    load.add_argument("--run-time", default="30s", help="upper bound, e.g. 30s, 2m (default 30s)")
    load.add_argument("--out", help="directory for the CSVs, summary.json and report.html "
                                    "(default loadtest-results/<date_time>)")
    load.add_argument("--persona", default="both", choices=["both", "office", "character"])
    load.add_argument("--requests-per-user", type=int, default=1,
                      help="questions per user, as the original: 1; 0 = ask until the end")
    load.add_argument("--google-access-ratio", type=float, default=0.5,
                      help="share of office questions sent with google_access (0..1)")
    load.add_argument("--default-retry-after", type=float, default=60.0, metavar="SECONDS",
                      help="wait before retrying a 429 or 503 that names no wait "
                           "(default 60, the original's)")
    load.add_argument("--stop-timeout", type=float, default=30.0,
                      help="seconds in-flight questions get after --run-time")
    load.add_argument("--seed", type=int, help="seed for the office question draw")
    load.add_argument("--prometheus", metavar="URL",
                      help="the Prometheus that scrapes the personas: the report plots their "
                           "replicas and queue depth over the run beside p95 latency")
    load.add_argument("--prometheus-selector", default="", metavar="MATCHERS",
                      help='with --prometheus: label matchers for the personas\' series, '
                           'e.g. namespace="chatbot"')
    load.add_argument("--spawn-stack", action="store_true",
                      help="start `chatbot serve` on a free port first and stop it after")
    load.add_argument("--office-model", type=Path, help="with --spawn-stack: office GGUF")
    load.add_argument("--character-model", type=Path, help="with --spawn-stack: character GGUF")


def build_parser(prog: str = "chatbot-loadtest") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run a headless Locust load test against the chat services "
                               "and write CSVs, summary.json and an HTML report.")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "chatbot-loadtest") -> int:
    return loadtest(build_parser(prog).parse_args(argv))


def parse_duration(text: str) -> float:
    """`30s`, `2m`, `1h30m` or plain seconds."""
    from locust.util.timespan import parse_timespan

    try:
        return float(text)
    except ValueError:
        return float(parse_timespan(text))


def loadtest(args: argparse.Namespace) -> int:
    missing = missing_load_packages()
    if missing:
        print(f"error: {MISSING_EXTRA} (missing: {', '.join(missing)})", file=sys.stderr)
        return 2
    from chatbot_loadtest.runner import RunConfig, run  # imports locust: patches for gevent
    from chatbot_loadtest.session import LoadOptions
    from chatbot_loadtest.stack import LocalStack

    try:
        run_time_s = parse_duration(args.run_time)
    except ValueError:
        print(f"error: --run-time: not a duration: {args.run_time!r} (try 30s, 2m)",
              file=sys.stderr)
        return 2
    for name in ("users", "spawn_rate"):
        if getattr(args, name) <= 0:
            print(f"error: --{name.replace('_', '-')}: must be positive", file=sys.stderr)
            return 2
    problems = {"--run-time": "must be positive" if run_time_s <= 0 else "",
                "--requests-per-user": "must not be negative" if args.requests_per_user < 0
                else "",
                "--google-access-ratio": "must be between 0 and 1"
                if not 0 <= args.google_access_ratio <= 1 else "",
                "--stop-timeout": "must not be negative" if args.stop_timeout < 0 else "",
                "--default-retry-after": "must not be negative"
                if args.default_retry_after < 0 else ""}
    for option, problem in problems.items():
        if problem:
            print(f"error: {option}: {problem}", file=sys.stderr)
            return 2
    out_dir = Path(args.out or f"loadtest-results/{datetime.now():%Y-%m-%d_%H%M%S}")
    out_dir.mkdir(parents=True, exist_ok=True)
    personas = ("office", "character") if args.persona == "both" else (args.persona,)
    options = LoadOptions(requests_per_user=args.requests_per_user,
                          google_access_ratio=args.google_access_ratio, seed=args.seed,
                          default_retry_after_s=args.default_retry_after)

    def config(host: str) -> RunConfig:
        return RunConfig(host=host, out_dir=out_dir, users=args.users,
                         spawn_rate=args.spawn_rate, run_time_s=run_time_s, personas=personas,
                         stop_timeout_s=args.stop_timeout, options=options,
                         prometheus=args.prometheus,
                         prometheus_selector=args.prometheus_selector)

    def outcome(summary: dict) -> int:
        """1 when the client's rows and the servers' counters disagree (a request lost)."""
        return int(any(r.get("checked") and not r["match"]
                       for r in summary["reconciliation"].values()))

    if not args.spawn_stack:
        return outcome(run(config(args.host)))
    stack = LocalStack(out_dir / "server.log", office_model=args.office_model,
                       character_model=args.character_model)
    print(f"starting the stack: {' '.join(stack.argv)} (log: {stack.log})", flush=True)
    try:
        stack.start()
    except (RuntimeError, TimeoutError) as exc:
        stack.stop()
        print(f"error: --spawn-stack: {exc}", file=sys.stderr)
        return 2
    try:
        print(f"stack ready at {stack.url}", flush=True)
        summary = run(config(stack.url))
    finally:
        stack.stop()
    return outcome(summary)
