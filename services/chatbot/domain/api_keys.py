"""The API keys file: who may call the service, on which routes, within which budgets.

Pure (pydantic and the standard library). The service reads the file with it; what it
refuses, entry by entry, the pods report into their ChatbotModel's status (status_report.py)
and the operator shows as the ApiKeysValid condition, so the operator needs neither this
module nor the right to read Secrets.

The file is JSON (a Secret's `keys.json`), either a list of entries or `{"keys": [...]}`:

    {"keys": [{"name": "web", "key": "sk-...", "routes": ["local", "v1"],
               "budgets": {"requestsPerMinute": 60, "tokensPerMinute": 20000}},
              {"name": "batch", "sha256": "<hex of sha256(key)>", "routes": ["gpt"],
               "budgets": {"requestsPerMinute": 10, "tokensPerMinute": 5000}}]}

A key is kept as the SHA-256 of its text; a presented key is hashed and compared with every
entry's hash in constant time (`hmac.compare_digest`). `name` is what logs and metrics show,
never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

# The routes a key may be allowed: the local model's persona routes (`/Llama`), the GPT
# routes (`/gpt4.1`, `/gpt4.1_mini`: they spend the installation's OpenAI account), and the
# OpenAI-compatible `/v1/chat/completions` on the local model.
ROUTES = ("local", "gpt", "v1")
Route = Literal["local", "gpt", "v1"]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MIN_KEY_CHARS = 16


def key_hash(key: str) -> str:
    """The hex SHA-256 of a key's text, the form the file may hold instead of the key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class Budgets(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    requests_per_minute: int = Field(alias="requestsPerMinute", gt=0)
    tokens_per_minute: int = Field(
        alias="tokensPerMinute", gt=0,
        description="prompt + generated tokens, counted by the model's tokenizer")


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=NAME_PATTERN)
    key: str | None = Field(default=None, min_length=MIN_KEY_CHARS, repr=False)
    sha256: str | None = Field(default=None, repr=False)
    routes: list[Route] = Field(min_length=1)
    budgets: Budgets

    @model_validator(mode="after")
    def _one_secret(self) -> KeyEntry:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of key, sha256")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return self

    @property
    def digest(self) -> str:
        return self.sha256 if self.sha256 is not None else key_hash(self.key or "")


@dataclass(frozen=True)
class ApiKey:
    """One accepted key, as the service holds it (the hash only)."""

    name: str
    digest: bytes
    routes: frozenset[str]
    requests_per_minute: int
    tokens_per_minute: int


class KeysFileError(ValueError):
    """The keys file cannot be used; `problems` name each entry (`keys[2] (bob): ...`)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _entry_label(index: int, raw: object) -> str:
    name = raw.get("name") if isinstance(raw, dict) else None
    return f"keys[{index}] ({name})" if isinstance(name, str) and name else f"keys[{index}]"


def _reason(error: dict) -> str:
    where = ".".join(str(p) for p in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "is required"
    return f"{where}: {message}" if where else message


def parse_keys(text: str) -> list[ApiKey]:
    """The keys of a keys file, or `KeysFileError` naming every entry that is wrong (no or
    negative budget, unknown route, duplicate name or key, ...)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KeysFileError([f"not valid JSON: {exc}"]) from exc
    if isinstance(data, dict) and set(data) == {"keys"}:
        data = data["keys"]
    if not isinstance(data, list):
        raise KeysFileError(['expected a list of key entries, or {"keys": [...]}'])
    problems: list[str] = []
    entries: list[tuple[int, KeyEntry]] = []
    for index, raw in enumerate(data):
        try:
            entries.append((index, KeyEntry.model_validate(raw)))
        except ValidationError as exc:
            label = _entry_label(index, raw)
            problems += [f"{label}: {_reason(e)}" for e in exc.errors()]
    seen_names: dict[str, int] = {}
    seen_keys: dict[str, str] = {}
    for index, entry in entries:
        if entry.name in seen_names:
            problems.append(f"keys[{index}] ({entry.name}): duplicate name (also "
                            f"keys[{seen_names[entry.name]}])")
        seen_names.setdefault(entry.name, index)
        if entry.digest in seen_keys:
            problems.append(f"keys[{index}] ({entry.name}): the same key as "
                            f"{seen_keys[entry.digest]}")
        seen_keys.setdefault(entry.digest, entry.name)
    if problems:
        raise KeysFileError(problems)
    return [ApiKey(e.name, bytes.fromhex(e.digest), frozenset(e.routes),
                   e.budgets.requests_per_minute, e.budgets.tokens_per_minute)
            for _, e in entries]


def find_key(keys: list[ApiKey], presented: str) -> ApiKey | None:
    """The entry whose hash matches the presented key's; every entry is compared, each in
    constant time, so the time taken tells nothing about which (or whether one) matched."""
    digest = hashlib.sha256(presented.encode("utf-8")).digest()
    found = None
    for key in keys:
        if hmac.compare_digest(key.digest, digest):
            found = key
    return found
