"""Statements awaited on the event loop rather than in a worker thread (PostgreSQL only).

Django's ORM is synchronous: each query from an async view is a hop to a worker thread and
back, and under load each hop waits for the event loop to give up the GIL. The API token
lookup, which every API request waits for before anything else, therefore runs here on
PostgreSQL, on an async psycopg pool of this module's own (one per event loop, configured like
Django's connections). Other databases (SQLite on a fresh machine) have no async driver here,
and CHAT_FAST_PATH=0 leaves this pool out: ``available()`` is False and callers use Django's
ORM in a thread instead.

Below Django's public API (docs/internals.md): the pool is configured from
``connection.get_connection_params()``, whose ``cursor_factory`` (a sync cursor class) is
swapped for its async twin.

A reply's rows and its final save stay in worker threads: now that each is one statement,
moving them here saved 5% of CPU per request in sequence but nothing measurable at 50 streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from functools import cache

import psycopg
from django import db
from django.conf import settings
from django.db import connection
from psycopg_pool import AsyncConnectionPool

logger = logging.getLogger(__name__)

_pools: dict[asyncio.AbstractEventLoop, asyncio.Task[AsyncConnectionPool]] = {}
_unawaited: set[asyncio.Task[None]] = set()


@cache
def available() -> bool:
    """Whether statements may be awaited here: on the fast path (CHAT_FAST_PATH=1), on
    PostgreSQL. Otherwise callers use Django's ORM in a thread."""
    return settings.CHAT_FAST_PATH and connection.vendor == "postgresql"


def _pool_for_django_connection() -> AsyncConnectionPool:
    params = connection.get_connection_params()
    if issubclass(params.pop("cursor_factory"), psycopg.ClientCursor):
        params["cursor_factory"] = psycopg.AsyncClientCursor
    params["autocommit"] = True
    pool_options = connection.settings_dict["OPTIONS"].get("pool")
    sizes = pool_options if isinstance(pool_options, dict) else {}
    return AsyncConnectionPool(
        kwargs=params,
        min_size=sizes.get("min_size", 1),
        max_size=sizes.get("max_size", 20),
        timeout=sizes.get("timeout", 30.0),
        name="chatsite-async",
        open=False,
    )


async def _open_pool() -> AsyncConnectionPool:
    pool = _pool_for_django_connection()
    await pool.open()
    return pool


async def pool() -> AsyncConnectionPool:
    """This event loop's pool, opened on first use."""
    loop = asyncio.get_running_loop()
    opening = _pools.get(loop)
    if opening is None:
        opening = _pools[loop] = loop.create_task(_open_pool())
    return await opening


async def apool_open() -> None:
    """Open this event loop's pool and wait for its first connection: at startup
    (``chatsite.lifecycle.run_at_startup``), so that no request waits for it to connect."""
    if available():
        opened = await pool()
        await opened.wait(timeout=opened.timeout)


def pools_stats() -> dict[str, int]:
    """psycopg_pool's own figures (``get_stats``: open, idle, waiting…) for this process's
    opened pools, added up; read without I/O, for /metrics (``chatsite.metrics``)."""
    total: dict[str, int] = {}
    for opening in list(_pools.values()):
        if opening.done() and not opening.cancelled() and opening.exception() is None:
            for name, value in opening.result().get_stats().items():
                total[name] = total.get(name, 0) + value
    return total


async def fetchall(sql: str, params: Sequence) -> list[tuple]:
    """Run one statement (autocommit: it is its own transaction) and return its rows.

    Errors are raised as Django's (``IntegrityError``, ``OperationalError``…), as the ORM
    would raise them, so callers handle both paths alike.
    """
    try:
        async with (await pool()).connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall() if cursor.description is not None else []
    except psycopg.Error as exc:
        raise _as_django_error(exc) from exc


def execute_soon(
    sql: str, params: Sequence, *, purpose: str, then: Callable[[], None] | None = None
) -> None:
    """Run a statement that no response waits for; a failure is logged with ``purpose``, and
    ``then`` is called when it is over, however it went."""
    task = asyncio.get_running_loop().create_task(_execute_logged(sql, params, purpose))
    _unawaited.add(task)
    task.add_done_callback(_unawaited.discard)
    if then is not None:
        task.add_done_callback(lambda _: then())


async def _execute_logged(sql: str, params: Sequence, purpose: str) -> None:
    try:
        await fetchall(sql, params)
    except Exception:
        logger.warning("could not %s", purpose, exc_info=True)


def _as_django_error(exc: psycopg.Error) -> db.Error:
    for django_error in DJANGO_ERRORS:
        if isinstance(exc, getattr(psycopg, django_error.__name__)):
            return django_error(*exc.args)
    return db.Error(*exc.args)


DJANGO_ERRORS = (
    db.DataError,
    db.OperationalError,
    db.IntegrityError,
    db.InternalError,
    db.ProgrammingError,
    db.NotSupportedError,
    db.DatabaseError,
    db.InterfaceError,
)
"""Most specific first, in the order of Django's own DatabaseErrorWrapper."""


async def aclose_pools() -> None:
    """Finish this loop's statements started by execute_soon, then close its pool (for tests,
    which start and stop loops)."""
    loop = asyncio.get_running_loop()
    pending = [task for task in _unawaited if task.get_loop() is loop]
    if pending:
        await asyncio.wait(pending)
    opening = _pools.pop(loop, None)
    if opening is not None:
        await (await opening).close()
