"""The seam to the model: messages in, text deltas out. Knows nothing of Django, HTTP or SSE."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
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


TITLE_INSTRUCTION = (
    "You name conversations. Reply with a short title (three to six words) for a conversation "
    "that starts with the user's next message, in the language of that message. Reply with "
    "the title only: no quotes, no full stop, no answer to the message."
)
TITLE_INPUT_CHARS = 2000
"""How much of the first message the title request sends."""


def title_prompt(first_message: str) -> list[ChatMessage]:
    """The prompt of a title request: the instruction, then the conversation's first message
    (its start) as the user's."""
    return [
        {"role": "system", "content": TITLE_INSTRUCTION},
        {"role": "user", "content": first_message[:TITLE_INPUT_CHARS]},
    ]


def clean_title(text: str) -> str:
    """A model's title: its first line, without the quotes, label or full stop models add."""
    lines = [line for line in text.splitlines() if line.strip()]
    title = " ".join(lines[0].split()) if lines else ""
    if title.lower().startswith("title:"):
        title = title[len("title:") :].strip()
    title = title.strip("\"'“”‘’«»*#` ")
    return title.rstrip(".").strip()


class ChatProvider(ABC):
    model: str

    @abstractmethod
    def stream(
        self, messages: Sequence[ChatMessage], outcome: StreamOutcome, *, model: str | None = None
    ) -> AsyncGenerator[str, None]:
        """Yield the reply's non-empty text deltas; record finish reason and usage on ``outcome``.
        ``model``: the model to ask (default: the provider's own, ``self.model``).

        Raises ProviderError. Closing or cancelling the iterator closes the upstream at once.
        """

    async def list_models(self, *, timeout: float) -> list[str]:
        """The names of the models this provider can answer with, from one request that gives
        up after ``timeout`` seconds. Raises ProviderError."""
        return [self.model]

    async def title(self, first_message: str, *, timeout: float) -> str:
        """A short title for a conversation that starts with ``first_message``, from one
        non-streaming request that gives up after ``timeout`` seconds; "" when the provider
        does not make titles. Raises ProviderError."""
        return ""
