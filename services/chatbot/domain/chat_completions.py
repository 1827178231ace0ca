"""The request body of the OpenAI-compatible `POST /v1/chat/completions`.

It declares exactly the fields this server honours, with their types checked strictly (a
`seed` of "5" or 1.5 is a 422 naming it, not a silent coercion). Any other field of
OpenAI's API (`tools`, `stop`, `logprobs`, `response_format`, ...) is refused with a 422
that names it as not supported: answering as if it had been honoured would be a wrong
answer in a 200. The schema says the same (`additionalProperties: false`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)

from chatbot.domain.personas import SamplingParams

MAX_COMPLETION_TOKENS = 4096

_STRICT = ConfigDict(extra="forbid", strict=True)


class TextPart(BaseModel):
    model_config = _STRICT

    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = _STRICT

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
    model_config = _STRICT

    include_usage: bool = False


def _json_number(value):
    """JSON Schema's integer: 5 and 5.0, never "5" or true (pydantic's lax int takes both)."""
    if isinstance(value, str | bool):
        raise ValueError("input should be a valid integer")
    return value


def _json_int(**bounds):
    return Annotated[int, Field(strict=False, **bounds), BeforeValidator(_json_number)]


SEED_MAX = 2**32 - 1  # llama.cpp's seed is an unsigned 32-bit number
TokenCount = _json_int(gt=0, le=MAX_COMPLETION_TOKENS)
Seed = _json_int(ge=0, le=SEED_MAX)

Messages = Annotated[
    list[Message],
    Field(min_length=1, json_schema_extra={
        "contains": {"type": "object", "properties": {"role": {"const": "user"}},
                     "required": ["role"]},
        "description": "at least one message with role 'user'"}),
]
OneChoice = Annotated[_json_int(), WithJsonSchema({"type": "integer", "enum": [1], "default": 1,
                                           "description": "only n=1 is supported"})]


class ChatCompletionRequest(BaseModel):
    model_config = _STRICT

    model: str | None = Field(None, description="accepted and ignored: the persona's model "
                                                "answers (its name is in the response)")
    messages: Messages
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: Seed | None = None
    n: OneChoice = 1

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

    def sampling(self, base: SamplingParams) -> SamplingParams:
        """The persona's sampling parameters with the caller's overrides."""
        update = {
            "max_tokens": self.max_completion_tokens or self.max_tokens,
            "temperature": self.temperature, "top_p": self.top_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty, "seed": self.seed,
        }
        return base.model_copy(update={k: v for k, v in update.items() if v is not None})
