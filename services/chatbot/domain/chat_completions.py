"""The request body of the OpenAI-compatible `POST /v1/chat/completions`.

Unknown fields are ignored, as OpenAI-compatible servers do, so that clients of the OpenAI
ecosystem work unchanged; fields this server cannot honour are rejected by name.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from chatbot.domain.personas import SamplingParams

MAX_COMPLETION_TOKENS = 4096


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    @property
    def chat_role(self) -> str:
        return "system" if self.role == "developer" else self.role


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_COMPLETION_TOKENS)
    max_completion_tokens: int | None = Field(default=None, gt=0, le=MAX_COMPLETION_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    tools: list | None = None

    @field_validator("messages")
    @classmethod
    def _has_a_user_message(cls, messages: list[Message]) -> list[Message]:
        if not any(m.role == "user" for m in messages):
            raise ValueError("must contain at least one message with role 'user'")
        return messages

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported")
        return n

    @field_validator("stop", "tools")
    @classmethod
    def _unsupported(cls, value):
        if value:
            raise ValueError("is not supported by this server")
        return value

    def sampling(self, base: SamplingParams) -> SamplingParams:
        """The persona's sampling parameters with the caller's overrides."""
        update = {
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature, "top_p": self.top_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty, "seed": self.seed,
        }
        return base.model_copy(update={k: v for k, v in update.items() if v is not None})
