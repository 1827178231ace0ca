"""Request bodies of the chat routes (the seed's contract), validated strictly."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

INPUT_MAX_CHARS = 500


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _user_id_chars(value: str) -> str:
    if "$" in value or any(ord(c) < 0x20 for c in value):
        raise ValueError("must not contain '$' or control characters")
    return _not_blank(value)


def _text(max_chars: int):
    return Annotated[
        str,
        StringConstraints(strict=True, min_length=1, max_length=max_chars),
        AfterValidator(_not_blank),
    ]


InputText = _text(INPUT_MAX_CHARS)
CharacterName = _text(100)
Greeting = _text(2000)
CharacterContext = _text(4000)
UserId = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=50),
    AfterValidator(_user_id_chars),
]


class ConversationRef(BaseModel):
    """`db_id` names a conversation of `user_id`; both come together or not at all."""

    model_config = ConfigDict(extra="forbid", strict=True)

    db_id: Annotated[UUID | None, Field(strict=False)] = None
    user_id: UserId | None = None

    @model_validator(mode="after")
    def _both_or_neither(self):
        if (self.db_id is None) != (self.user_id is None):
            missing = "user_id" if self.user_id is None else "db_id"
            raise ValueError(f"db_id and user_id must be given together ({missing} is missing)")
        return self

    @property
    def conversation(self) -> tuple[str, str] | None:
        if self.db_id is None or self.user_id is None:
            return None
        return self.user_id, str(self.db_id)


class OfficeRequest(ConversationRef):
    input_data: InputText
    google_access: bool = False

    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"examples": [{
            "input_data": "회의록 요약하는 방법을 알려주세요.",
            "google_access": False,
            "db_id": "b440780c-cbaa-454f-a8d2-cf884786d89f",
            "user_id": "user_test_001",
        }]},
    )


class CharacterRequest(ConversationRef):
    input_data: InputText
    character_name: CharacterName
    greeting: Greeting
    context: CharacterContext

    model_config = ConfigDict(
        extra="forbid", strict=True,
        json_schema_extra={"examples": [{
            "input_data": "*I wave at Rachel with a smile.*",
            "character_name": "Rachel",
            "greeting": "*Rachel stands nervously at the lectern, adjusting her notes...*",
            "context": "Rachel is a devout Catholic girl of about 19 years old...",
            "db_id": "b440780c-cbaa-454f-a8d2-cf884786d89f",
            "user_id": "user_test_001",
        }]},
    )
