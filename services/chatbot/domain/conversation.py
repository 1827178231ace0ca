"""The values a conversation is made of: chat messages, remembered turns, search results,
and the inputs of one persona turn (what the chat use case is asked)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class Turn:
    """One remembered question and answer of a conversation."""

    index: int
    input_data: str
    output_data: str
    timestamp: str


@dataclass(frozen=True)
class SearchResult:
    title: str
    snippet: str
    link: str


Conversation = tuple[str, str]  # (user_id, db_id): where the turns are remembered


@dataclass(frozen=True)
class OfficeTurn:
    """A work question; `search` asks for web results in the prompt's reference block."""

    question: str
    search: bool = False
    conversation: Conversation | None = None

    @property
    def user_input(self) -> str:
        return self.question


@dataclass(frozen=True)
class CharacterTurn:
    """A line said to a character, who replies in the persona its fields describe."""

    line: str
    character_name: str
    greeting: str
    context: str
    conversation: Conversation | None = None

    @property
    def user_input(self) -> str:
        return self.line


PersonaTurn = OfficeTurn | CharacterTurn
