"""The batched llama.cpp engine: one context, several conversations decoded together.

One model, one `llama_context` with `n_seq_max` sequences (each with its own `n_ctx`
cells: the context holds `n_ctx * n_seq_max`, non-unified), and one dedicated thread that
owns every llama.cpp call (llama.cpp's OpenMP pool is tied to the thread that first used
it). That thread runs the step loop:

1. requests waiting for a sequence take a free slot (their conversation's own, else one
   whose cells nobody loses, else the least recently used: `slots.py`), reusing the KV
   cells of the prefix that slot still holds (`llama_memory_seq_rm` drops the rest), or
   copying them
   from another slot that holds more of the prompt (`llama_memory_seq_cp`: the shared
   system prompt is evaluated once, not once per slot), or from host RAM
   (`kv_host_cache.py`: a slot's conversation is saved there before another prompt
   overwrites its cells, and restored into a slot when that conversation comes back);
2. one `llama_batch` gets the last sampled token of every generating sequence first, then
   prompt tokens of starting sequences, oldest first, up to `prompt_tokens_per_step` and
   `n_batch` (llama-server's order; a long prompt is chunked over several steps, so a wave
   of new prompts does not stall the conversations already generating), except while a
   sequence has sampled tokens but shown no text yet (`prompts_wait`); then, with what the
   step's budget has left (a quarter of it at most), prefills (`prefill_next_turn`: once
   an answer ends, the start of its conversation's next prompt is evaluated in its slot
   while the user reads, so the next turn evaluates only its new message);
3. one `llama_decode`, on all the configured threads, or on one for a step too small to
   split (`threads.py`);
4. every sequence that got logits samples its next token with its own native sampler chain
   (its persona's parameters, its own seed), and its text goes to its own HTTP response
   through a `Relay`; finished and cancelled sequences leave their slot (their cells stay
   resident for the conversation's next turn until another prompt needs the slot).

When the replica drains, the conversations' cells it holds (idle slots and host RAM) are
exported, each tagged with its conversation's affinity key, and handed to the replica that
owns the conversation next (`chatbot.peers.handoff`), which imports them into its own host
RAM: only after checking they were made by the same model file and KV-relevant settings
(`kv_fingerprint`) and that they have exactly the size such a state of that many tokens has.

Python runs a handful of attribute reads and two C calls per sequence per step; sampling
itself is llama.cpp's. The model is loaded with llama-cpp-python's `_internals` wrappers
(model, context and batch lifetimes), the prompt formatted by the GGUF's own template
(`chat_format.py`), everything else is the plain `llama_*` C API.
"""

from __future__ import annotations

import array
import asyncio
import concurrent.futures
import ctypes
import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from chatbot.core.affinity import CONVERSATION
from chatbot.core.ports import Completion, EngineStatus
from chatbot.domain.conversation import ChatMessage
from chatbot.domain.errors import ContextLengthExceededError, EngineUnavailableError
from chatbot.domain.personas import STOP_STRINGS, SamplingParams
from chatbot.llm.kv_host_cache import KvHostCache
from chatbot.llm.lifecycle import ModelLifecycle, model_chat_format
from chatbot.llm.loading import LlamaLogCapture, cpu_count, kv_cache_type
from chatbot.llm.relay import END, Relay
from chatbot.llm.sampling import sampler_chain
from chatbot.llm.slots import COPY_MIN_GAIN, Slot, SlotTable, common_prefix
from chatbot.llm.text_stream import TextStream
from chatbot.llm.threads import step_threads
from chatbot.settings import ModelSettings

log = logging.getLogger(__name__)

N_UBATCH_MAX = 512
# Prompts whose tokens are kept (`tokenize_chat`): a turn's prompt is counted while its
# history is fitted, then tokenized again to run; its head again at its next turn.
TOKENIZED_KEPT = 32
# A sequence waits at most this many tokens for its first text before prompts share the
# step again: a UTF-8 character is at most 4 bytes, each a token in a byte-level vocabulary
# that lacks it (a Hangul syllable is 3 in SmolLM2's English one).
FIRST_TEXT_TOKENS = 4
# Prefills take at most this share of a step's prompt budget: they have the user's reading
# time, and smaller steps keep the generating conversations fluent and let a new question's
# prompt start sooner.
PREFILL_SHARE = 4
# A slot's cells are saved to host RAM when at least this many of them would be overwritten.
SAVE_MIN_TOKENS = COPY_MIN_GAIN
# Where a turn's KV cells came from: `new` (a conversation's first turn), and for a
# follow-up `local` (this replica still held its earlier turns in a slot), `restored`
# (from host RAM), `handed_over` (from host RAM, cells another replica handed over as it
# drained), `evaluated` (from scratch: only the shared system prompt was found).
KV_TURNS = ("new", "local", "restored", "handed_over", "evaluated")


@dataclass(frozen=True)
class SavedKv:
    """One conversation's KV cells out of a replica: its affinity key, the tokens its cells
    hold (positions 0..n-1) and `llama_state_seq_get_data`'s bytes for them."""

    key: str
    tokens: list[int]
    state: bytes


