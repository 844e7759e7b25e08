"""API tokens: create one (shown once), authenticate a bearer, revoke."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

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


async def api_token_aauthenticate(raw: str) -> AbstractBaseUser | None:
    """The active owner of a live token, or None; last use is recorded at most once a minute."""
    try:
        token = await ApiToken.objects.select_related("owner").aget(digest=token_digest(raw))
    except ApiToken.DoesNotExist:
        return None
    if token.revoked_at is not None or not token.owner.is_active:
        return None
    now = timezone.now()
    if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
        await ApiToken.objects.filter(pk=token.pk).aupdate(last_used_at=now)
    return token.owner


def api_token_revoke(*, token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
