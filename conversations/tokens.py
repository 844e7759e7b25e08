"""API tokens: create one (shown once), authenticate a bearer, revoke."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from functools import cache

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.utils import timezone

from . import statements
from .models import ApiToken

TOKEN_PREFIX = "cst_"
LAST_USED_RESOLUTION = timedelta(minutes=1)


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_token_create(*, owner: AbstractBaseUser, name: str = "") -> tuple[ApiToken, str]:
    """A new token; the raw value is returned here once and never stored."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken.objects.create(
        owner=owner, name=name, prefix=raw[: len(TOKEN_PREFIX) + 6], digest=token_digest(raw)
    )
    return token, raw


def api_token_authenticate(raw: str) -> AbstractBaseUser | None:
    """The active owner of a live token, or None; last use is recorded at most once a minute.

    One hand-written query, as the ORM's compilation of it cost more than the query itself.
    """
    now = timezone.now()
    stale_before = connection.ops.adapt_datetimefield_value(now - LAST_USED_RESOLUTION)
    owners = get_user_model().objects.raw(_owner_sql(), [stale_before, token_digest(raw)])
    owner = next(iter(owners), None)
    if owner is None:
        return None
    token_id = owner.__dict__.pop("api_token_id")
    if owner.__dict__.pop("api_token_stale") and owner.is_active:
        statements.update_rows(ApiToken, {"last_used_at": now}, {"id": token_id})
    return owner if owner.is_active else None


@cache
def _owner_sql() -> str:
    quote = connection.ops.quote_name
    users, tokens = get_user_model()._meta, ApiToken._meta
    return (
        f"SELECT u.*, t.{quote('id')} AS api_token_id, "
        f"(t.{quote('last_used_at')} IS NULL OR t.{quote('last_used_at')} < %s) "
        "AS api_token_stale "
        f"FROM {quote(tokens.db_table)} t "
        f"INNER JOIN {quote(users.db_table)} u "
        f"ON u.{quote(users.pk.column)} = t.{quote('owner_id')} "
        f"WHERE t.{quote('digest')} = %s AND t.{quote('revoked_at')} IS NULL"
    )


def api_token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
