"""Who is calling an API endpoint."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest

from .errors import ApiError


def not_authenticated() -> ApiError:
    return ApiError(
        401,
        "not_authenticated",
        "Sign in or send an API token to use this endpoint.",
        headers={"WWW-Authenticate": 'Bearer realm="api"'},
    )


async def api_auser(request: HttpRequest) -> AbstractBaseUser:
    """The signed-in user, or ApiError(401)."""
    user = await request.auser()
    if not user.is_authenticated:
        raise not_authenticated()
    return user
