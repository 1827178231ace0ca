"""Failures the use cases report; the API layer maps each to one HTTP status."""

from __future__ import annotations

from dataclasses import dataclass


class ChatError(Exception):
    """Base class: every subclass carries a message a person can act on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class QueueInfo:
    active: int
    waiting: int
    max_concurrent: int
    max_queue: int


class QueueFullError(ChatError):
    def __init__(self, retry_after_s: int, queue: QueueInfo, why: str = "") -> None:
        super().__init__(
            f"The queue is full ({why or f'{queue.waiting} waiting'}, {queue.active} "
            f"running); retry in {retry_after_s} s."
        )
        self.retry_after_s = retry_after_s
        self.queue = queue


class DeadlineExceededError(ChatError):
    """The request's deadline passed while queued or generating; generation was stopped."""


class EngineUnavailableError(ChatError):
    """The model is not loaded (yet), failed to load, or the engine is not configured."""


class ServiceShuttingDownError(ChatError):
    """The service is stopping (SIGTERM): the request was not started, or its answer was
    not done when the shutdown grace period ended and was stopped (nothing was stored).
    Another replica, or the pod that replaces this one, will answer a retry."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(f"{message} Retry in {retry_after_s} s.")
        self.retry_after_s = retry_after_s


class GenerationFailedError(ChatError):
    """Both the streamed and the fallback generation failed to produce an answer."""


class InvalidModelNameError(ChatError):
    def __init__(self) -> None:
        super().__init__("Invalid model name.")


class UpstreamError(ChatError):
    """The remote model API (OpenAI) answered with an error status or could not be reached."""

    def __init__(self, message: str, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class UpstreamTimeoutError(ChatError):
    """The remote model API (OpenAI) did not answer within its timeout."""


class ContextLengthExceededError(ChatError):
    """The prompt cannot fit the model's context even without history (a client error).

    The counts are None when a remote API reported the overflow without them.
    """

    def __init__(self, message: str, prompt_tokens: int | None = None,
                 min_answer_tokens: int | None = None,
                 context_tokens: int | None = None) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.min_answer_tokens = min_answer_tokens
        self.context_tokens = context_tokens

    @classmethod
    def counted(cls, prompt_tokens: int, min_answer_tokens: int,
                context_tokens: int) -> ContextLengthExceededError:
        return cls(
            f"The prompt needs {prompt_tokens} tokens without any history, and the answer at "
            f"least {min_answer_tokens} more; the model's context holds {context_tokens} "
            "tokens. Shorten the input, the persona context or the system messages.",
            prompt_tokens, min_answer_tokens, context_tokens)


class RateLimitedError(ChatError):
    """An API key spent its budget for the current window (requests or tokens per minute);
    `retry_after_s` is when the window ends. Not the queue's overload (QueueFullError)."""

    def __init__(self, key_name: str, budget: str, limit: int, used: int,
                 retry_after_s: int) -> None:
        super().__init__(
            f"API key {key_name!r} used its {budget} budget ({used} of {limit} this "
            f"minute); retry in {retry_after_s} s.")
        self.key_name = key_name
        self.budget = budget
        self.limit = limit
        self.used = used
        self.retry_after_s = retry_after_s
