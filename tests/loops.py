"""Running a coroutine from a sync test."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections

from conversations import asyncdb, redis_client
from conversations.replies import heartbeats, stops


def run_in_new_loop(coroutine):
    """asyncio.run in a thread of its own (Playwright's tests leave a loop in this one); the
    connections the coroutine opened (the database's, in asgiref's threads or on the loop, and
    the limits' Redis client's) are closed after it, once all of its requests are done."""

    async def run_then_close():
        try:
            return await coroutine
        finally:
            await asyncdb.aclose_pools()
            await stops.aclose_listeners()
            await heartbeats.aclose_hearts()
            if settings.REDIS_URL and redis_client.redis_client.cache_info().currsize:
                await redis_client.redis_client().aclose()
            await sync_to_async(connections.close_all)()

    with ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, run_then_close()).result()
