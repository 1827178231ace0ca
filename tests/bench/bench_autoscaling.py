#!/usr/bin/env python3
"""Autoscaling on the real node: how long a persona takes to grow with its queue and to
shrink back, and its replicas over time.

Runs the node test that drives it (tests/node/test_autoscaling.py: a real Prometheus and
KEDA, `chatbot loadtest` with 4 users on the office persona, one question at a time per
pod, at most 2 replicas, a 20 s scale-down window) `--runs` times under the node's lock,
and prints per run: the time from the queue building to the second pod Ready, from the end
of the load to one replica again, then the replicas, Ready pods and queue depth sampled
every ~2 s of the last run.

    flock /tmp/realnode.lock .venv/bin/python tests/bench/bench_autoscaling.py [--runs 1]

Needs what the node tests need (root, Docker, tests/kube/build-binaries). Not part of
the suite: one run is the node tests' cost of that test, about 4-6 minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TEST = "tests/node/test_autoscaling.py::test_the_queue_scales_a_persona_up_and_back_down_" \
       "without_losing_an_answer"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    results = []
    for run in range(1, args.runs + 1):
        out = Path(tempfile.mkdtemp(prefix="bench-autoscaling-"))
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST],
            cwd=ROOT, env={**os.environ, "CHATBOT_AUTOSCALING_OUT": str(out),
                           "CHATBOT_REQUIRE_NODE": "1"},
            capture_output=True, text=True)
        if proc.returncode != 0 or not (out / "timeline.json").is_file():
            print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
            print(f"run {run}: the test failed (exit {proc.returncode})")
            return 1
        timeline = json.loads((out / "timeline.json").read_text())
        timeline["wall_s"] = time.monotonic() - started
        timeline["report"] = str(out / "report.html")
        results.append(timeline)
    print(f"{'run':>3}  {'queue built':>11}  {'2nd pod Ready':>13}  {'up (s)':>6}  "
          f"{'load ended':>10}  {'down (s)':>8}  {'window':>6}  statuses")
    for i, r in enumerate(results, 1):
        up = r["second_pod_ready_s"] - r["queue_built_s"]
        print(f"{i:>3}  {r['queue_built_s']:>10.0f}s  {r['second_pod_ready_s']:>12.0f}s  "
              f"{up:>6.0f}  {r['load_ended_s']:>9.0f}s  {r['back_to_one_after_load_s']:>8.0f}"
              f"  {r['scale_down_window_s']:>5}s  {r['statuses']}")
    last = results[-1]
    print(f"\nreplicas over time (last run; report with the chart: {last['report']})")
    print(f"{'t (s)':>6}  {'replicas':>8}  {'ready':>5}  {'queue':>5}")
    for s in last["samples"]:
        print(f"{s['t_s']:>6.0f}  {s['replicas']:>8}  {s['ready']:>5}  {s['queue']:>5.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
