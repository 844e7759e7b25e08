"""The database being unreachable: how a request is answered, and how operators are told.

When PostgreSQL is down (or its pool has no connection to give within DATABASE_POOL_TIMEOUT),
a request fails with Django's OperationalError or InterfaceError wherever it first needs the
database: the token lookup, the session, a view's query. ``conversations.views.server_error``
answers such a failure with 503 and ``Retry-After`` (JSON on the API, a plain page elsewhere);
``report`` logs one error line per outage, and ``WithoutOutageTracebacks`` keeps Django from
logging a traceback for each request as well.
"""

from __future__ import annotations

import logging
import time
from typing import TypeGuard

from django.db import InterfaceError, OperationalError

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
QUIET_SECONDS = 60.0
"""Failures closer together than this are one outage, reported once."""

_last_failure = float("-inf")


def is_database_unavailable(
    error: BaseException | None,
) -> TypeGuard[OperationalError | InterfaceError]:
    return isinstance(error, OperationalError | InterfaceError)


def report(error: BaseException) -> None:
    """Log the first failure of an outage as one error line (its type and the driver's words,
    no traceback); later ones only extend the outage."""
    global _last_failure
    now = time.monotonic()
    if now - _last_failure > QUIET_SECONDS:
        logger.error(
            "the database is unavailable; answering 503 until it is back (%s: %s)",
            type(error).__name__,
            str(error).strip().splitlines()[0] if str(error).strip() else "",
        )
    _last_failure = now


class WithoutOutageTracebacks(logging.Filter):
    """For the ``django.request`` logger: drop the per-request record of a database outage
    (``report`` has said it once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and is_database_unavailable(record.exc_info[1]))
