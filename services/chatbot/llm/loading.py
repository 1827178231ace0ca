"""What both llama.cpp engines need to load a model: the file, threads, KV types, llama.cpp's
log."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import re
import time
from pathlib import Path

log = logging.getLogger(__name__)
OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")


async def wait_for_file(path: Path, timeout_s: float) -> None:
    """Waits up to `timeout_s` for `path` to appear (a model still being fetched)."""
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() >= deadline:
            raise FileNotFoundError(f"model file not found: {path}")
        await asyncio.sleep(0.2)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def kv_cache_type(name: str) -> int:
    import llama_cpp

    return {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0,
            "f32": llama_cpp.GGML_TYPE_F32}[name]


def llama_cpp_build() -> dict:
    """The llama.cpp that was loaded: its version and what its backends were compiled with
    (`llama_print_system_info`), so a user can see whether they got the portable build, a
    native one or CUDA, and /readyz can show it beside the offloaded layers."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace").strip()
    backends = system_info_features(info)
    cpu = backends.get("CPU", {})
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "cpu_features": sorted(name for name, value in cpu.items() if value == "1"),
        "amx": any(name.startswith("AMX") and value == "1" for name, value in cpu.items()),
        "backends": sorted(backends),
        "system_info": info,
    }


def log_llama_cpp_build(build: dict) -> None:
    log.info("llama.cpp (llama-cpp-python %s): backends %s; CPU features %s",
             build["llama_cpp_python"], ", ".join(build["backends"]) or "none",
             " ".join(build["cpu_features"]) or "none")
    if build["amx"]:
        log.warning("this llama.cpp was compiled with AMX: generation can die with SIGILL "
                    "(llama.cpp#26954); reinstall with the portable build (services/install.py)")


def system_info_features(info: str) -> dict[str, dict[str, str]]:
    """`CPU : AVX = 1 | AVX2 = 1 | ... | CUDA : ARCHS = 750 | ...` -> {backend: {name: value}}."""
    backends: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for part in info.split("|"):
        if " : " in part:
            backend, _, part = part.partition(" : ")
            current = backends.setdefault(backend.strip(), {})
        name, sep, value = part.partition(" = ")
        if sep and current is not None:
            current[name.strip()] = value.strip()
    return backends


def layers_offloaded(log_lines: list[str]) -> int:
    """llama.cpp's own account of what it offloaded; CPU-only builds offload nothing."""
    found = [m for line in log_lines if (m := OFFLOADED.search(line))]
    return int(found[-1].group(1)) if found else 0


class LlamaLogCapture:
    """Collects llama.cpp's log lines while a model loads (models load one at a time)."""

    def __enter__(self) -> list[str]:
        import llama_cpp
        from llama_cpp import _logger

        self.lines: list[str] = []
        forward = _logger.llama_log_callback

        @llama_cpp.llama_log_callback
        def capture(level, text, user_data):
            self.lines.append(text.decode("utf-8", "replace"))
            forward(level, text, user_data)

        self._callback = capture  # keep a reference while llama.cpp may call it
        self._restore = forward
        llama_cpp.llama_log_set(capture, ctypes.c_void_p(0))
        return self.lines

    def __exit__(self, *exc) -> None:
        import llama_cpp

        llama_cpp.llama_log_set(self._restore, ctypes.c_void_p(0))
