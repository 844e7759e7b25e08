"""Health for load balancers and orchestrators: ``/healthz`` (the process answers) and
``/readyz`` (it can serve: PostgreSQL and, when configured, Redis answer in time).

Neither needs auth, counts against a limit, touches the session or is logged per request.
``/readyz`` answers 503 naming what failed; it never says more than ``ok``, ``timeout`` or
``unreachable`` (no connection strings, no error text).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse

from conversations import asyncdb
from conversations.redis_client import redis_client

logger = logging.getLogger(__name__)


async def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


async def readyz(request: HttpRequest) -> JsonResponse:
    names = ["database"] + (["redis"] if settings.REDIS_URL else [])
    probes = [database_answers()] + ([redis_answers()] if settings.REDIS_URL else [])
    results = await asyncio.gather(*(within_timeout(probe) for probe in probes))
    checks = dict(zip(names, results, strict=True))
    ready = all(result == "ok" for result in checks.values())
    if not ready:
        logger.warning("not ready: %s", ", ".join(f"{k} {v}" for k, v in checks.items()))
    response = JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )
    if not ready:
        response["Retry-After"] = "5"
    return response


async def within_timeout(probe: Awaitable[None]) -> str:
    try:
        await asyncio.wait_for(probe, settings.CHAT_READY_TIMEOUT_SECONDS)
    except TimeoutError:
        return "timeout"
    except Exception:
        return "unreachable"
    return "ok"


async def database_answers() -> None:
    if asyncdb.available():
        await asyncdb.fetchall("SELECT 1", [])
    else:
        await sync_to_async(_select_one, thread_sensitive=False)()


def _select_one() -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()


async def redis_answers() -> None:
    await redis_client().ping()
