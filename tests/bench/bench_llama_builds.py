#!/usr/bin/env python3
"""Which llama.cpp build should users get? Our service on SmolLM2 with each candidate build.

Candidates (all from the llama.cpp vendored by the pinned llama-cpp-python, none with AMX:
upstream llama.cpp#26954 makes AMX tile code die with SIGILL):

- `avx2`: the portable default of services/install.py (`GGML_NATIVE=OFF`: x86-64-v3), i.e.
  the llama-cpp-python this environment runs (its own `llama_cpp/lib`, nothing rebuilt).
- `avx512`: `GGML_NATIVE=OFF` plus the AVX-512 extensions this CPU has (read from
  /proc/cpuinfo: F, VNNI, BF16, VBMI), as a user opting in for one known CPU would build.
- `all-variants`: `GGML_BACKEND_DL` + `GGML_CPU_ALL_VARIANTS`, ggml's runtime-dispatched CPU
  backends (one shared module per CPU generation, the best-scoring one loaded at start-up).
  Its library depends on all 14 x86 variants, so it is the slowest to build; the bench
  reports the features of the variant ggml picked.

Each build is compiled once into ~/.cache/chatbot-dev/llama-builds/<name>-<flags hash>/ (a
few minutes each on two cores) and loaded by our unchanged service through llama-cpp-python's
`LLAMA_CPP_LIB_PATH`. The service (batched engine, office persona, greedy, fixed max_tokens)
is measured at 1 client and at 4 concurrent clients; builds alternate within each round so
machine noise spreads over all of them.

    .venv/bin/python tests/bench/bench_llama_builds.py [--rounds 2] [--out table.md]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(ROOT))

from install import PORTABLE_CMAKE_ARGS  # noqa: E402

from chatbot.llm.bundled import bundled_model_path  # noqa: E402
from chatbot.llm.loading import system_info_features  # noqa: E402
from tests.support.server import ChatbotServer  # noqa: E402

CACHE = Path(os.environ.get("CHATBOT_DEV_CACHE", Path.home() / ".cache/chatbot-dev"))
VERSION = "0.3.36"
AVX512_FLAGS = {"avx512f": "GGML_AVX512", "avx512_vnni": "GGML_AVX512_VNNI",
                "avx512_bf16": "GGML_AVX512_BF16", "avx512vbmi": "GGML_AVX512_VBMI"}
QUESTION = "Explain in a few sentences how to write good meeting notes. Topic {}."


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def candidates() -> dict[str, tuple[str, list[str]]]:
    """name -> (CMake flags, targets to build), besides the installed portable build."""
    avx512 = [f"-D{opt}=ON" for flag, opt in AVX512_FLAGS.items() if flag in cpu_flags()]
    builds = {}
    if avx512:
        builds["avx512"] = (f"{PORTABLE_CMAKE_ARGS} {' '.join(avx512)}", ["llama"])
    builds["all-variants"] = (
        "-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON "
        "-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF",
        ["llama"])
    return builds


def sdist_source() -> Path:
    src = CACHE / f"llama-src-{VERSION}"
    if not (src / "CMakeLists.txt").is_file():
        with tempfile.TemporaryDirectory() as tmp:
            sdist = os.environ.get("LLAMA_CPP_PYTHON_SDIST")
            if not sdist:
                subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                                "--no-binary", ":all:", "-d", tmp,
                                f"llama-cpp-python=={VERSION}"], check=True)
                sdist = next(Path(tmp).glob("*.tar.gz"))
            src.mkdir(parents=True, exist_ok=True)
            subprocess.run(["tar", "xzf", str(sdist), "-C", str(src), "--strip-components=3",
                            f"llama_cpp_python-{VERSION}/vendor/llama.cpp"], check=True)
    return src


def build(name: str, flags: str, targets: list[str]) -> Path:
    key = hashlib.sha256(f"{VERSION}\n{flags}\n{targets}".encode()).hexdigest()[:12]
    out = CACHE / "llama-builds" / f"{name}-{key}"
    lib = out / "build" / "bin"
    if (out / "done").is_file():
        return lib
    print(f"building {name}: {flags} (log: {out}/build.log)", file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "build.log", "wb") as log:
        subprocess.run(["nice", "cmake", "-S", str(sdist_source()), "-B", str(out / "build"),
                        "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON",
                        "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", *flags.split()],
                       check=True, stdout=log, stderr=subprocess.STDOUT)
        subprocess.run(["nice", "cmake", "--build", str(out / "build"), "-j", "2",
                        "--target", *targets], check=True, stdout=log, stderr=subprocess.STDOUT)
    (out / "done").write_text(flags + "\n")
    return lib


def system_info(lib: Path) -> str:
    """The features of the CPU backend ggml loads from `lib` (cwd = lib: where a
    GGML_BACKEND_DL build looks for its modules)."""
    probe = ("import llama_cpp; llama_cpp.llama_backend_init(); "
             "print(llama_cpp.llama_print_system_info().decode())")
    done = subprocess.run([sys.executable, "-c", probe], cwd=lib, capture_output=True,
                          text=True, env={**os.environ, "LLAMA_CPP_LIB_PATH": str(lib)},
                          timeout=120)
    return done.stdout.strip() or done.stderr.strip()[-300:]


class Service:
    """Our service on SmolLM2 with the llama.cpp in `lib` (cwd = lib: where a
    GGML_BACKEND_DL build looks for its CPU modules)."""

    def __init__(self, lib: Path, work: Path, threads: int, max_tokens: int) -> None:
        self.server = ChatbotServer(work, "office", cwd=lib, env={
            "LLAMA_CPP_LIB_PATH": str(lib), "CHATBOT_ENGINE": "batched",
            "CHATBOT_OFFICE_MODEL": str(bundled_model_path()),
            "CHATBOT_HISTORY_PATH": ":memory:", "CHATBOT_LOG_LEVEL": "warning",
            "CHATBOT_OFFICE__MAX_CONCURRENT": "4", "CHATBOT_OFFICE__MODEL__N_CTX": "2048",
            "CHATBOT_OFFICE__MODEL__N_THREADS": str(threads),
            "CHATBOT_OFFICE__GENERATION__MAX_TOKENS": str(max_tokens),
            "CHATBOT_OFFICE__GENERATION__TEMPERATURE": "0"})
        self.url = self.server.url
        self.server.wait_until("/readyz", timeout=300)

    def ask(self, n: int) -> int:
        r = httpx.post(self.url + "/Llama", json={"input_data": QUESTION.format(n)},
                       timeout=300)
        r.raise_for_status()
        return int(r.headers["x-generated-tokens"])

    def cpu_seconds(self) -> float:
        """User + system CPU time of the service so far (all its threads)."""
        fields = Path(f"/proc/{self.server.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def measure(self, clients: int, requests_each: int) -> tuple[float, float]:
        """(tokens per wall second, tokens per CPU second of the service). The second is
        what the build changes; it holds steady on a busy machine, where wall time does not
        (with one llama.cpp thread nothing spin-waits for a preempted sibling)."""
        started, cpu = time.perf_counter(), self.cpu_seconds()
        with ThreadPoolExecutor(clients) as pool:
            tokens = sum(pool.map(
                lambda c: sum(self.ask(c * 100 + i) for i in range(requests_each)),
                range(clients)))
        return (tokens / (time.perf_counter() - started),
                tokens / max(self.cpu_seconds() - cpu, 1e-9))

    def stop(self) -> None:
        self.server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--builds", default="avx2,avx512,all-variants",
                        help="which candidates, comma-separated (all-variants compiles every "
                        "variant ggml has: its library depends on them; about 30 minutes)")
    args = parser.parse_args()
    import llama_cpp

    chosen = args.builds.split(",")
    libs = {"avx2": Path(llama_cpp.__file__).parent / "lib"}
    libs.update({name: build(name, flags, targets)
                 for name, (flags, targets) in candidates().items() if name in chosen})
    info = {name: system_info(lib) for name, lib in libs.items()}
    results: dict[str, dict[str, list[float]]] = {
        n: {"c1": [], "c4": [], "c1cpu": [], "c4cpu": []} for n in libs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = list(libs) if r % 2 == 0 else list(reversed(libs))
            for name in order:
                service = Service(libs[name], Path(tmp), args.threads, args.max_tokens)
                try:
                    service.ask(-1)  # warm-up
                    for level, clients, each in (("c1", 1, 4), ("c4", 4, 3)):
                        wall, cpu = service.measure(clients, each)
                        results[name][level].append(wall)
                        results[name][level + "cpu"].append(cpu)
                finally:
                    service.stop()
                got = results[name]
                print(f"round {r + 1} {name}: 1 client {got['c1'][-1]:.0f} tok/s "
                      f"({got['c1cpu'][-1]:.0f} per CPU-s), 4 clients {got['c4'][-1]:.0f} "
                      f"tok/s ({got['c4cpu'][-1]:.0f} per CPU-s)", file=sys.stderr, flush=True)
    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    def runs(values: list[float]) -> str:
        return "/".join(f"{x:.0f}" for x in values)

    base = {k: mean(v) for k, v in results["avx2"].items()}
    lines = [f"SmolLM2-135M Q4_1, batched engine, {args.threads} llama.cpp thread(s), greedy, "
             f"{args.max_tokens} tokens, 1-minute load {os.getloadavg()[0]:.1f}. Runs are "
             "separated by /; 'per CPU-s' is tokens per CPU second of the service process.", "",
             "| build | 1 client tok/s | per CPU-s | 4 clients tok/s | per CPU-s "
             "| per CPU-s vs avx2 (1 / 4) | CPU backend features |",
             "|---|---|---|---|---|---|---|"]
    for name in libs:
        got = results[name]
        ratio = (f"{mean(got['c1cpu']) / base['c1cpu']:.2f} / "
                 f"{mean(got['c4cpu']) / base['c4cpu']:.2f}")
        cpu = system_info_features(info[name]).get("CPU", {})
        features = " ".join(k for k, v in cpu.items() if v == "1")
        lines.append(f"| {name} | {runs(got['c1'])} | {runs(got['c1cpu'])} | {runs(got['c4'])} "
                     f"| {runs(got['c4cpu'])} | {ratio} | {features} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    for name, text_info in info.items():
        print(f"{name}: {text_info}")
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
