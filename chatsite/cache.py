"""A Redis connection pool shared by every cache object of the process.

Django makes a cache object per async context, and each makes its own pool, so under ASGI
every request opened a new Redis connection. Sharing the pool per URL avoids that.
"""

from __future__ import annotations

from functools import lru_cache

import redis


class SharedConnectionPool(redis.ConnectionPool):
    @classmethod
    def from_url(cls, url: str, **kwargs) -> redis.ConnectionPool:
        if kwargs:
            return super().from_url(url, **kwargs)
        return _pool_for(url)


@lru_cache(maxsize=8)
def _pool_for(url: str) -> redis.ConnectionPool:
    return redis.ConnectionPool.from_url(url)
