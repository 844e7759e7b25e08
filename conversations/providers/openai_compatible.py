"""Any OpenAI-compatible Chat Completions API (OpenAI, Ollama, vLLM, llama.cpp, LM Studio, ...)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

import httpx
import openai
from openai import AsyncOpenAI

from .base import ChatMessage, ChatProvider, ProviderError, StreamOutcome

logger = logging.getLogger(__name__)


class OpenAICompatibleProvider(ChatProvider):
    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        self.model = model
        self.client = AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            max_retries=max_retries,
        )
        # Resolving ``chat`` imports every SDK resource (about a second): now, not mid-request.
        self.completions = self.client.chat.completions

    async def stream(
        self, messages: Sequence[ChatMessage], outcome: StreamOutcome
    ) -> AsyncIterator[str]:
        try:
            stream = await self.completions.create(
                model=self.model,
                messages=list(messages),
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.APIError as exc:
            raise upstream_error(exc) from exc
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    outcome.prompt_tokens = chunk.usage.prompt_tokens
                    outcome.completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.finish_reason:
                        outcome.finish_reason = choice.finish_reason
                    content = choice.delta.content if choice.delta else None
                    if content:
                        yield content
        except (openai.APIError, httpx.HTTPError) as exc:
            raise upstream_error(exc) from exc
        finally:
            await stream.close()


def upstream_error(exc: Exception) -> ProviderError:
    """Map an SDK or transport failure to a ProviderError whose message is safe for clients."""
    status = getattr(exc, "status_code", None)
    logger.warning("upstream failure: %s status=%s detail=%s", type(exc).__name__, status, exc)
    if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
        return ProviderError("upstream_timeout", "The model service took too long to answer.")
    if isinstance(exc, openai.APIConnectionError | httpx.ConnectError):
        return ProviderError("upstream_unavailable", "The model service could not be reached.")
    if isinstance(exc, httpx.TransportError):
        return ProviderError(
            "upstream_interrupted", "The connection to the model service was cut mid-reply."
        )
    if status in (401, 403):
        return ProviderError(
            "upstream_auth",
            "The model service refused the site's credentials.",
            upstream_status=status,
        )
    if status == 429:
        return ProviderError(
            "upstream_rate_limited",
            "The model service is rate limiting this site; try again shortly.",
            upstream_status=status,
        )
    if status is not None and status < 500:
        return ProviderError(
            "upstream_rejected", "The model service rejected the request.", upstream_status=status
        )
    return ProviderError(
        "upstream_error", "The model service failed to answer.", upstream_status=status
    )
