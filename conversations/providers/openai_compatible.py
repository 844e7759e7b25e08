"""Any OpenAI-compatible Chat Completions API (OpenAI, Ollama, vLLM, llama.cpp, LM Studio, ...)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, cast

import httpx
import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from .aiohttp_transport import AiohttpTransport
from .base import (
    ChatMessage,
    ChatProvider,
    ProviderError,
    StreamOutcome,
    clean_title,
    title_prompt,
)
from .events import EventDataReader

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 1.0


class NoCookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class UpstreamHttpClient(openai.DefaultAsyncHttpxClient):
    """The SDK's HTTP client (its defaults) on an aiohttp transport, without a cookie jar: the
    fast path's (CHAT_FAST_PATH=1).

    One client serves every user's requests, so a cookie the upstream set for one must not go
    out with the next; nor is each response's Set-Cookie worth reading. httpx has no public way
    to go without a jar, so its private ``_cookies`` is replaced (docs/internals.md).
    """

    def __init__(self, **kwargs: Any) -> None:
        # Proxies from the environment are the transport's to honour (httpx would mount its
        # own transports for them).
        super().__init__(transport=AiohttpTransport(), trust_env=False, **kwargs)
        self._cookies = NoCookies()


class StockUpstreamHttpClient(openai.DefaultAsyncHttpxClient):
    """The SDK's default HTTP client, httpx's own transport and all (CHAT_FAST_PATH=0), which
    forgets each cookie as soon as a response sets it, through httpx's public response hook:
    no request goes out with one."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(event_hooks={"response": [self.forget_cookies]}, **kwargs)

    async def forget_cookies(self, response: httpx.Response) -> None:
        self.cookies.clear()


class OpenAICompatibleProvider(ChatProvider):
    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        fast_transport: bool = True,
    ) -> None:
        """``fast_transport``: the SDK's requests go over aiohttp (``UpstreamHttpClient``),
        else over httpx's own transport (``StockUpstreamHttpClient``)."""
        self.model = model
        self.http_client = UpstreamHttpClient() if fast_transport else StockUpstreamHttpClient()
        self.client = AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            max_retries=max_retries,
            http_client=self.http_client,
        )

    async def stream(
        self, messages: Sequence[ChatMessage], outcome: StreamOutcome, *, model: str | None = None
    ) -> AsyncGenerator[str, None]:
        """The SDK sends the request (auth, retries, status errors) through its generic ``post``,
        which skips the per-call parameter transform of ``chat.completions.create``; the event
        stream is parsed here from bytes, skipping the SDK's per-chunk pydantic objects."""
        body = {
            "model": model or self.model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        try:
            response = await self.client.post(
                "/chat/completions", cast_to=httpx.Response, body=body, stream=True
            )
            # Sent: the prompt is not held while the reply streams.
            del body, messages
            try:
                reader = EventDataReader()
                received_chunks = response.aiter_bytes()
                async for received in received_chunks:
                    for payload in reader.feed(received):
                        if payload == b"[DONE]":
                            await drain(received_chunks)
                            return
                        for content in deltas(payload, outcome):
                            yield content
            finally:
                await response.aclose()
        except (openai.APIError, httpx.HTTPError) as exc:
            raise upstream_error(exc) from exc

    async def title(self, first_message: str, *, timeout: float) -> str:
        """One non-streaming Chat Completions request, not retried, within ``timeout``."""
        try:
            completion = await self.client.with_options(
                timeout=timeout, max_retries=0
            ).chat.completions.create(
                model=self.model,
                # A system and a user message: the SDK's TypedDicts want each role as a literal.
                messages=cast(list[ChatCompletionMessageParam], title_prompt(first_message)),
                stream=False,
            )
        except (openai.APIError, httpx.HTTPError) as exc:
            raise upstream_error(exc) from exc
        choices = completion.choices or []
        content = choices[0].message.content if choices else None
        return clean_title(content or "")

    async def list_models(self, *, timeout: float) -> list[str]:
        """The upstream's ``GET /models`` (every page), not retried, within ``timeout``."""
        client = self.client.with_options(timeout=timeout, max_retries=0)
        try:
            async with asyncio.timeout(timeout):
                return [model.id async for model in client.models.list()]
        except TimeoutError:
            raise ProviderError(
                "upstream_timeout", f"no answer within {timeout:g} s to GET /models"
            ) from None
        except (openai.APIError, httpx.HTTPError) as exc:
            # Not logged here (the caller logs a failing list once, not at every try).
            status = getattr(exc, "status_code", None)
            detail = f"{type(exc).__name__}" + (f", status {status}" if status else "")
            raise ProviderError(
                "upstream_error", f"GET /models failed ({detail})", upstream_status=status
            ) from exc


async def drain(received_chunks: AsyncIterator[bytes]) -> None:
    """Read the end of the body after ``[DONE]`` so the connection goes back to the pool
    (closing a response that was not read to its end closes its connection). An upstream
    that keeps the body open after ``[DONE]`` is not waited for."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in received_chunks:
                pass


def deltas(payload: bytes, outcome: StreamOutcome) -> list[str]:
    """The non-empty text deltas of one chunk; its finish reason and usage go on ``outcome``."""
    try:
        chunk = json.loads(payload)
    except ValueError:
        logger.warning("upstream sent a malformed chunk: %.200r", payload)
        raise ProviderError("upstream_error", "The model service sent a malformed reply.") from None
    if "error" in chunk:
        logger.warning("upstream error in stream: %.500r", chunk["error"])
        raise ProviderError("upstream_error", "The model service failed mid-reply.")
    usage = chunk.get("usage")
    if usage:
        outcome.prompt_tokens = usage.get("prompt_tokens")
        outcome.completion_tokens = usage.get("completion_tokens")
    contents = []
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason"):
            outcome.finish_reason = choice["finish_reason"]
        content = (choice.get("delta") or {}).get("content")
        if content:
            contents.append(content)
    return contents


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
