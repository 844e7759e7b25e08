"""The seam to the model: messages in, text deltas out. Knows nothing of Django, HTTP or SSE."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TypedDict


class ChatMessage(TypedDict):
    role: str
    content: str


@dataclass
class StreamOutcome:
    """What the upstream reported about a finished stream, filled in while it streams."""

    finish_reason: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ProviderError(Exception):
    """Any upstream failure, with a code and a message that are safe to show a client."""

    def __init__(self, code: str, message: str, *, upstream_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.upstream_status = upstream_status


class ChatProvider(ABC):
    model: str

    @abstractmethod
    def stream(self, messages: Sequence[ChatMessage], outcome: StreamOutcome) -> AsyncIterator[str]:
        """Yield the reply's non-empty text deltas; record finish reason and usage on ``outcome``.

        Raises ProviderError. Closing or cancelling the iterator closes the upstream at once.
        """
