"""API tokens: create one (shown once), authenticate a bearer, revoke.

The lookup every API request makes first: on the fast path (PostgreSQL) one hand-written query
awaited on the event loop (``asyncdb``); otherwise the ORM in a thread.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import cache, partial
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import DEFAULT_DB_ALIAS, connection
from django.db.models import Field, QuerySet
from django.db.models.expressions import Col
from django.utils import timezone

from . import asyncdb, statements
from .models import ApiToken
from .statements import postgresql as sql

TOKEN_PREFIX = "cst_"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_create(*, owner: User, name: str = "") -> tuple[ApiToken, str]:
    """A new token; the raw value is returned here once and never stored."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        owner=owner, name=name, prefix=raw[: len(TOKEN_PREFIX) + 6], digest=token_digest(raw)
    )
    return token, raw


def api_token_authenticate(raw: str) -> User | None:
    """The active owner of a live token, or None; last use is recorded at most once a minute.

    Through the ORM, in a thread: with CHAT_FAST_PATH=0 and on databases other than PostgreSQL.
    """
    now = timezone.now()
    token = (
        ApiToken.objects.select_related("owner")
        .filter(digest=token_digest(raw), revoked_at__isnull=True)
        .first()
    )
    if token is None or not token.owner.is_active:
        return None
    if token.last_used_at is None or token.last_used_at < now - LAST_USED_RESOLUTION:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.owner


def api_token_authenticate_and_release(raw: str) -> User | None:
    """api_token_authenticate, then hand the request thread's connection back to the pool: the
    request may go on to stream for minutes."""
    try:
        return api_token_authenticate(raw)
    finally:
        connection.close()


_api_token_authenticate_in_thread = sync_to_async(api_token_authenticate_and_release)


async def api_token_aauthenticate(raw: str) -> User | None:
    """api_token_authenticate, on the event loop where the fast path allows it (PostgreSQL):
    one hand-written query on the async pool, as the ORM's compilation of it cost more than the
    query itself, and last use recorded beside the request."""
    if not asyncdb.available():
        return await _api_token_authenticate_in_thread(raw)
    now = timezone.now()
    # psycopg adapts the datetime itself; nothing here touches Django's connections, which
    # would build a connection object for each request's context on the event loop.
    rows = await asyncdb.fetchall(_owner_sql(), [now - LAST_USED_RESOLUTION, token_digest(raw)])
    owner, token_id, last_use_is_stale = _owner_from(rows[0] if rows else None)
    if (
        owner is not None
        and token_id is not None
        and last_use_is_stale
        and token_id not in _last_use_being_recorded
    ):
        # The reply need not wait for this bookkeeping: it runs beside the request, once at a
        # time per token (a burst of requests would otherwise queue an update each).
        _last_use_being_recorded.add(token_id)
        asyncdb.execute_soon(
            _last_used_sql(),
            [now, token_id],
            purpose="record a token's use",
            then=partial(_last_use_being_recorded.discard, token_id),
        )
    return owner


_last_use_being_recorded: set[int] = set()


def _owner_from(row: Sequence[Any] | None) -> tuple[User | None, int | None, bool]:
    """The active owner in a row of _owner_sql, the token's id and whether its last use is stale."""
    if row is None:
        return None, None, False
    *values, token_id, last_use_is_stale = row
    names, converters = _user_columns()
    for index, convert in converters:
        values[index] = convert(values[index])
    owner = get_user_model().from_db(DEFAULT_DB_ALIAS, names, values)
    if not owner.is_active:
        return None, None, False
    return owner, token_id, bool(last_use_is_stale)


@cache
def _user_fields() -> tuple[Field[Any, Any], ...]:
    return tuple(get_user_model()._meta.concrete_fields)


@cache
def _user_columns() -> tuple[list[str], list[tuple[int, Callable[[Any], Any]]]]:
    """The user's attribute names in _owner_sql's order, and the value converters the ORM
    would apply to each column (a field's ``from_db_value``, the backend's own), by position."""
    converters: list[tuple[int, Callable[[Any], Any]]] = []
    for index, field in enumerate(_user_fields()):
        column = field.cached_col
        steps = connection.ops.get_db_converters(column) + column.get_db_converters(connection)
        if steps:
            converters.append((index, partial(_convert, steps, column)))
    return [field.attname for field in _user_fields()], converters


def _convert(steps: list[Callable[..., Any]], column: Col, value: Any) -> Any:
    for step in steps:
        value = step(value, column, connection)
    return value


@cache
def _owner_sql() -> str:
    quote = connection.ops.quote_name
    users = get_user_model()._meta
    user_columns = ", ".join(f"u.{quote(field.column)}" for field in _user_fields())

    def token(name: str) -> str:
        return "t." + quote(statements.concrete_field(ApiToken, name).column)

    return (
        f"SELECT {user_columns}, {token('id')}, "
        f"({token('last_used_at')} IS NULL OR {token('last_used_at')} < %s) "
        f"FROM {quote(ApiToken._meta.db_table)} t "
        f"INNER JOIN {quote(users.db_table)} u ON u.{quote(users.pk.column)} = {token('owner')} "
        f"WHERE {token('digest')} = %s AND {token('revoked_at')} IS NULL"
    )


@cache
def _last_used_sql() -> str:
    return sql.update_sql(ApiToken, ("last_used_at",), ("id",))


def api_tokens_revoke(*, tokens: QuerySet[ApiToken]) -> int:
    """Revoke those of ``tokens`` still live (they stop working at once); how many were."""
    return tokens.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
