"""Request bodies of the chat routes (the seed's contract), validated strictly.

Every rule the server enforces is also in the JSON Schema the OpenAPI document serves, in
the same terms (a generated client or a gateway validating against the document agrees with
the server on every body): "not blank" is the pattern `\\S`, the characters a `user_id`
must not hold a `not`-pattern, and the `db_id`/`user_id` pairing `dependentRequired`.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)

INPUT_MAX_CHARS = 500

# The schema's words for what the validators below check (Python's `re`, as the JSON Schema
# validators of Python tools use it: `\s` is exactly `str.isspace`).
NOT_BLANK = r"\S"
USER_ID_FORBIDDEN = "[$\u0000-\u001f]"


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
        WithJsonSchema({"type": "string", "minLength": 1, "maxLength": max_chars,
                        "pattern": NOT_BLANK}),
    ]


InputText = _text(INPUT_MAX_CHARS)
CharacterName = _text(100)
Greeting = _text(2000)
CharacterContext = _text(4000)
UserId = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=50),
    AfterValidator(_user_id_chars),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": 50, "pattern": NOT_BLANK,
                    "not": {"pattern": USER_ID_FORBIDDEN},
                    "description": "whose conversation; no '$' or control characters"}),
]
# A UUID in its 36-character hyphenated form (pydantic's UUID type also takes 32 bare hex
# digits, braces or a urn: prefix, which the schema's `format: uuid` does not).
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
DbId = Annotated[
    str,
    StringConstraints(strict=True, min_length=36, max_length=36, pattern=UUID_PATTERN),
    AfterValidator(UUID),
    WithJsonSchema({"type": "string", "format": "uuid", "minLength": 36, "maxLength": 36,
                    "pattern": UUID_PATTERN,
                    "description": "the conversation to continue and remember the turn in"}),
]

# Both or neither: JSON Schema's `dependentRequired` (OpenAPI 3.1), what
# `ConversationRef._both_or_neither` enforces.
_PAIRED = {"dependentRequired": {"db_id": ["user_id"], "user_id": ["db_id"]}}


def _absent_by_default(schema: dict) -> None:
    """No `default: null` in the schema: null is not a value these fields take."""
    schema.pop("default", None)


class ConversationRef(BaseModel):
    """`db_id` names a conversation of `user_id`; both come together or not at all.

    Absent means absent: a `null` is not a value of either (the schema has no `null`
    type), so that the pairing the schema states is the one the server checks.
    """

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_PAIRED)

    db_id: DbId = Field(None, json_schema_extra=_absent_by_default)  # type: ignore[assignment]
    user_id: UserId = Field(None, json_schema_extra=_absent_by_default)  # type: ignore[assignment]

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
        json_schema_extra={**_PAIRED, "examples": [{
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
        json_schema_extra={**_PAIRED, "examples": [{
            "input_data": "*I wave at Rachel with a smile.*",
            "character_name": "Rachel",
            "greeting": "*Rachel stands nervously at the lectern, adjusting her notes...*",
            "context": "Rachel is a devout Catholic girl of about 19 years old...",
            "db_id": "b440780c-cbaa-454f-a8d2-cf884786d89f",
            "user_id": "user_test_001",
        }]},
    )
