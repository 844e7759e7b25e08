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
    last_use_is_stale = owner.__dict__.pop("api_token_stale")
    if not owner.is_active:
        return None
    if last_use_is_stale:
        statements.update_rows(ApiToken, {"last_used_at": now}, {"id": token_id})
    return owner


@cache
def _owner_sql() -> str:
    quote = connection.ops.quote_name
    users = get_user_model()._meta

    def token(name: str) -> str:
        return "t." + quote(ApiToken._meta.get_field(name).column)

    return (
        f"SELECT u.*, {token('id')} AS api_token_id, "
        f"({token('last_used_at')} IS NULL OR {token('last_used_at')} < %s) AS api_token_stale "
        f"FROM {quote(ApiToken._meta.db_table)} t "
        f"INNER JOIN {quote(users.db_table)} u ON u.{quote(users.pk.column)} = {token('owner')} "
        f"WHERE {token('digest')} = %s AND {token('revoked_at')} IS NULL"
    )


def api_token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
