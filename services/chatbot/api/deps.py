"""What a persona app's routes depend on, injected with `Annotated` dependencies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from starlette.exceptions import HTTPException

from chatbot.api.metrics import PersonaMetrics
from chatbot.core.chat import ChatService
from chatbot.core.chat_completions import ChatCompletions
from chatbot.domain.errors import EngineUnavailableError, InvalidModelNameError
from chatbot.domain.personas import GPT_MODELS, Persona
from chatbot.settings import PersonaSettings

if TYPE_CHECKING:
    from chatbot.api.auth import KeyGuard


@dataclass
class PersonaRuntime:
    persona: Persona
    settings: PersonaSettings
    service: ChatService
    completions: ChatCompletions  # on the service's engine, through the same gate
    metrics: PersonaMetrics
    gpt_services: dict[str, ChatService] = field(default_factory=dict)
    api_keys: KeyGuard | None = None  # None: no keys file, every route open

    def gpt_service(self, name: str) -> ChatService:
        if name not in GPT_MODELS:
            raise InvalidModelNameError()
        if name not in self.gpt_services:
            raise EngineUnavailableError(
                f"OpenAI is not configured for {name}: set OPENAI_API_KEY (and optionally "
                "OPENAI_BASE_URL) in the service's environment or Secret."
            )
        return self.gpt_services[name]


def _runtime(request: Request) -> PersonaRuntime:
    return request.app.state.runtime


Runtime = Annotated[PersonaRuntime, Depends(_runtime)]


def require_json(request: Request) -> None:
    """POST bodies must be JSON; a form or text body gets 415 before any parsing."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPException(
            415, f"Content-Type: expected application/json, got {content_type or 'nothing'}"
        )
