"""The models users may pick: ``CHAT_MODELS``, else the provider's own list, kept in memory.

A stream only looks its model up in a set held in memory. The provider's list (an
OpenAI-compatible upstream's ``GET /v1/models``) is fetched once by the first request that needs
it, then refreshed in the background when it is older than ``CHAT_MODELS_CACHE_SECONDS``, while
requests go on with the list they have. A failed fetch leaves ``CHAT_MODEL`` alone on the list,
logged once until a fetch works again, and is tried again after at most a minute.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from asgiref.sync import async_to_sync
from django.conf import settings

from .errors import Invalid
from .providers import ChatProvider, get_provider

logger = logging.getLogger(__name__)

FAILURE_RETRY_SECONDS = 60.0
"""A list that could not be fetched is tried again after this long at most."""


@dataclass(frozen=True)
class ModelChoice:
    """The models on offer: ``names`` in the order the picker shows them, ``default`` first
    among them."""

    default: str
    names: tuple[str, ...]
    allowed: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed", frozenset(self.names))

    @classmethod
    def of(cls, default: str, names: Iterable[str]) -> ModelChoice:
        """The default first, then the other names once each, in their order."""
        ordered = [default, *(name for name in names if name and name != default)]
        return cls(default, tuple(dict.fromkeys(ordered)))

    def check(self, requested: str | None) -> str | None:
        """``requested`` if on offer (None stays None); Invalid ``model_not_allowed`` naming
        the models on offer if not."""
        if requested is None or requested in self.allowed:
            return requested
        shown = ", ".join(self.names)
        raise Invalid(
            "model_not_allowed",
            f"'model' must be one of the models on offer: {shown}.",
            details={"field": "model", "allowed": list(self.names)},
        )

    def for_conversation(self, saved: str) -> str:
        """The model a conversation goes on with: the one it was saved with, if still on
        offer, else the default."""
        return saved if saved in self.allowed else self.default


class ModelCatalog:
    def __init__(
        self,
        *,
        provider: ChatProvider,
        default: str,
        configured: list[str],
        max_age: float,
        fetch_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.default = default
        self.max_age = max_age
        self.fetch_timeout = fetch_timeout
        self.clock = clock
        self.fixed = ModelChoice.of(default, configured) if configured else None
        self._choice: ModelChoice | None = None
        self._expires = 0.0
        self._fetching: asyncio.Task[ModelChoice] | None = None
        self._failing = False

    def fresh(self) -> ModelChoice | None:
        """The list, if known and not due for a refresh; no I/O."""
        if self.fixed is not None:
            return self.fixed
        if self._choice is not None and self.clock() < self._expires:
            return self._choice
        return None

    async def aget(self) -> ModelChoice:
        """The list: at once when known (a stale one starts a refresh in the background);
        the first call waits for the first fetch."""
        known = self.fresh()
        if known is not None:
            return known
        if self._fetching is None or self._fetching.done():
            # A fresh context: nothing of the request that happened to start it.
            self._fetching = asyncio.get_running_loop().create_task(self._afetch())
        if self._choice is not None:
            return self._choice
        return await asyncio.shield(self._fetching)

    async def _afetch(self) -> ModelChoice:
        try:
            names = await self.provider.list_models(timeout=self.fetch_timeout)
        except Exception as exc:
            if not self._failing:
                logger.warning(
                    "the model list could not be fetched (%s); offering %s alone until it can",
                    exc,
                    self.default,
                )
            self._failing = True
            choice = ModelChoice.of(self.default, [])
            max_age = min(self.max_age, FAILURE_RETRY_SECONDS)
        else:
            if self._failing:
                logger.info("the model list is fetched again")
            self._failing = False
            choice = ModelChoice.of(self.default, sorted(names))
            max_age = self.max_age
        self._choice, self._expires = choice, self.clock() + max_age
        return choice


_catalog: ModelCatalog | None = None


def model_catalog() -> ModelCatalog:
    """The process's catalog, built from the settings for the provider (built anew if the
    provider is: tests switch providers)."""
    global _catalog
    provider = get_provider()
    if _catalog is None or _catalog.provider is not provider:
        _catalog = ModelCatalog(
            provider=provider,
            default=provider.model,
            configured=settings.CHAT_MODELS,
            max_age=settings.CHAT_MODELS_CACHE_SECONDS,
            fetch_timeout=min(settings.OPENAI_TIMEOUT_SECONDS, 10.0),
        )
    return _catalog


async def model_choice_aget() -> ModelChoice:
    """The models on offer (see ModelCatalog.aget)."""
    return await model_catalog().aget()


def model_choice_get() -> ModelChoice:
    """The models on offer, from sync code (a page): from memory when fresh, else through the
    event loop the catalog's fetches run on."""
    return model_catalog().fresh() or async_to_sync(model_choice_aget)()
