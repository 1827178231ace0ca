#!/usr/bin/env python3
"""The container images: each one's size, and the seconds from `docker run` to ready.

    .venv/bin/python tests/bench/bench_images.py [--runs 3]

Builds (or reuses) the images as tests/images does - on the local Debian bookworm base, with
the host's portable llama-cpp-python wheel - starting dockerd when none answers (root).

* service, SmolLM2: the office persona's Deployment (operator builders, example
  ChatbotModel) as a container on the bundled SmolLM2-135M Q4_1 mounted at /models; ready =
  GET /readyz answers 200 (the model is loaded).
* service, tiny: the same on a tiny Q4_0 model (the floor: what is not the model).
* operator, fetch Job: `python -m chatbot_operator.fetch --help` in the operator image, run to
  exit (the Job program's start-up). `kopf run` to /healthz needs the API server: that time
  is printed by tests/cluster/test_cluster_operator_image.py.

Budgets (what a reader should hold these numbers against):
* service image <= 800 MB: it carries llama.cpp, numpy, the OpenAI client and the bundled
  SmolLM2 (94 MB) on a Python base; over that, something unneeded came in.
* operator image <= 500 MB: Python base plus kopf/kubernetes and the project's base
  dependencies (the package is one distribution).
* service run -> ready <= 10 s for SmolLM2 on two cores: the kubelet's startupProbe allows
  5 min, but a rollout with maxSurge 0 is down for this long per replica.
* operator fetch program start <= 5 s: it runs once per model file, before a download of
  minutes.
* floor: `docker run` of `python3 -c pass` on the base image - what Docker itself and the
  interpreter cost, whatever the image (no budget).

What dominates (measured with 2 loaded cores): the service's 3-4 s are Docker's start, the
imports (FastAPI, llama_cpp) and the model load (0.9 s for SmolLM2); the fetch program's 3 s
are mostly importing kopf (1.9 s, `python -X importtime`), which `chatbot_operator/__init__`
imports for the handlers even when only `chatbot_operator.fetch` runs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from chatbot.llm.bundled import BUNDLED_FILE, bundled_model_path  # noqa: E402
from chatbot.llm.tiny_model import write_tiny_model  # noqa: E402
from tests.images.persona_pod import Container, example_spec, models_dir  # noqa: E402
from tests.support import docker_engine as engine  # noqa: E402

BUDGET_MB = {"service": 800, "operator": 500}
BUDGET_READY_S = {"service SmolLM2": 10.0, "service tiny": 10.0, "operator fetch": 5.0,
                  "floor (base, python)": float("nan")}


def size_mb(tag: str) -> float:
    return engine.inspect(tag)["Size"] / 1e6


def service_ready(tag: str, model: Path, runs: int, work: Path) -> list[float]:
    times = []
    for i in range(runs):
        run_dir = work / f"{model.stem}-{i}"
        run_dir.mkdir(mode=0o755)
        container = Container(tag, example_spec(office=model.name), "office",
                              models_dir(run_dir, model))
        try:
            container.wait_ready()
            times.append(time.monotonic() - container.started)
        finally:
            container.remove()
    return times


def run_to_exit(runs: int, *argv: str) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.monotonic()
        engine.docker("run", "--rm", "--read-only", "--cap-drop", "ALL", *argv)
        times.append(time.monotonic() - started)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    daemon = engine.Daemon().start()
    try:
        service, _ = engine.build_service_image()
        operator, _ = engine.build_operator_image()
        sizes = {"service": (service, size_mb(service)), "operator": (operator, size_mb(operator))}
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            work.chmod(0o755)
            tiny = write_tiny_model(work / "tiny.Q4_0.gguf", quant="Q4_0", seed=2)
            ready = {
                "service SmolLM2": service_ready(service, bundled_model_path(), args.runs, work),
                "service tiny": service_ready(service, Path(tiny), args.runs, work),
                "operator fetch": run_to_exit(args.runs, "--entrypoint", "python", operator,
                                              "-m", "chatbot_operator.fetch", "--help"),
                "floor (base, python)": run_to_exit(args.runs, engine.BASE_IMAGE, "python3",
                                                    "-c", "pass"),
            }
    finally:
        daemon.stop()
    print(f"{'image':<10} {'size MB':>8} {'budget':>7}")
    for name, (tag, mb) in sizes.items():
        print(f"{name:<10} {mb:>8.0f} {BUDGET_MB[name]:>7}  {tag}")
    print(f"\n{'docker run -> ready':<20} {'median s':>9} {'min':>6} {'max':>6} {'budget':>7}")
    for name, times in ready.items():
        print(f"{name:<20} {statistics.median(times):>9.2f} {min(times):>6.2f} "
              f"{max(times):>6.2f} {BUDGET_READY_S[name]:>7}")
    print(f"\n(model: {BUNDLED_FILE}; runs: {args.runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
