"""Install the project into the running interpreter's environment, with llama.cpp built portably.

    .venv/bin/python services/install.py -e '.[service,llm]'   # the README's run command
    CHATBOT_LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON" .venv/bin/python services/install.py '.[llm]'

Why this exists rather than a plain `pip install`:

* llama-cpp-python compiles llama.cpp with `-march=native` unless told otherwise. On Intel CPUs
  with AMX that build dies with SIGILL at the first generation (ggml asks for the AMX tile
  permission on one thread and runs tile instructions on others: upstream llama.cpp#26954).
  The default here, `PORTABLE_CMAKE_ARGS`, never compiles AMX code and runs on any x86-64-v3
  CPU (AVX2, FMA, F16C); docs/llama-cpp-build.md says why this one.
* pip's wheel cache is keyed by the sdist, not by `CMAKE_ARGS`, so a wheel built earlier with
  other flags would silently come back. Here the wheel is built once per set of flags into
  `~/.cache/chatbot/llama-cpp-wheels/<sha256 of version, flags, interpreter>/` and installed
  from there; other flags mean another key, so another build.

`CHATBOT_LLAMA_CMAKE_ARGS` is the one setting that opts into another build on purpose (native,
CUDA: the CUDA image sets it). The arguments go to `pip install` as they are; with none, only
llama-cpp-python is installed. `--print-cmake-args` prints the flags in force and exits
(tests/bench/build-llama-server builds the benchmark's peer with them).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS_VARIABLE = "CHATBOT_LLAMA_CMAKE_ARGS"

# x86-64-v3 without AVX-512 and without AMX: chosen by measurement (docs/llama-cpp-build.md,
# docs/benchmarks.md). LLAVA_BUILD=OFF: the services never load the multimodal library.
PORTABLE_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF "
    "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
)


def pinned_requirement() -> str:
    """`llama-cpp-python==X` as pyproject.toml pins it (the one place the version lives)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["optional-dependencies"]["llm"]:
        if requirement.replace("_", "-").startswith("llama-cpp-python=="):
            return requirement
    raise SystemExit("pyproject.toml: the llm extra does not pin llama-cpp-python==VERSION")


def cmake_args() -> str:
    return os.environ.get(FLAGS_VARIABLE, "").strip() or PORTABLE_CMAKE_ARGS


def build_key(requirement: str, flags: str) -> str:
    facts = [requirement, flags, sys.implementation.cache_tag, sysconfig.get_platform(),
             platform.machine()]
    return hashlib.sha256("\n".join(facts).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "chatbot" / "llama-cpp-wheels"


def installed_from() -> str:
    """The URL of the wheel the installed llama-cpp-python came from, or ''."""
    try:
        direct_url = metadata.distribution("llama_cpp_python").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return ""
    return json.loads(direct_url or "{}").get("url", "")


def pip(*args: str, env: dict[str, str] | None = None) -> None:
    command = [sys.executable, "-m", "pip", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)


def build_wheel(requirement: str, flags: str, target: Path) -> Path:
    """Compiles llama-cpp-python with `flags` into `target`. One build per key at a time (a
    lock); a cut build leaves only a staging directory, which the next build removes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():  # built by another install while this one waited
            return target
        for leftover in target.parent.glob(f"{target.name}.*/"):
            shutil.rmtree(leftover, ignore_errors=True)
        print(f"==> compiling {requirement} with CMAKE_ARGS={flags!r} (about 5 minutes on two "
              "cores)", flush=True)
        staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
        try:
            # --no-cache-dir: never take (or leave) a wheel in pip's cache, keyed by sdist only.
            env = {**os.environ, "CMAKE_ARGS": flags, "FORCE_CMAKE": "1"}
            pip("wheel", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python",
                "--wheel-dir", str(staging), requirement, env=env)
            (staging / "build.json").write_text(json.dumps(
                {"requirement": requirement, "cmake_args": flags}, indent=2) + "\n")
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def install_llama_cpp() -> None:
    requirement, flags = pinned_requirement(), cmake_args()
    wheel_dir = cache_dir() / build_key(requirement, flags)
    if not wheel_dir.is_dir():
        build_wheel(requirement, flags, wheel_dir)
    (wheel,) = wheel_dir.glob("llama_cpp_python-*.whl")
    if installed_from() == wheel.as_uri():
        print(f"==> llama-cpp-python: already installed from {wheel}", flush=True)
        return
    print(f"==> llama-cpp-python: installing {wheel} (CMAKE_ARGS={flags!r})", flush=True)
    pip("install", "--no-deps", "--force-reinstall", str(wheel))


def main(argv: list[str]) -> None:
    if argv == ["--print-cmake-args"]:
        print(cmake_args())
        return
    install_llama_cpp()
    if argv:
        # llama-cpp-python is already installed at the pinned version: pip keeps it.
        pip("install", *argv)


if __name__ == "__main__":
    # A stopped install (Ctrl-C, SIGTERM) still runs its clean-up.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    main(sys.argv[1:])
