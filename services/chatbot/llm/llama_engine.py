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
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from chatbot.core.ports import Completion, EngineStatus
from chatbot.domain.conversation import ChatMessage
from chatbot.domain.errors import ContextLengthExceededError
from chatbot.domain.personas import STOP_STRINGS, SamplingParams
from chatbot.llm.lifecycle import ModelLifecycle, model_chat_format
from chatbot.llm.loading import LlamaLogCapture, cpu_count, kv_cache_type
from chatbot.llm.relay import END, Relay
from chatbot.settings import ModelSettings

log = logging.getLogger(__name__)


class LlamaEngine(ModelLifecycle):
    def __init__(self, path: Path, settings: ModelSettings, wait_timeout_s: float = 0.0) -> None:
        super().__init__(path, settings, wait_timeout_s, thread_name="llama-decode")
        self._llm = None
        self.generated_tokens = 0
        self._generating = False

    def status(self) -> EngineStatus:
        return self._status({"generated_tokens": self.generated_tokens,
                             "generating": self._generating})

    # -- loading ---------------------------------------------------------------------------

    def _load_blocking(self) -> None:
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
        self._facts = self.model_facts("sequential", llm.metadata, log_lines, threads,
                                       n_ctx=llm.n_ctx())
        self._eos = llm.token_eos()
        # The same prompt create_chat_completion renders, for counting it beforehand.
        self._format = model_chat_format(llm._model)
        self._llm = llm

    def _release_blocking(self) -> None:
        self._llm.close()
        self._llm = None

    def _require(self):
        super()._require()
        return self._llm

    # -- counting --------------------------------------------------------------------------

    def context_tokens(self) -> int:
        return self._require().n_ctx()

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        llm = self._require()
        prompt = self._format(messages)
        return len(llm.tokenize(prompt.text.encode("utf-8"), add_bos=prompt.add_bos,
                                special=True))

    async def prefill_next_turn(self, messages: list[ChatMessage]) -> None:
        """Nothing: one sequence that every turn of every conversation shares."""

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


def _domain_error(exc: Exception) -> Exception:
    """llama-cpp-python's overflow ("Requested tokens (N) exceed context window of C")."""
    if isinstance(exc, ValueError) and "exceed context window" in str(exc):
        return ContextLengthExceededError(f"The prompt does not fit the context: {exc}")
    return exc
