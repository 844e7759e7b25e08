"""Running a coroutine from a sync test."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.db import connections

from conversations import asyncdb


def run_in_new_loop(coroutine):
    """asyncio.run in a thread of its own (Playwright's tests leave a loop in this one); the
    database connections the coroutine opened, in asgiref's threads or on the loop, are closed
    after it."""

    async def run_then_close():
        try:
            return await coroutine
        finally:
            await asyncdb.aclose_pools()
            await sync_to_async(connections.close_all)()

    with ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, run_then_close()).result()
