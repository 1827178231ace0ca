"""The llama.cpp engine (llama-cpp-python): one model instance, one decode thread.

Every llama.cpp call of a model runs on the same dedicated thread: llama.cpp's OpenMP
worker pool is tied to the thread that first used it, and hopping threads measured 1.5-3x
slower per token. Requests therefore run one at a time here. The batched engine
(`batched_engine.py`) is the default; this one stays selectable (`CHATBOT_ENGINE=sequential`)
as the benchmark's baseline.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from chatbot.core.ports import Completion, EngineStatus
from chatbot.domain.conversation import ChatMessage
from chatbot.domain.errors import ContextLengthExceededError, EngineUnavailableError
from chatbot.domain.personas import STOP_STRINGS, SamplingParams
from chatbot.llm.chat_format import ChatFormat
from chatbot.llm.loading import (
    LlamaLogCapture,
    cpu_count,
    kv_cache_type,
    layers_offloaded,
    llama_cpp_build,
    log_llama_cpp_build,
    wait_for_file,
)
from chatbot.llm.relay import END, Relay
from chatbot.settings import ModelSettings

log = logging.getLogger(__name__)


class LlamaEngine:
    def __init__(self, path: Path, settings: ModelSettings, wait_timeout_s: float = 0.0) -> None:
        self.path = Path(path)
        self.settings = settings
        self.wait_timeout_s = wait_timeout_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama-decode")
        self._llm = None
        self._detail = f"waiting to load {self.path}"
        self._facts: dict = {}
        self.generated_tokens = 0
        self._generating = False

    @property
    def model_name(self) -> str:
        return self.path.name

    def status(self) -> EngineStatus:
        facts = dict(self._facts)
        facts.update(generated_tokens=self.generated_tokens, generating=self._generating)
        return EngineStatus(self._llm is not None, self.model_name, self._detail, facts)

    # -- loading ---------------------------------------------------------------------------

    async def load(self) -> None:
        """Load the model; on failure the engine stays unavailable and says why."""
        try:
            await self._wait_for_file()
            self._detail = f"loading {self.path}"
            loop = asyncio.get_running_loop()
            started = time.monotonic()
            self._llm = await loop.run_in_executor(self._executor, self._load_blocking)
            self._facts["load_seconds"] = round(time.monotonic() - started, 3)
            self._detail = "model loaded"
            log.info("loaded %s in %.2fs: %s", self.path, self._facts["load_seconds"], self._facts)
            log_llama_cpp_build(self._facts["llama_cpp"])
        except Exception as exc:
            self._detail = f"model load failed: {exc}"
            log.error("%s", self._detail)

    async def _wait_for_file(self) -> None:
        if not self.path.is_file():
            self._detail = f"waiting for model file {self.path}"
        await wait_for_file(self.path, self.wait_timeout_s)

    def _load_blocking(self):
        import llama_cpp

        s = self.settings
        kv_type = kv_cache_type(s.kv_cache_type)
        threads = s.n_threads or cpu_count()
        kwargs = dict(
            model_path=str(self.path), n_ctx=s.n_ctx, n_batch=s.n_batch,
            n_gpu_layers=s.n_gpu_layers, main_gpu=s.main_gpu, flash_attn=s.flash_attn,
            type_k=kv_type, type_v=kv_type, use_mmap=s.use_mmap, use_mlock=s.use_mlock,
            n_threads=threads, n_threads_batch=threads,
            verbose=False,
        )
        if s.seed is not None:
            kwargs["seed"] = s.seed
        if s.rope_scaling_type is not None and s.rope_freq_scale is not None:
            kwargs.update(rope_scaling_type=s.rope_scaling_type, rope_freq_scale=s.rope_freq_scale)
        with LlamaLogCapture() as log_lines:
            llm = llama_cpp.Llama(**kwargs)
        meta = llm.metadata
        arch = meta.get("general.architecture", "llama")
        n_layer = int(meta.get(f"{arch}.block_count", 0))
        offloaded = layers_offloaded(log_lines)
        requested = s.n_gpu_layers
        self._facts = {
            "engine": "sequential", "n_ctx": llm.n_ctx(), "n_batch": s.n_batch, "n_layer": n_layer,
            "gpu_offload_supported": bool(llama_cpp.llama_supports_gpu_offload()),
            "gpu_layers_requested": requested, "gpu_layers_offloaded": offloaded,
            "main_gpu": s.main_gpu, "flash_attn": s.flash_attn, "kv_cache_type": s.kv_cache_type,
            "n_threads": kwargs["n_threads"],
            "chat_template": "gguf" if "tokenizer.chat_template" in meta else "none",
            "llama_cpp": llama_cpp_build(),
        }
        self._eos = llm.token_eos()
        bos = llm.token_bos()
        # The same prompt create_chat_completion renders, for counting it beforehand.
        self._format = ChatFormat(
            meta, llm._model.token_get_text(bos) if bos != -1 else "",
            llm._model.token_get_text(self._eos) if self._eos != -1 else "", self._eos)
        return llm

    def _require(self):
        if self._llm is None:
            raise EngineUnavailableError(f"The model is not available: {self._detail}")
        return self._llm

    # -- counting --------------------------------------------------------------------------

    def context_tokens(self) -> int:
        return self._require().n_ctx()

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        llm = self._require()
        prompt = self._format(messages)
        return len(llm.tokenize(prompt.text.encode("utf-8"), add_bos=prompt.add_bos,
                                special=True))

    # -- generation ------------------------------------------------------------------------

    def _kwargs(self, messages: list[ChatMessage], params: SamplingParams) -> dict:
        seed = params.seed if params.seed is not None else self.settings.seed
        return dict(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k, min_p=params.min_p, repeat_penalty=params.repeat_penalty,
            frequency_penalty=params.frequency_penalty,
            presence_penalty=params.presence_penalty, stop=list(STOP_STRINGS), seed=seed,
        )

    async def stream(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[str]:
        llm = self._require()
        kwargs = self._kwargs(messages, params)
        loop = asyncio.get_running_loop()
        relay = Relay(loop)
        cancel = threading.Event()

        def run() -> None:
            if cancel.is_set():  # cancelled while waiting for the decode thread
                return
            self._generating = True
            try:
                for chunk in llm.create_chat_completion(stream=True, **kwargs):
                    if cancel.is_set():
                        break
                    text = chunk["choices"][0]["delta"].get("content")
                    if text:
                        self.generated_tokens += 1
                        relay.put(text)
                relay.put(END, flush=True)
            except Exception as exc:
                relay.put(_domain_error(exc), flush=True)
            finally:
                self._generating = False

        self._executor.submit(run)
        try:
            async for piece in relay.pieces():
                yield piece
        finally:
            cancel.set()

    async def complete(self, messages: list[ChatMessage], params: SamplingParams) -> Completion:
        import llama_cpp

        llm = self._require()
        kwargs = self._kwargs(messages, params)
        cancel = threading.Event()
        eos = self._eos

        def end_when_cancelled(_ids, scores: np.ndarray) -> np.ndarray:
            if cancel.is_set():  # force end-of-sequence: the generation stops at this token
                scores = np.full_like(scores, -np.inf)
                scores[eos] = 0.0
            return scores

        def run() -> Completion:
            if cancel.is_set():
                return Completion("", 0)
            self._generating = True
            try:
                out = llm.create_chat_completion(
                    stream=False,
                    logits_processor=llama_cpp.LogitsProcessorList([end_when_cancelled]),
                    **kwargs,
                )
            except ValueError as exc:
                raise _domain_error(exc) from exc
            finally:
                self._generating = False
            tokens = out["usage"]["completion_tokens"]
            self.generated_tokens += tokens
            return Completion(out["choices"][0]["message"].get("content") or "", tokens,
                              prompt_tokens=out["usage"]["prompt_tokens"])

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, run)
        finally:
            cancel.set()

    async def close(self) -> None:
        def release() -> None:
            if self._llm is not None:
                self._llm.close()
                self._llm = None

        await asyncio.get_running_loop().run_in_executor(self._executor, release)
        self._executor.shutdown(wait=False, cancel_futures=True)


def _domain_error(exc: Exception) -> Exception:
    """llama-cpp-python's overflow ("Requested tokens (N) exceed context window of C")."""
    if isinstance(exc, ValueError) and "exceed context window" in str(exc):
        return ContextLengthExceededError(f"The prompt does not fit the context: {exc}")
    return exc
