"""`chatbot loadtest`: parsed arguments -> a bounded headless run (optionally against a
stack it starts itself)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from chatbot.loadtest import MISSING_EXTRA, missing_load_packages


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
    from chatbot.loadtest.runner import RunConfig, run  # imports locust: patches for gevent
    from chatbot.loadtest.session import LoadOptions
    from chatbot.loadtest.stack import LocalStack

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
    if run_time_s <= 0 or args.requests_per_user < 0:
        print("error: --run-time must be positive and --requests-per-user not negative",
              file=sys.stderr)
        return 2
    out_dir = Path(args.out or f"loadtest-results/{datetime.now():%Y-%m-%d_%H%M%S}")
    out_dir.mkdir(parents=True, exist_ok=True)
    personas = ("office", "character") if args.persona == "both" else (args.persona,)
    options = LoadOptions(requests_per_user=args.requests_per_user,
                          google_access_ratio=args.google_access_ratio, seed=args.seed)

    def config(host: str) -> RunConfig:
        return RunConfig(host=host, out_dir=out_dir, users=args.users,
                         spawn_rate=args.spawn_rate, run_time_s=run_time_s, personas=personas,
                         stop_timeout_s=args.stop_timeout, options=options)

    if not args.spawn_stack:
        run(config(args.host))
        return 0
    stack = LocalStack(out_dir / "server.log", office_model=args.office_model,
                       character_model=args.character_model)
    print(f"starting the stack: {' '.join(stack.command)} (log: {stack.log_path})", flush=True)
    with stack:
        print(f"stack ready at {stack.url}", flush=True)
        run(config(stack.url))
    return 0
