"""A Redis connection pool shared by every cache object of the process.

Django's cache (Redis with REDIS_URL) holds django-ratelimit's counters of sign-in and sign-up
attempts (``conversations.attempts``); nothing else of the project uses it (the API's limits,
stops and replies use ``conversations.redis_client``). Django makes a cache object per async
context, and each made its own pool, so under ASGI every counted attempt opened a new Redis
connection. Pools are now shared per URL and options.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis


class SharedConnectionPool(redis.ConnectionPool):
    # Returns the shared plain pool, not an instance of this class: RedisCache only needs a
    # ConnectionPool back, which redis-py's Self-typed from_url cannot express.
    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.ConnectionPool:  # type: ignore[override]
        try:
            return _pool_for(url, tuple(sorted(kwargs.items())))
        except TypeError:  # an unhashable option: no sharing
            return redis.ConnectionPool.from_url(url, **kwargs)


@lru_cache(maxsize=8)
def _pool_for(url: str, options: tuple[tuple[str, Any], ...]) -> redis.ConnectionPool:
    return redis.ConnectionPool.from_url(url, **dict(options))
