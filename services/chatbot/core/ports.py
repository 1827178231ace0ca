"""Ports the use cases depend on; adapters in `chatbot.llm` and `chatbot.stores` implement them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from chatbot.domain.conversation import ChatMessage, SearchResult, Turn
from chatbot.domain.personas import SamplingParams


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    prompt_tokens: int | None = None  # when the engine knows it


@dataclass(frozen=True)
class EngineStatus:
    """What /readyz reports about an engine."""

    ready: bool
    model: str
    detail: str = ""
    facts: dict = field(default_factory=dict)


class ChatEngine(Protocol):
    """Generates assistant replies for chat messages.

    `stream` yields text pieces (one per generated token). Cancelling the consumer, or
    closing the iterator, stops the generation at the next token.
    """

    @property
    def model_name(self) -> str: ...

    def status(self) -> EngineStatus: ...

    def stream(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[str]: ...

    async def complete(self, messages: list[ChatMessage], params: SamplingParams) -> Completion: ...

    def context_tokens(self) -> int | None:
        """Tokens one conversation may hold, prompt and answer together; None when the
        engine cannot count them (a remote API: its own limit applies)."""

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        """The prompt's length in the model's own tokens: its chat template rendered as
        for generation, then tokenized. Only called when `context_tokens()` is not None."""

    async def prefill_next_turn(self, messages: list[ChatMessage]) -> None:
        """`messages` (a system prompt, turns, the answer just given) start the
        conversation's next prompt; an engine that keeps a conversation's KV cells may
        evaluate them now, at idle priority, or do nothing. Only called when
        `context_tokens()` is not None; a refusal is not an error."""


def collection_name(persona: str, user_id: str) -> str:
    """Where a user's conversations with a persona live: one document (or rows) per db_id."""
    return f"{persona}_log_{user_id}"


class HistoryStore(Protocol):
    """Conversation memory: collection `collection_name(persona, user_id)`, one document
    per db_id."""

    async def recent_turns(
        self, persona: str, user_id: str, db_id: str, limit: int
    ) -> list[Turn]: ...

    async def append_turn(
        self, persona: str, user_id: str, db_id: str, input_data: str, output_data: str,
        timestamp: str | None = None, if_absent: bool = False,
    ) -> int:
        """Append a turn; returns its index. `timestamp` (ISO 8601, UTC): when it was
        answered (default: now). `if_absent`: the conversation may already hold this turn
        (a write that failed after the server applied it); a turn with the same timestamp
        and input is then not written again, and its index is returned."""

    def status(self) -> dict: ...

    async def start(self) -> None:
        """Begin connecting in the background; never raises (an absent server is fine)."""

    async def close(self) -> None: ...


class WebSearch(Protocol):
    """Finds web results for a query; failure means no results, never an exception."""

    async def search(self, query: str) -> list[SearchResult]: ...


class NoWebSearch:
    """The search adapter used when none is configured."""

    async def search(self, query: str) -> list[SearchResult]:
        return []
