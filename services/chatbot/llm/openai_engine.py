"""The OpenAI engine (`openai.AsyncOpenAI`) behind the `ChatEngine` port: the GPT routes.

Works against any OpenAI-compatible endpoint (`OPENAI_BASE_URL`), including this project's
own `/v1/chat/completions`. Upstream failures become domain errors that name the upstream
status: a timeout -> `UpstreamTimeoutError` (504), an error status or an unreachable
endpoint -> `UpstreamError` (502), except the upstream's own context limit (a 400
`context_length_exceeded`, or llama-server's `exceed_context_size_error`) ->
`ContextLengthExceededError` (400): the engine cannot count the upstream model's tokens,
so the upstream's limit is the one that applies.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
from openai import AsyncOpenAI

from chatbot.core.ports import Completion, EngineStatus
from chatbot.domain.conversation import ChatMessage
from chatbot.domain.errors import ContextLengthExceededError, UpstreamError, UpstreamTimeoutError
from chatbot.domain.personas import SamplingParams


def openai_client(api_key: str, base_url: str | None, timeout_s: float,
                  max_retries: int) -> AsyncOpenAI:
    return AsyncOpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s,
                       max_retries=max_retries)


class OpenAIEngine:
    def __init__(self, client: AsyncOpenAI, model: str) -> None:
        self.client = client
        self.model = model
        self.generated_tokens = 0

    @property
    def model_name(self) -> str:
        return self.model

    def status(self) -> EngineStatus:
        return EngineStatus(True, self.model, "OpenAI API",
                            {"generated_tokens": self.generated_tokens,
                             "base_url": str(self.client.base_url)})

    def context_tokens(self) -> None:
        return None  # unknown here: the upstream enforces its own limit

    def count_prompt_tokens(self, messages: list[ChatMessage]) -> int:
        raise NotImplementedError("the OpenAI engine cannot count the upstream's tokens")

    async def prefill_next_turn(self, messages: list[ChatMessage]) -> None:
        """Nothing: the upstream keeps its own prompt cache."""

    def _request(self, messages: list[ChatMessage], params: SamplingParams) -> dict:
        request = dict(
            model=self.model,
            messages=[{"role": m.role, "content": m.content} for m in messages],
            max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
        )
        if params.seed is not None:
            request["seed"] = params.seed
        return request

    async def stream(
        self, messages: list[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[str]:
        try:
            chunks = await self.client.chat.completions.create(
                stream=True, **self._request(messages, params))
            async with chunks:
                async for chunk in chunks:
                    if chunk.choices and chunk.choices[0].delta.content:
                        self.generated_tokens += 1
                        yield chunk.choices[0].delta.content
        except openai.OpenAIError as exc:
            raise self._upstream(exc) from exc

    async def complete(self, messages: list[ChatMessage], params: SamplingParams) -> Completion:
        try:
            out = await self.client.chat.completions.create(
                stream=False, **self._request(messages, params))
        except openai.OpenAIError as exc:
            raise self._upstream(exc) from exc
        text = (out.choices[0].message.content or "") if out.choices else ""
        tokens = out.usage.completion_tokens if out.usage else 0
        self.generated_tokens += tokens
        return Completion(text, tokens)

    async def close(self) -> None:
        await self.client.close()  # idempotent; the persona's GPT engines share it

    def _upstream(self, exc: openai.OpenAIError) -> Exception:
        where = f"OpenAI ({self.model} at {self.client.base_url})"
        if isinstance(exc, openai.APITimeoutError):
            return UpstreamTimeoutError(
                f"{where} did not answer within {self.client.timeout} s.")
        if isinstance(exc, openai.APIStatusError) and _context_overflow(exc):
            body = exc.body if isinstance(exc.body, dict) else {}

            def count(*keys: str) -> int | None:
                values = [body.get(k) for k in keys if isinstance(body.get(k), int)]
                return values[0] if values else None

            return ContextLengthExceededError(
                f"{where}: the prompt does not fit the model's context: {_short(exc.message)}",
                count("prompt_tokens", "n_prompt_tokens"), count("min_answer_tokens"),
                count("context_tokens", "n_ctx"))
        if isinstance(exc, openai.APIStatusError):
            return UpstreamError(
                f"{where} answered HTTP {exc.status_code}: {_short(exc.message)}",
                exc.status_code)
        if isinstance(exc, openai.APIConnectionError):
            return UpstreamError(f"{where} could not be reached: {_short(str(exc))}")
        return UpstreamError(f"{where} failed: {type(exc).__name__}: {_short(str(exc))}")


def _context_overflow(exc: openai.APIStatusError) -> bool:
    body = exc.body if isinstance(exc.body, dict) else {}
    return exc.status_code == 400 and (
        exc.code == "context_length_exceeded"
        or body.get("type") == "exceed_context_size_error")


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
