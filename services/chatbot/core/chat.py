"""The chat use case: admit, search, replay history, prompt, generate (stream, then
fallback), remember; then let the engine prepare the conversation's next turn.

The persona's prompt is built once per turn (`Prompt`: the system prompt, and the new
input with this turn's time and search results); fitting then only chooses how many of the
replayed turns go between the two (`core/context_fit.py`), counting each candidate with the
engine's tokenizer.

Once the turn is remembered, the engine is told how the conversation's next prompt will
start (`ChatEngine.prefill_next_turn`: the system prompt, the turns the next turn will
replay, fitted as this one was, and this answer; the engine evaluates it in the
background): the answer's cells in the engine follow a user message that carried this
turn's time and search results, which the next prompt replays without, so the engine
evaluates that start again while the user reads instead of when the next question
arrives."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from chatbot.core.admission_queue import AdmissionQueue
from chatbot.core.affinity import CONVERSATION, db_conversation_key
from chatbot.core.context_fit import Fit, aligned, fit_history, replay_block
from chatbot.core.ports import ChatEngine, HistoryStore, NoWebSearch, WebSearch
from chatbot.core.prompts import OfficeAssistant, Prompt, persona_prompt
from chatbot.core.request_gate import RequestGate
from chatbot.core.shutdown import Shutdown
from chatbot.core.stats import PerformanceStats
from chatbot.domain.conversation import (
    ChatMessage,
    OfficeTurn,
    PersonaTurn,
    Turn,
)
from chatbot.domain.errors import (
    ContextLengthExceededError,
    EngineUnavailableError,
    GenerationFailedError,
    UpstreamError,
    UpstreamTimeoutError,
)
from chatbot.domain.personas import MIN_ANSWER_CHARS, PersonaProfile, SamplingParams

log = logging.getLogger(__name__)

OnPiece = Callable[[str], None]  # told each streamed piece as it is generated


@dataclass(frozen=True)
class ChatResult:
    text: str
    tokens: int
    queue_s: float
    ttft_s: float | None
    generation_s: float
    total_s: float
    fallback_used: bool
    history_turns: int  # turns replayed
    history_dropped: int = 0  # of the stored recent turns, those left out (to fit the
    # context, or a block of the oldest at the replay limit; all still stored)
    prompt_tokens: int | None = None  # when the engine counts them
    history_kept: bool = True  # False: a conversation's turn that could not be remembered


@dataclass(frozen=True)
class _Generated:
    text: str
    tokens: int
    ttft_s: float | None
    seconds: float  # time spent in the engine, streamed and fallback together
    fallback_used: bool


# Failures the non-streaming fallback would only repeat (or must not mask).
_NOT_RETRIED = (EngineUnavailableError, UpstreamError, UpstreamTimeoutError,
                ContextLengthExceededError, asyncio.CancelledError)


def _next_turn(recent: list[Turn], user_input: str, answer: str) -> Turn:
    """The turn just answered, as the conversation's next turn will read it back."""
    index = max(len(recent), recent[-1].index) + 1 if recent else 1
    return Turn(index, user_input, answer, "")


def _usable(text: str) -> bool:
    return sum(1 for c in text if not c.isspace()) >= MIN_ANSWER_CHARS


def _budget(params: SamplingParams, room: int) -> SamplingParams:
    if params.max_tokens <= room:
        return params
    return params.model_copy(update={"max_tokens": room})