class _Request:
    """One generation: its prompt, its sampling, where its text goes."""

    __slots__ = ("prompt", "params", "stops", "seed", "relay", "cancelled", "own_from",
                 "restored", "handed_over", "key", "prefill")

    def __init__(self, prompt: list[int], params: SamplingParams | None,
                 stops: tuple[str, ...], seed: int | None, relay: Relay | None,
                 own_from: int | None = None) -> None:
        self.prompt = prompt
        # Prompt only, no answer (no params, no relay): a conversation's next turn's start.
        self.prefill = relay is None
        # A follow-up turn: reused cells up to here were this conversation's own (half way
        # into its first question); None: a first turn.
        self.own_from = own_from
        self.restored = False
        self.handed_over = False  # restored from cells a draining replica handed over
        self.key = CONVERSATION.get()  # the conversation's affinity key (None: unplaced)
        self.params = params
        self.stops = stops
        self.seed = seed
        self.relay = relay
        self.cancelled = False  # set by the consumer; read by the step loop


class _Sequence:
    """A request running in a slot (decode-thread state only)."""

    __slots__ = ("request", "slot", "sampler", "fed", "last", "generated", "shown", "text",
                 "logits_at", "max_tokens", "first_token_at")

    def __init__(self, request: _Request, slot: Slot, reused: int, sampler) -> None:
        self.request = request
        self.slot = slot
        self.sampler = sampler
        self.fed = reused  # prompt tokens already in the KV cache
        self.last = -1  # the sampled token still to be decoded; -1 while prefilling
        self.generated = 0
        self.shown = False  # whether any of its text has gone to the relay
        self.text = TextStream(request.stops)
        self.logits_at = -1  # this step's batch index whose logits it samples from
        self.max_tokens = request.params.max_tokens if request.params else 0
        self.first_token_at = 0.0  # perf_counter() when its first token was sampled


