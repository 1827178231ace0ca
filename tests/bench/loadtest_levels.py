#!/usr/bin/env python3
"""`chatbot loadtest --spawn-stack` on the bundled SmolLM2 at 1, 5 and 20 users: answers
per second and p50/p95 response time per persona, with the machine's load average.

    .venv/bin/python tests/bench/loadtest_levels.py [--levels 1,5,20] [--run-time 30s]
                                                    [--threads N]

Each level starts its own stack (the default `chatbot serve`: both personas share one
SmolLM2 instance, office answers one at a time and character two, 16 waiting, the seed's
token limits) and runs closed-loop users (`--requests-per-user 0`: each asks again as soon
as it has its answer) for the run time; questions in flight then get up to 30 s to finish.
tokens/s is what the servers' /performance counted as generated over the run.
Reports land in loadtest-results/levels-<date_time>/<users>/report.html. A measurement,
not a comparison: there is no peer here (see bench_http_vs_direct.py for one).
`--threads` sets llama.cpp's threads (CHATBOT_*__MODEL__N_THREADS); on a shared machine use
the cores that are really free, since llama.cpp's threads spin-wait.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,5,20")
    parser.add_argument("--run-time", default="30s")
    parser.add_argument("--out", type=Path,
                        default=Path(f"loadtest-results/levels-{datetime.now():%Y-%m-%d_%H%M%S}"))
    parser.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores)")
    args = parser.parse_args()
    env = dict(os.environ)
    # No internet on the bench machine: without this, office questions with google_access
    # would each wait out the ddgs timeout. Recorded, ddgs-shaped results keep the prompt real.
    env.setdefault("CHATBOT_SEARCH", "recorded")
    env.setdefault("CHATBOT_SEARCH_RECORDED_PATH",
                   str(Path(__file__).resolve().parents[1] / "data" / "ddgs_recorded.json"))
    if args.threads:
        env["CHATBOT_OFFICE__MODEL__N_THREADS"] = str(args.threads)
        env["CHATBOT_CHARACTER__MODEL__N_THREADS"] = str(args.threads)
    chatbot = shutil.which("chatbot", path=str(Path(sys.executable).parent)) or "chatbot"
    lines = ["| users | persona | answers | answers/s | tokens/s | p50 s | p95 s | 429 retried "
             "| failed | cut off at end | load avg before -> after |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for users in [int(n) for n in args.levels.split(",")]:
        out = args.out / str(users)
        load_before = os.getloadavg()[0]
        print(f"\n=== {users} users (load average {load_before:.2f}) ===", flush=True)
        subprocess.run([chatbot, "loadtest", "--spawn-stack", "--users", str(users),
                        "--spawn-rate", str(users), "--run-time", args.run_time,
                        "--requests-per-user", "0", "--out", str(out)], check=True, env=env)
        load_after = os.getloadavg()[0]
        summary = json.loads((out / "summary.json").read_text())
        for persona, r in summary["results"].items():
            lines.append(
                f"| {users} | {persona} | {r['answers']} | {r['answers_per_s']:.3f} | "
                f"{r.get('server_tokens_per_s', '-')} | "
                f"{_s(r['p50_s'])} | {_s(r['p95_s'])} | {r['retried_429']} | "
                f"{r['final_failures']} | {r['cut_off']} | {load_before:.2f} -> {load_after:.2f} |")
    table = "\n".join(lines)
    (args.out / "levels.md").write_text(table + "\n")
    print(f"\n{table}\n\n(cores: {len(os.sched_getaffinity(0))}, llama.cpp threads: "
          f"{args.threads or 'all'}; reports under {args.out})")
    return 0


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
