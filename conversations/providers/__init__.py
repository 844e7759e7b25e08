"""Providers turn chat messages into text deltas; ``get_provider`` returns the configured one."""

from __future__ import annotations

from functools import cache

from django.conf import settings

from .base import ChatMessage, ChatProvider, ProviderError, StreamOutcome

__all__ = ["ChatMessage", "ChatProvider", "ProviderError", "StreamOutcome", "get_provider"]


@cache
def get_provider() -> ChatProvider:
    """The provider named by CHAT_PROVIDER, built once per process."""
    if settings.CHAT_PROVIDER == "openai":
        from .openai_compatible import OpenAICompatibleProvider

        return OpenAICompatibleProvider(
            api_key=settings.OPENAI_API_KEY,
            base_url=settings.OPENAI_BASE_URL,
            model=settings.CHAT_MODEL,
            timeout=settings.OPENAI_TIMEOUT_SECONDS,
            max_retries=settings.OPENAI_MAX_RETRIES,
            fast_transport=settings.CHAT_FAST_PATH,
        )
    from .demo import DemoProvider

    return DemoProvider(
        model=settings.CHAT_MODEL, tokens_per_second=settings.CHAT_DEMO_TOKENS_PER_SECOND
    )