class BatchedEngine(ModelLifecycle):
    """Implements `ChatEngine` for every persona that shares one model file."""

    def __init__(self, path: Path, settings: ModelSettings, n_seq: int = 1,
                 wait_timeout_s: float = 0.0) -> None:
        if n_seq < 1:
            raise ValueError("n_seq must be at least 1")
        super().__init__(path, settings, wait_timeout_s, thread_name="llama-batch")
        self.n_seq = n_seq
        self._cond = threading.Condition()
        self._pending: deque[_Request] = deque()
        # Prefills waiting for their conversation's slot, and those waiting or running
        # (`prefill_next_turn`; a generation of their conversation cancels them).
        self._prefills: deque[_Request] = deque()
        self._prefills_live: list[_Request] = []
        self._stopping = False
        self._running: list[_Sequence] = []
        self._pieces: dict[int, bytes] = {}
        # Counters (written by the decode thread only).
        self.generated_tokens = 0
        self.prompt_tokens_evaluated = 0
        self.prompt_tokens_reused = 0  # of which copied from another sequence:
        self.prompt_tokens_copied = 0
        self.prompt_tokens_restored = 0  # ... and of which restored from host RAM
        self.prompt_tokens_prefilled = 0  # evaluated ahead of a conversation's next turn
        self.prefills_cancelled = 0  # its turn (or another generation) came first
        self.decode_steps = 0
        self.decode_steps_one_thread = 0  # of them, on one thread (`threads.py`)
        self.peak_sequences = 0
        self.peak_batch_tokens = 0
        # llama-server's metrics (`llamacpp:*`): time in steps that evaluated prompt tokens,
        # each sequence's time from its first token to its last, busy sequences summed over
        # steps, and the longest sequence (prompt + answer) seen.
        self.prompt_seconds = 0.0
        self.predict_seconds = 0.0
        self.busy_sequence_steps = 0
        self.peak_sequence_tokens = 0
        self._slots: SlotTable | None = None
        self._host = KvHostCache(settings.cache_ram_mib * 2**20)
        self.kv_host_restores = 0
        # Turns by where their KV cells came from (KV_TURNS; see `_start`).
        self.kv_turns = dict.fromkeys(KV_TURNS, 0)
        self._question_starts: dict[str, int] = {}  # system prompt -> its tokens' end
        # Sequences whose cells are the source or target of a stream copy that llama.cpp
        # carries out at the next decode: their cells are not saved or restored until then.
        self._unsettled: set[int] = set()
        # Work for the decode thread between steps (export, import): (function, future).
        self._calls: deque[tuple[Callable[[object], object], concurrent.futures.Future]] = \
            deque()
        # A sequence's state size for n cells is state_base + n * state_per_cell (measured
        # once the loop starts); an imported state of any other size is refused.
        self.state_base = self.state_per_cell = 0
        self._fingerprint: str | None = None
        # Prompt text -> its tokens, the TOKENIZED_KEPT most recent (the fit's thread and the
        # event loop's both tokenize).
        self._tokenized: dict[tuple[bool, str], array.array] = {}
        self._tokenized_lock = threading.Lock()

    def status(self) -> EngineStatus:
        # Generations only: a prefill is idle work (the autoscaler reads these).
        active = sum(1 for seq in list(self._running) if not seq.request.prefill)
        return self._status(dict(
            generated_tokens=self.generated_tokens, generating=active > 0,
            sequences_active=active, sequences_waiting=len(self._pending),
            prompt_tokens_evaluated=self.prompt_tokens_evaluated,
            prompt_tokens_prefilled=self.prompt_tokens_prefilled,
            prefilling=len(self._prefills_live), prefills_cancelled=self.prefills_cancelled,
            prompt_tokens_reused=self.prompt_tokens_reused,
            prompt_tokens_copied=self.prompt_tokens_copied,
            prompt_tokens_restored=self.prompt_tokens_restored,
            kv_host_bytes=self._host.bytes, kv_host_sequences=len(self._host),
            kv_host_saves=self._host.saved, kv_host_saved_tokens=self._host.saved_tokens,
            kv_host_restores=self.kv_host_restores, kv_host_evictions=self._host.evicted,
            **{f"kv_turns_{k}": v for k, v in self.kv_turns.items()},
            decode_steps=self.decode_steps,
            decode_steps_one_thread=self.decode_steps_one_thread,
            peak_sequences=self.peak_sequences, peak_batch_tokens=self.peak_batch_tokens,
            prompt_seconds=self.prompt_seconds, predict_seconds=self.predict_seconds,
            busy_sequence_steps=self.busy_sequence_steps,
            peak_sequence_tokens=self.peak_sequence_tokens, **self._kv_cells(),
        ))

    def _kv_cells(self) -> dict:
        """KV cells holding tokens: of sequences generating now, and of all (idle slots keep a
        conversation's cells for its next turn until another prompt needs the slot)."""
        slots = self._slots
        if slots is None:
            return {}
        used = active = 0
        for slot in list(slots.slots):  # read from another thread: lengths only, racy is fine
            n = len(slot.tokens)
            used += n
            if slot.busy:
                active += n
        return {"kv_cells_used": used, "kv_cells_active": active,
                "kv_cells_total": self._n_ctx_seq * self.n_seq}

    # -- loading ---------------------------------------------------------------------------

    def _load_blocking(self) -> None:
        import llama_cpp as lc
        from llama_cpp import _internals, _logger

        _logger.set_verbose(False)  # llama.cpp's own log: errors only, as Llama(verbose=False)
        s = self.settings
        mparams = lc.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if s.n_gpu_layers == -1 else s.n_gpu_layers
        mparams.main_gpu = s.main_gpu
        mparams.load_mode = (
            lc.LLAMA_LOAD_MODE_MMAP_MLOCK if s.use_mmap and s.use_mlock
            else lc.LLAMA_LOAD_MODE_MLOCK if s.use_mlock
            else lc.LLAMA_LOAD_MODE_MMAP if s.use_mmap else lc.LLAMA_LOAD_MODE_NONE)
        threads = s.n_threads or cpu_count()
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = s.n_ctx * self.n_seq
        cparams.n_batch = s.n_batch
        cparams.n_ubatch = min(s.n_batch, N_UBATCH_MAX)
        cparams.n_seq_max = self.n_seq
        cparams.kv_unified = False  # each sequence its own n_ctx cells and attention
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if s.flash_attn
                                   else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        cparams.type_k = cparams.type_v = kv_cache_type(s.kv_cache_type)
        cparams.no_perf = True
        if s.rope_scaling_type is not None and s.rope_freq_scale is not None:
            cparams.rope_scaling_type = s.rope_scaling_type
            cparams.rope_freq_scale = s.rope_freq_scale
        with LlamaLogCapture() as log_lines:
            model = _internals.LlamaModel(path_model=str(self.path), params=mparams,
                                          verbose=False)
            try:
                context = _internals.LlamaContext(model=model, params=cparams, verbose=False)
            except Exception:
                model.close()
                raise
        self._model, self._context = model, context
        self._tokenized.clear()
        self._ctx, self._vocab = context.ctx, model.vocab
        self._memory = lc.llama_get_memory(context.ctx)
        self._n_batch = s.n_batch
        self._prompt_step = s.prompt_tokens_per_step
        self._prefill_step = max(1, s.prompt_tokens_per_step // PREFILL_SHARE)
        self._batch = _internals.LlamaBatch(n_tokens=s.n_batch, embd=0, n_seq_max=1,
                                            verbose=False)
        self._n_ctx_seq = lc.llama_n_ctx_seq(context.ctx)
        self._threads = self._step_threads = threads
        self._n_params = lc.llama_model_n_params(model.model)
        self._n_vocab = model.n_vocab()
        self._format = model_chat_format(model)
        self._facts = self.model_facts(
            "batched", model.metadata(), log_lines, threads, n_seq_max=self.n_seq,
            n_ctx=lc.llama_n_ctx(context.ctx), n_ctx_per_sequence=self._n_ctx_seq,
            prompt_tokens_per_step=s.prompt_tokens_per_step, cache_ram_mib=s.cache_ram_mib,
            chat_format=self._format.name)

    def _after_load(self) -> None:
        self._executor.submit(self._serve)  # the step loop, on the model's thread

    def _before_close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def _release_blocking(self) -> None:
        self._batch.close()
        self._context.close()
        self._model.close()

    # -- the port --------------------------------------------------------------------------

    def tokenize_chat(self, messages: list[ChatMessage], keep: bool = True,
                      ) -> tuple[list[int], tuple[str, ...]]:
        """The prompt tokens for `messages` and the stop strings that end the answer.
        `keep`: among the TOKENIZED_KEPT kept (False for a prompt that never runs)."""
        self._require()
        prompt = self._format(messages)
        key = (prompt.add_bos, prompt.text)
        with self._tokenized_lock:
            tokens = self._tokenized.get(key)
        if tokens is None:
            tokens = array.array("i", self._model.tokenize(prompt.text.encode("utf-8"),
                                                           prompt.add_bos, True))
            if keep:
                with self._tokenized_lock:
                    if len(self._tokenized) >= TOKENIZED_KEPT:
                        del self._tokenized[next(iter(self._tokenized))]
                    self._tokenized[key] = tokens
        return tokens.tolist(), tuple(dict.fromkeys((*STOP_STRINGS, *prompt.stop)))

    def context_tokens(self) -> int:
        """Each sequence's own cells: one conversation's prompt and answer together."""
        self._require()
        return self._n_ctx_seq

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        return len(self.tokenize_chat(messages)[0])

    def _own_from(self, messages: list[ChatMessage], tokens: list[int]) -> int | None:
        """For a follow-up turn (the messages hold an earlier answer): cells reused up to
        here held this conversation's own tokens, half way into its first question (the
        system prompt before it is shared with other conversations; the end of the first
        answer may retokenize differently from what was generated). None for a first
        turn."""
        span = self._first_question(messages, tokens)
        return None if span is None else (span[0] + span[1]) // 2

    def _first_question(self, messages: list[ChatMessage], tokens: list[int],
                        ) -> tuple[int, int] | None:
        """For a follow-up turn: where `tokens` start its first question (past the system
        prompt) and where they stop following the first turn's prompt (past its
        assistant header). None for a first turn."""
        if not any(m.role == "assistant" for m in messages):
            return None
        head = []
        for message in messages:
            head.append(message)
            if message.role == "user":
                break
        system = head[:-1]
        key = "\x00".join(m.content for m in system)
        start = self._question_starts.get(key)
        if start is None:
            blank = self.tokenize_chat([*system, ChatMessage(role="user", content="")])[0]
            if len(self._question_starts) >= 64:
                self._question_starts.clear()
            start = self._question_starts[key] = common_prefix(blank, tokens)
        end = common_prefix(self.tokenize_chat(head)[0], tokens)
        return start, end

    async def stream(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[str]:
        request = self._submit(messages, params)
        try:
            async for piece in request.relay.pieces():
                yield piece
        finally:
            request.cancelled = True  # the step loop frees the slot at its next step

    async def complete(self, messages: list[ChatMessage], params: SamplingParams) -> Completion:
        request = self._submit(messages, params)
        try:
            pieces = [piece async for piece in request.relay.pieces()]
        finally:
            request.cancelled = True
        return Completion("".join(pieces), len(pieces), prompt_tokens=len(request.prompt))

    def _submit(self, messages: list[ChatMessage], params: SamplingParams) -> _Request:
        """Queues a generation for the step loop (on the event loop's thread)."""
        self._require()
        tokens, stops = self.tokenize_chat(messages)
        if len(tokens) >= self._n_ctx_seq:
            # The use cases fit prompts before they get here; this guards the engine itself.
            raise ContextLengthExceededError.counted(len(tokens), 1, self._n_ctx_seq)
        seed = params.seed if params.seed is not None else self.settings.seed
        request = _Request(tokens, params, stops, seed, Relay(asyncio.get_running_loop()),
                           self._own_from(messages, tokens))
        with self._cond:
            if self._stopping:
                raise EngineUnavailableError("The model engine is shutting down.")
            if request.own_from is not None and request.key is not None:
                self._cancel_prefills_of(request)
            self._pending.append(request)
            self._cond.notify()
        return request

    async def prefill_next_turn(self, messages: list[ChatMessage]) -> None:
        """Evaluates now, in the conversation's own slot, the start of its next turn's prompt:
        `messages` (the system prompt, the turns the next turn will replay, this answer
        last) up to where the next user message's text will begin. The next turn then
        evaluates only its own message: the one before it carried this turn's time and
        search results (`core/prompts.py`), so its answer's cells are not the next prompt's
        and would otherwise be evaluated again while that user waits.

        Idle work: it waits behind every generation for a slot and for the step's prompt
        budget, runs only in the slot that still holds the conversation (no other
        conversation's cells are overwritten for it), gives its slot up when a generation
        waits for one, and stops when the conversation's next turn arrives (which then
        reuses what it evaluated). Only for a conversation with an affinity key (`CONVERSATION`:
        its cells carry it, which tells its slot from one of another conversation that
        asked the same first question). Off with `prefill_next_turn: false`."""
        if not self.settings.prefill_next_turn or not self._loaded or CONVERSATION.get() is None:
            return
        tokens, own_from = await asyncio.to_thread(self._next_turn_head, messages)
        if own_from is None or len(tokens) >= self._n_ctx_seq:
            return
        request = _Request(tokens, None, (), None, None, own_from)
        with self._cond:
            if self._stopping:
                return
            self._cancel_prefills_of(request)  # an older one of this conversation
            self._prefills.append(request)
            self._prefills_live.append(request)
            self._cond.notify()

    def _next_turn_head(self, messages: list[ChatMessage]) -> tuple[list[int], int | None]:
        """The tokens every next turn after `messages` starts with (two different user
        messages' prompts agree up to the first token of their text), and how much of them
        a slot must share to hold this conversation (into its first question)."""
        a, b = (self.tokenize_chat([*messages, ChatMessage(role="user", content=text)],
                                   keep=False)[0] for text in "ab")
        head = a[:common_prefix(a, b)]
        # Its own slot shares the first question with it: the first turn's prompt had the
        # question's per-turn block after it, so the prefix may end right after it.
        span = self._first_question(messages, head)
        return head, None if span is None else span[0] + 1

    def _cancel_prefills_of(self, request: _Request) -> None:
        """Cancels the prefills of `request`'s conversation: those with its affinity key
        (under `_cond`)."""
        for prefill in self._prefills_live:
            if prefill is not request and prefill.key == request.key:
                prefill.cancelled = True

    # -- handing KV cells to another replica ----------------------------------------------

    async def kv_fingerprint(self) -> str:
        """What must be equal for two replicas' KV bytes to mean the same: the model file's
        sha256, llama.cpp's build, and the settings that change the cells (context per
        sequence, cache type, flash attention's V layout, RoPE scaling)."""
        self._require()
        if self._fingerprint is None:
            digest = await asyncio.to_thread(_file_sha256, self.path)
            s = self._settings_for_kv()
            self._fingerprint = hashlib.sha256(json.dumps(
                {"model_sha256": digest, **s}, sort_keys=True).encode()).hexdigest()
        return self._fingerprint

    def _settings_for_kv(self) -> dict:
        s = self.settings
        return {"llama_cpp": str(self._facts.get("llama_cpp")), "n_ctx_seq": self._n_ctx_seq,
                "kv_cache_type": s.kv_cache_type, "flash_attn": s.flash_attn,
                "rope_scaling_type": s.rope_scaling_type, "rope_freq_scale": s.rope_freq_scale}

    def state_size(self, n_tokens: int) -> int:
        """The bytes of a sequence state holding `n_tokens` cells here (0: not measured)."""
        if not self.state_per_cell:
            return 0
        return self.state_base + n_tokens * self.state_per_cell

    def max_state_bytes(self) -> int:
        """The largest state this engine takes: a full sequence, within the host budget."""
        return min(self.state_size(self._n_ctx_seq), self._host.budget_bytes)

    async def export_kv(self, wanted: Callable[[str], bool] = lambda key: True
                        ) -> list[SavedKv]:
        """Every conversation's cells this engine holds, in idle slots and in host RAM, that
        a placed request produced and whose key is `wanted` (the longest of each
        conversation's)."""
        return await self._on_loop(lambda lc: self._export(lc, wanted))

    async def import_kv(self, saved: SavedKv) -> bool:
        """Keeps cells a peer handed over in host RAM for their conversation's next turn;
        False (nothing kept) when they are not a state of their tokens' size here, their
        tokens are not this model's, or they do not fit the host budget."""
        self._require()
        n = len(saved.tokens)
        if not (0 < n < self._n_ctx_seq and len(saved.state) == self.state_size(n)
                and self._host.fits(len(saved.state))
                and all(isinstance(t, int) and 0 <= t < self._n_vocab for t in saved.tokens)):
            return False
        return await self._on_loop(lambda lc: self._import(saved))

    def _on_loop(self, call: Callable[[object], object]) -> asyncio.Future:
        self._require()
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise EngineUnavailableError("The model engine is shutting down.")
            self._calls.append((call, future))
            self._cond.notify()
        return asyncio.wrap_future(future)

    def _export(self, lc, wanted: Callable[[str], bool]) -> list[SavedKv]:
        self._stop_prefills(lc)  # a prefill's slot is busy: stop it, its cells go too
        found: list[SavedKv] = []
        for slot in self._slots.slots:
            if (slot.busy or slot.key is None or slot.seq_id in self._unsettled
                    or len(slot.tokens) < SAVE_MIN_TOKENS or not wanted(slot.key)):
                continue
            state = self._read_state(lc, slot.seq_id,
                                     lc.llama_state_seq_get_size(self._ctx, slot.seq_id))
            if state is not None:
                found.append(SavedKv(slot.key, list(slot.tokens), bytes(state)))
        for entry in self._host.entries():
            if entry.key is not None and wanted(entry.key):
                found.append(SavedKv(entry.key, list(entry.tokens), bytes(entry.state)))
        # One per conversation: the one holding the most of it.
        longest: dict[str, SavedKv] = {}
        for saved in found:
            if saved.key not in longest or len(saved.tokens) > len(longest[saved.key].tokens):
                longest[saved.key] = saved
        return list(longest.values())

    def _import(self, saved: SavedKv) -> bool:
        if self._host.covers(saved.tokens):
            return True
        size = len(saved.state)
        state = (ctypes.c_uint8 * size).from_buffer_copy(saved.state)
        self._host.put(saved.tokens, state, size, saved.key, received=True)
        return True

    def _measure_state_size(self, lc) -> None:
        """A sequence's state size is linear in its cells: measured with 2 cells and 1 (a
        token decoded into sequence 0 before anything else runs, then dropped)."""
        batch = self._batch.batch
        token = lc.llama_vocab_bos(self._vocab)
        if token < 0:
            token = 0
        for i in range(2):
            batch.token[i], batch.pos[i], batch.seq_id[i][0], batch.n_seq_id[i], \
                batch.logits[i] = token, i, 0, 1, 0
        batch.n_tokens = 2
        try:
            if lc.llama_decode(self._ctx, batch) != 0:
                return
            two = lc.llama_state_seq_get_size(self._ctx, 0)
            lc.llama_memory_seq_rm(self._memory, 0, 1, -1)
            one = lc.llama_state_seq_get_size(self._ctx, 0)
        finally:
            lc.llama_memory_seq_rm(self._memory, 0, -1, -1)
        if two > one > 0:
            self.state_per_cell, self.state_base = two - one, 2 * one - two

    # -- the step loop (decode thread) -----------------------------------------------------

    def _serve(self) -> None:
        import llama_cpp as lc

        slots = SlotTable(self.n_seq)
        self._slots = slots
        try:
            self._measure_state_size(lc)
        except Exception:
            log.exception("could not measure the KV state size: no KV handed over is taken")
        while True:
            with self._cond:
                while not (self._stopping or self._pending or self._running or self._calls
                           or self._prefills):
                    self._cond.wait()
                if self._stopping:
                    break
                calls = list(self._calls)
                self._calls.clear()
            for call, future in calls:  # between steps: no cell is being written
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(call(lc))
                    except Exception as exc:
                        future.set_exception(exc)
            self._leave_cancelled(lc)
            with self._cond:
                slot_wanted = bool(self._pending) and not slots.has_free()
            if slot_wanted:  # a generation waits for a slot: prefills (idle work) give theirs up
                self._stop_prefills(lc)
            with self._cond:
                starting = []
                claimed: dict[int, list[int]] = {}
                while self._pending and slots.has_free():
                    request = self._pending.popleft()
                    if not request.cancelled:  # a request cancelled while waiting never runs
                        slot, reused, donor = slots.claim(request.prompt, request.own_from,
                                                          claimed, request.key)
                        claimed[slot.seq_id] = request.prompt[:reused]
                        starting.append((request, slot, reused, donor))
                prefilling = [] if self._pending else self._claim_prefills(slots)
            # Host RAM first (saving a slot's leaving conversation, restoring a returning
            # one), then the copies between slots: llama.cpp copies a stream at the next
            # decode, so a copy must see the restored cells, never the other way round.
            for i, (request, slot, reused, donor) in enumerate(starting):
                try:
                    starting[i] = (request, slot, *self._swap(lc, request, slot, reused,
                                                              donor))
                except Exception:  # the cache is an optimization: evaluate instead
                    log.exception("could not save or restore KV cells in host RAM")
                    self._forget_cells(lc, slot)
                    starting[i] = (request, slot, 0, None)
            for request, slot, reused, donor in starting:
                try:
                    self._start(lc, request, slot, reused, donor)
                except Exception as exc:  # e.g. a sampler llama.cpp refused: this request only
                    log.exception("could not start a sequence")
                    self._forget_cells(lc, slot)
                    slots.release(slot)
                    request.relay.put(exc, flush=True)
            for request, slot, reused in prefilling:  # after the copies those started
                self._start_prefill(lc, request, slot, reused)
            if self._running:
                try:
                    self._step(lc)
                except Exception as exc:  # a failed step fails its sequences, not the engine
                    log.exception("decode step failed")
                    for seq in list(self._running):
                        self._forget_cells(lc, seq.slot)
                        self._finish(lc, seq, exc)
        for seq in list(self._running):
            self._finish(lc, seq, EngineUnavailableError("The model engine is shutting down."))
        with self._cond:
            self._prefills.clear()
            self._prefills_live.clear()
            while self._calls:
                self._calls.popleft()[1].cancel()
            while self._pending:
                self._pending.popleft().relay.put(
                    EngineUnavailableError("The model engine is shutting down."), flush=True)

    def _leave_cancelled(self, lc) -> None:
        """Cancelled sequences leave their slots (their cells stay, for their next turn)."""
        for seq in [s for s in self._running if s.request.cancelled]:
            self._finish(lc, seq, None)

    def _stop_prefills(self, lc) -> None:
        """Running prefills stop and leave their slots (what they evaluated stays)."""
        for seq in self._running:
            if seq.request.prefill:
                seq.request.cancelled = True
        self._leave_cancelled(lc)

    def _claim_prefills(self, slots: SlotTable) -> list[tuple[_Request, Slot, int]]:
        """Waiting prefills that find their conversation in a free slot claim it (under
        `_cond`, with no generation waiting); the others are dropped: their cells went to
        another conversation, or to the host RAM the next turn restores them from."""
        claims = []
        while self._prefills and slots.has_free():
            request = self._prefills.popleft()
            own = None if request.cancelled else slots.claim_own(
                request.prompt, request.own_from, request.key, self._unsettled)
            if own is None:
                self._prefills_live.remove(request)
                self.prefills_cancelled += request.cancelled
            else:
                claims.append((request, *own))
        return claims

    def _start_prefill(self, lc, request: _Request, slot: Slot, reused: int) -> None:
        """Starts a prefill in its conversation's slot: the cells past the prefix it shares
        (this turn's reference block and answer, which the next prompt does not hold) go."""
        if reused < len(slot.tokens) and not lc.llama_memory_seq_rm(self._memory, slot.seq_id,
                                                                     reused, -1):
            reused = len(request.prompt)  # a model that cannot drop a partial range: no prefill
        del slot.tokens[reused:]
        seq = _Sequence(request, slot, reused, None)
        self._running.append(seq)
        if reused >= len(request.prompt):
            self._finish(lc, seq, None)

    def _swap(self, lc, request: _Request, slot: Slot, reused: int,
              donor: Slot | None) -> tuple[int, Slot | None]:
        """Saves the cells `slot` is about to lose to host RAM and restores a saved
        conversation that holds more of the prompt than the slot or its donor would; returns
        the new (reused, donor)."""
        prompt = request.prompt
        host = self._host
        if not host.budget_bytes or slot.seq_id in self._unsettled:
            return reused, donor
        key, n = host.best(prompt)
        n = min(n, len(prompt) - 1)  # the last prompt token is evaluated for its logits
        # Worth it for the tokens it saves, or when it holds this conversation's own turns
        # that the slot lacks (a short first question and an answer that retokenizes
        # differently can leave less than COPY_MIN_GAIN past the shared system prompt).
        own = request.own_from
        restore = key is not None and (n - reused >= COPY_MIN_GAIN
                                       or (own is not None and reused < own <= n))
        keeps = 0 if restore or donor is not None else reused
        if len(slot.tokens) - keeps >= SAVE_MIN_TOKENS and not host.covers(slot.tokens):
            self._save(lc, slot)
        if not restore:
            return reused, donor
        entry = host.take(key)
        read = lc.llama_state_seq_set_data(self._ctx, entry.state, entry.size, slot.seq_id)
        # llama.cpp checks the layers, types and row sizes; the positions are checked here
        # (cells handed over by a peer must be this conversation's 0..n-1, nothing else).
        if read != entry.size or not self._holds_positions(lc, slot.seq_id, len(entry.tokens)):
            log.warning("could not restore %d saved KV cells into sequence %d",
                        len(entry.tokens), slot.seq_id)
            lc.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.tokens.clear()
            if donor is not None:
                return min(reused, common_prefix(donor.tokens, prompt)), donor
            return 0, None
        slot.tokens[:] = entry.tokens
        slot.key = entry.key
        request.restored, request.handed_over = True, entry.received
        self.kv_host_restores += 1
        self.prompt_tokens_restored += n
        return n, None

    def _save(self, lc, slot: Slot) -> None:
        size = lc.llama_state_seq_get_size(self._ctx, slot.seq_id)
        if not self._host.fits(size):
            return
        state = self._read_state(lc, slot.seq_id, size)
        if state is not None:
            self._host.put(slot.tokens, state, size, slot.key)

    def _read_state(self, lc, seq_id: int, size: int):
        """`llama_state_seq_get_data` of a sequence into a buffer of `size` bytes; None when
        llama.cpp wrote another size."""
        state = (ctypes.c_uint8 * size)()
        return state if lc.llama_state_seq_get_data(self._ctx, state, size, seq_id) == size \
            else None

    def _holds_positions(self, lc, seq_id: int, n: int) -> bool:
        return (lc.llama_memory_seq_pos_min(self._memory, seq_id) == 0
                and lc.llama_memory_seq_pos_max(self._memory, seq_id) == n - 1)

    def _start(self, lc, request: _Request, slot: Slot, reused: int,
               donor: Slot | None) -> None:
        if donor is not None:
            # The donor may have been cut back by a request started just before this one.
            reused = min(reused, common_prefix(donor.tokens, request.prompt))
        if donor is not None and reused > 0:
            # Non-unified cache: a copy between sequences copies the donor's whole stream
            # (at the next decode, before anything new is written); then keep the prefix.
            lc.llama_memory_seq_cp(self._memory, donor.seq_id, slot.seq_id, -1, -1)
            self._unsettled.update((donor.seq_id, slot.seq_id))
            slot.tokens[:] = donor.tokens[:reused]
            self.prompt_tokens_copied += reused
            lc.llama_memory_seq_rm(self._memory, slot.seq_id, reused, -1)
        elif donor is not None:  # nothing left to copy: start this slot from scratch
            reused = 0
            lc.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.tokens.clear()
        elif len(slot.tokens) > reused:
            if not lc.llama_memory_seq_rm(self._memory, slot.seq_id, reused, -1):
                reused = 0  # a model that cannot drop a partial range starts over
                lc.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            del slot.tokens[reused:]
        slot.key = request.key
        self.prompt_tokens_reused += reused
        self.kv_turns[_kv_turn(request, reused)] += 1
        sampler = sampler_chain(request.params, self._n_vocab, request.seed)
        self._running.append(_Sequence(request, slot, reused, sampler))
        self.peak_sequences = max(self.peak_sequences, len(self._running))

    def _step(self, lc) -> None:
        running = self._running
        batch = self._batch.batch
        token, pos, seq_ids, n_seq_id, logits = (
            batch.token, batch.pos, batch.seq_id, batch.n_seq_id, batch.logits)
        n = 0
        # Every generating sequence decodes its last sampled token, in sequence-id order ...
        for seq in decode_order(running):
            if seq.last >= 0:
                slot = seq.slot
                token[n], pos[n], seq_ids[n][0], n_seq_id[n], logits[n] = (
                    seq.last, len(slot.tokens), slot.seq_id, 1, 1)
                slot.tokens.append(seq.last)
                seq.logits_at = n
                n += 1
            else:
                seq.logits_at = -1
        # ... and prompts fill the rest of the batch, oldest first, within the step's budget
        # (prefills last).
        limit = n if prompts_wait(running) else min(self._n_batch, n + self._prompt_step)
        capped = False
        for seq in prompt_order(running):
            if seq.request.prefill and not capped:  # the first prefill: the rest are prefills
                capped, limit = True, min(limit, n + self._prefill_step)
            if n >= limit:
                break
            prompt, slot = seq.request.prompt, seq.slot
            chunk = prompt[seq.fed:seq.fed + limit - n]
            at, sid = len(slot.tokens), slot.seq_id
            for t in chunk:
                token[n], pos[n], seq_ids[n][0], n_seq_id[n], logits[n] = t, at, sid, 1, 0
                at += 1
                n += 1
            slot.tokens.extend(chunk)
            seq.fed += len(chunk)
            self.prompt_tokens_evaluated += len(chunk)
            if seq.request.prefill:
                self.prompt_tokens_prefilled += len(chunk)
            elif seq.fed == len(prompt):
                logits[n - 1] = 1
                seq.logits_at = n - 1
        batch.n_tokens = n
        n_prompt = n - sum(1 for seq in running if seq.last >= 0)
        threads = step_threads(n, self._n_params, self._threads)
        if threads != self._step_threads:
            lc.llama_set_n_threads(self._ctx, threads, threads)
            self._step_threads = threads
        if threads < self._threads:
            self.decode_steps_one_thread += 1
        started = time.perf_counter()
        rc = lc.llama_decode(self._ctx, batch)
        now = time.perf_counter()
        if n_prompt:
            self.prompt_seconds += now - started
        self.decode_steps += 1
        self.busy_sequence_steps += sum(1 for seq in running if not seq.request.prefill)
        self.peak_batch_tokens = max(self.peak_batch_tokens, n)
        if rc == 0:
            self._unsettled.clear()  # llama.cpp copied the streams before decoding
        else:
            raise RuntimeError(f"llama_decode failed with {rc} ({n} tokens, "
                               f"{len(running)} sequences)")
        ctx, vocab, sample, is_eog = self._ctx, self._vocab, lc.llama_sampler_sample, \
            lc.llama_vocab_is_eog
        pieces = self._pieces
        n_ctx_seq = self._n_ctx_seq
        for seq in list(running):
            if seq.logits_at < 0:
                if seq.request.prefill and seq.fed == len(seq.request.prompt):
                    self._finish(lc, seq, None)  # done: its cells wait for the next turn
                continue
            tok = sample(seq.sampler, ctx, seq.logits_at)
            if not seq.generated:
                seq.first_token_at = now
            seq.generated += 1
            self.generated_tokens += 1
            if is_eog(vocab, tok):
                self._finish(lc, seq, None)
                continue
            piece = pieces.get(tok)
            if piece is None:
                piece = pieces[tok] = self._token_piece(lc, tok)
            text, stopped = seq.text.feed(piece)
            if text:
                seq.request.relay.put(text)
                seq.shown = True
            if (stopped or seq.generated >= seq.max_tokens
                    or len(seq.slot.tokens) + 1 >= n_ctx_seq):
                self._finish(lc, seq, None, flush_text=not stopped)
            else:
                seq.last = tok

    def _finish(self, lc, seq: _Sequence, error: BaseException | None,
                flush_text: bool = True) -> None:
        self._running.remove(seq)
        if seq.generated:
            self.predict_seconds += time.perf_counter() - seq.first_token_at
        self.peak_sequence_tokens = max(self.peak_sequence_tokens, len(seq.slot.tokens))
        self._slots.release(seq.slot)
        if seq.request.prefill:
            with self._cond:
                self._prefills_live.remove(seq.request)
            self.prefills_cancelled += seq.request.cancelled
            return
        lc.llama_sampler_free(seq.sampler)
        seq.sampler = None
        relay = seq.request.relay
        if error is not None:
            relay.put(error, flush=True)
            return
        if flush_text and (rest := seq.text.flush()):
            relay.put(rest)
        relay.put(END, flush=True)

    def _forget_cells(self, lc, slot: Slot) -> None:
        lc.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        slot.tokens.clear()

    def _token_piece(self, lc, tok: int) -> bytes:
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = lc.llama_token_to_piece(self._vocab, tok, buf, size, 0, False)
            if n >= 0:
                return buf.raw[:n]
            size = -n


def decode_order(running: list[_Sequence]) -> list[_Sequence]:
    """The running sequences by sequence id: the order their sampled tokens go into a step's
    batch. With a cache of one stream per sequence, llama.cpp splits a batch into
    micro-batches of sequences whose ids follow each other in batch order (`split_equal`),
    and each micro-batch is one pass over the model's weights: in start order, 8
    conversations' tokens took up to 8 passes instead of one (SmolLM2 on 2 threads: a step of
    61-73 ms instead of 43)."""
    return sorted(running, key=lambda seq: seq.slot.seq_id)


def prompt_order(running: list[_Sequence]) -> list[_Sequence]:
    """The sequences still evaluating their prompt, in the order they get the step's prompt
    budget: generations oldest first, then prefills (idle work) oldest first."""
    waiting = [seq for seq in running if seq.last < 0]
    return ([seq for seq in waiting if not seq.request.prefill]
            + [seq for seq in waiting if seq.request.prefill])


def prompts_wait(running: list[_Sequence]) -> bool:
    """Whether this step leaves the prompts out: a sequence has sampled its first tokens
    but shown no text yet (a character split over byte tokens, text that may begin a stop
    string). Its next tokens then come in steps of one token per sequence, milliseconds,
    instead of behind other conversations' prompt chunks, each hundreds of milliseconds on
    a CPU: the user sees the answer start without waiting for others' prompts (SmolLM2's
    Korean answers start with a 3-token syllable, and at 4 users their first text came up
    to 1.5 s after their first token). The prompts wait at most FIRST_TEXT_TOKENS - 1 short
    steps per starting sequence."""
    return any(0 < seq.generated < FIRST_TEXT_TOKENS and not seq.shown for seq in running)


def _kv_turn(request: _Request, reused: int) -> str:
    """KV_TURNS: where a starting turn's cells came from."""
    if request.own_from is None:
        return "new"
    if request.restored:
        return "handed_over" if request.handed_over else "restored"
    return "local" if reused >= request.own_from else "evaluated"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
