"""The lifecycle both llama.cpp engines share: wait for the model file, load it on the
engine's one dedicated thread, report what was loaded, refuse work until then, close.

llama.cpp's OpenMP worker pool is tied to the thread that first used it, so every call of a
model (loading included) runs on `self._executor`'s single thread. Subclasses give
`_load_blocking` (sets `self._facts` through `model_facts`) and `_release_blocking`, and may
hook `_after_load` and `_before_close`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from chatbot.core.ports import EngineStatus
from chatbot.domain.errors import EngineUnavailableError
from chatbot.llm.chat_format import ChatFormat
from chatbot.llm.loading import (
    layers_offloaded,
    llama_cpp_build,
    log_llama_cpp_build,
    wait_for_file,
)
from chatbot.settings import ModelSettings

log = logging.getLogger(__name__)


class ModelLifecycle:
    def __init__(self, path: Path, settings: ModelSettings, wait_timeout_s: float,
                 thread_name: str) -> None:
        self.path = Path(path)
        self.settings = settings
        self.wait_timeout_s = wait_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._loaded = False
        self._detail = f"waiting to load {self.path}"
        self._facts: dict = {}

    @property
    def model_name(self) -> str:
        return self.path.name

    def _status(self, live: dict) -> EngineStatus:
        """What /readyz reports: the facts of the load, then the engine's live counters."""
        return EngineStatus(self._loaded, self.model_name, self._detail,
                            {**self._facts, **live})

    async def load(self) -> None:
        """Load the model; on failure the engine stays unavailable and says why."""
        try:
            if not self.path.is_file():
                self._detail = f"waiting for model file {self.path}"
            await wait_for_file(self.path, self.wait_timeout_s)
            self._detail = f"loading {self.path}"
            started = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load_blocking)
            self._facts["load_seconds"] = round(time.monotonic() - started, 3)
            self._after_load()
            self._loaded = True
            self._detail = "model loaded"
            log.info("loaded %s in %.2fs: %s", self.path, self._facts["load_seconds"], self._facts)
            log_llama_cpp_build(self._facts["llama_cpp"])
        except Exception as exc:
            self._detail = f"model load failed: {exc}"
            log.error("%s", self._detail)

    def _require(self) -> None:
        if not self._loaded:
            raise EngineUnavailableError(f"The model is not available: {self._detail}")

    async def close(self) -> None:
        self._before_close()

        def release() -> None:
            if self._loaded:
                self._loaded = False
                self._release_blocking()

        await asyncio.get_running_loop().run_in_executor(self._executor, release)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- for subclasses --------------------------------------------------------------------

    def _load_blocking(self) -> None:
        raise NotImplementedError

    def _release_blocking(self) -> None:
        raise NotImplementedError

    def _after_load(self) -> None:
        """Runs on the event loop once the model is loaded, before the engine is ready."""

    def _before_close(self) -> None:
        """Runs on the event loop when closing, before the model is released."""

    def model_facts(self, engine: str, meta: dict, log_lines: list[str], threads: int,
                    **specific) -> dict:
        """What was loaded, how (for /readyz and the status report)."""
        import llama_cpp

        s = self.settings
        arch = meta.get("general.architecture", "llama")
        return {
            "engine": engine, **specific, "n_batch": s.n_batch,
            "n_layer": int(meta.get(f"{arch}.block_count", 0)),
            "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
            "gpu_layers_requested": s.n_gpu_layers,
            "gpu_layers_offloaded": layers_offloaded(log_lines),
            "main_gpu": s.main_gpu, "flash_attn": s.flash_attn, "kv_cache_type": s.kv_cache_type,
            "n_threads": threads,
            "chat_template": "gguf" if "tokenizer.chat_template" in meta else "none",
            "llama_cpp": llama_cpp_build(),
        }


def model_chat_format(model) -> ChatFormat:
    """The GGUF's own chat template for a llama-cpp-python `_internals.LlamaModel`."""
    eos, bos = model.token_eos(), model.token_bos()
    return ChatFormat(model.metadata(), model.token_get_text(bos) if bos != -1 else "",
                      model.token_get_text(eos) if eos != -1 else "", eos)
