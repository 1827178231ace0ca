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
    def __init__(self, retry_after_s: int, queue: QueueInfo) -> None:
        super().__init__(
            f"The queue is full ({queue.waiting} waiting, {queue.active} running); "
            f"retry in {retry_after_s} s."
        )
        self.retry_after_s = retry_after_s
        self.queue = queue


class DeadlineExceededError(ChatError):
    """The request's deadline passed while queued or generating; generation was stopped."""


class EngineUnavailableError(ChatError):
    """The model is not loaded (yet), failed to load, or the engine is not configured."""


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
