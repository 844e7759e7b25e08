"""The one Redis client of a process, shared by limits, stops, heartbeats and replies.

With REDIS_URL unset none of them uses Redis (one process, state in memory). Keys and channels
all start with the deployment's CACHE_KEY_PREFIX, so deployments sharing a Redis stay apart.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:
    import redis
    import redis.asyncio


@cache
def redis_client() -> redis.asyncio.Redis:
    """This process's asyncio client (its connection pool)."""
    import redis.asyncio

    client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    return client


@cache
def sync_redis_client() -> redis.Redis:
    """A synchronous client, for management commands and worker threads."""
    import redis

    return redis.Redis.from_url(settings.REDIS_URL)


async def aconnect() -> None:
    """Open a connection of this process's client, if it has Redis: at startup
    (``chatsite.lifecycle.run_at_startup``), so that no request waits for it to connect."""
    if settings.REDIS_URL:
        await redis_client().ping()


def key_prefix() -> str:
    return str(settings.CACHES["default"].get("KEY_PREFIX", "chatsite"))