class ChatService:
    """One persona's chat use case over a shared engine, store and admission queue."""

    def __init__(
        self,
        profile: PersonaProfile,
        engine: ChatEngine,
        store: HistoryStore,
        admission: AdmissionQueue,
        stats: PerformanceStats,
        deadline_s: float,
        search: WebSearch | None = None,
        assistant: OfficeAssistant | None = None,
        shutdown: Shutdown | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.profile = profile
        self.engine = engine
        self.store = store
        self.gate = RequestGate(profile.persona, engine, admission, stats, deadline_s,
                                shutdown)
        self.search = search or NoWebSearch()
        self.assistant = assistant or OfficeAssistant()
        self.clock = clock  # the office prompt's current time (None: the wall clock)
        self.fallbacks = 0
        # History reads/writes that failed (store down or slow); the answer went on without.
        self.history_failures = {"read": 0, "write": 0}

    @property
    def admission(self) -> AdmissionQueue:
        return self.gate.admission

    @property
    def stats(self) -> PerformanceStats:
        return self.gate.stats

    @property
    def deadline_s(self) -> float:
        return self.gate.deadline_s

    async def chat(self, turn: PersonaTurn, on_piece: OnPiece | None = None) -> ChatResult:
        """Answer one persona turn: the persona's prompt, and for an office turn that asks
        for it the web search, are made inside the admitted slot, under the deadline.
        `on_piece` sees the streamed pieces as they come (the answer is still the result's
        text: a fallback replaces what was streamed)."""
        if turn.conversation is None or CONVERSATION.get() is not None:
            return await self._chat(turn, on_piece)
        # Not placed by the peers' middleware: the engine still tags the conversation's cells.
        token = CONVERSATION.set(db_conversation_key(turn.conversation[1]))
        try:
            return await self._chat(turn, on_piece)
        finally:
            CONVERSATION.reset(token)

    async def _chat(self, turn: PersonaTurn, on_piece: OnPiece | None) -> ChatResult:
        async with self.gate.admitted() as ticket:
            search = isinstance(turn, OfficeTurn) and turn.search
            results = await self.search.search(turn.question) if search else []
            recent = await self._history(turn.conversation)
            prompt = persona_prompt(turn, results, self.assistant,
                                    self.clock() if self.clock else None)
            # Rendering and tokenizing run beside the event loop, not on it.
            fit, kept, messages = await asyncio.to_thread(self._fit, prompt, recent)
            dropped, history = len(recent) - kept, recent[len(recent) - kept:]
            generated = await self._generate(messages, fit, on_piece)
        remembered = await self._remember(turn.conversation, turn.user_input, generated.text)
        total = ticket.succeeded(generated.seconds, generated.tokens)
        if remembered and turn.conversation is not None and fit is not None:
            await self._prefill_next_turn(
                prompt, [*recent, _next_turn(recent, turn.user_input, generated.text)])
        return ChatResult(
            text=generated.text,
            tokens=generated.tokens,
            queue_s=ticket.queue_s,
            ttft_s=generated.ttft_s,
            generation_s=generated.seconds,
            total_s=total,
            fallback_used=generated.fallback_used,
            history_turns=len(history),
            history_dropped=dropped,
            prompt_tokens=fit.prompt_tokens if fit is not None else None,
            history_kept=remembered,
        )

    def _fit(self, prompt: Prompt, history: list[Turn],
             ) -> tuple[Fit | None, int, list[ChatMessage]]:
        """The recent turns to replay (they fit the context with the answer's budget, and
        start on a block boundary: `context_fit`), how many, and the messages that replay
        them, exactly those counted. No fit when the engine cannot count (a remote API:
        its own limit applies; the window still keeps to block boundaries, which keeps its
        prompt cache valid too)."""
        n = len(history)
        # Turns before this one: the store's indices count from 1.
        position = max(n, history[-1].index) if history else 0
        block = replay_block(self.profile.history_turns)
        context = self.engine.context_tokens()
        if context is None:
            kept = aligned(n, position, block)
            return None, kept, prompt.messages(history[n - kept:])
        fit = fit_history(
            n, lambda k: self.engine.count_prompt_tokens(prompt.messages(history[n - k:])),
            context, self.profile.generation.max_tokens, position=position, block=block)
        return fit, fit.turns, prompt.messages(history[n - fit.turns:])

    async def _prefill_next_turn(self, prompt: Prompt, recent: list[Turn]) -> None:
        """Tells the engine the start of the conversation's next prompt: the turns it will
        replay, fitted as this turn was (this turn's new message stands in for the next
        one's), without that new message. It queues the work (rendering and tokenizing,
        milliseconds, beside the event loop), so the turn's answer is complete only with
        its prefill queued."""
        try:
            _, _, messages = await asyncio.to_thread(
                self._fit, prompt, recent[-self.profile.history_turns:])
            await self.engine.prefill_next_turn(messages[:-1])
        except Exception as exc:  # an optimization: the next turn evaluates it instead
            log.debug("no prefill of the next turn: %s", exc)

    async def _history(self, conversation: tuple[str, str] | None) -> list[Turn]:
        if conversation is None:
            return []
        user_id, db_id = conversation
        try:
            return await self.store.recent_turns(
                self.profile.persona, user_id, db_id, self.profile.history_turns
            )
        except Exception as exc:  # an unavailable store must not fail the answer
            self.history_failures["read"] += 1
            log.warning("history read failed, answering without history: %s", exc)
            return []

    async def _remember(
        self, conversation: tuple[str, str] | None, user_input: str, answer: str
    ) -> bool:
        """Whether the turn is kept (the store, or its journal, took it)."""
        if conversation is None:
            return True
        user_id, db_id = conversation
        try:
            await self.store.append_turn(self.profile.persona, user_id, db_id, user_input, answer)
        except Exception as exc:
            self.history_failures["write"] += 1
            log.warning("history write failed for %s/%s: %s", user_id, db_id, exc)
            return False
        return True

    async def _generate(self, messages: list[ChatMessage], fit: Fit | None,
                        on_piece: OnPiece | None = None) -> _Generated:
        generation, fallback = self.profile.generation, self.profile.fallback
        if fit is not None:  # the answer budget: never past the context
            generation = _budget(generation, fit.max_tokens)
            fallback = _budget(fallback, fit.room)
        started = time.monotonic()
        pieces: list[str] = []
        ttft: float | None = None
        try:
            async for piece in self.engine.stream(messages, generation):
                if ttft is None:
                    ttft = time.monotonic() - started
                pieces.append(piece)
                if on_piece is not None:
                    on_piece(piece)
        except _NOT_RETRIED:
            raise
        except Exception as exc:
            log.warning("streaming generation failed, falling back: %s", exc)
        text = "".join(pieces).strip()
        if _usable(text):
            return _Generated(text, len(pieces), ttft, time.monotonic() - started, False)

        self.fallbacks += 1
        log.info("streamed answer too short (%d chars); generating without streaming", len(text))
        try:
            completion = await self.engine.complete(messages, fallback)
        except _NOT_RETRIED:
            raise
        except Exception as exc:
            raise GenerationFailedError(f"The model failed to generate an answer: {exc}") from exc
        text = completion.text.strip()
        if not text:
            raise GenerationFailedError("The model produced an empty answer, twice.")
        if ttft is None:
            ttft = time.monotonic() - started
        return _Generated(text, len(pieces) + completion.tokens, ttft,
                          time.monotonic() - started, True)
