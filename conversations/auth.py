"""Who is calling an API endpoint: a bearer token, else the browser session."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest
from django.utils.decorators import sync_and_async_middleware

from .errors import ApiError
from .tokens import api_token_aauthenticate

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="api"'}


def not_authenticated(
    message: str = "Sign in or send an API token to use this endpoint.",
) -> ApiError:
    return ApiError(401, "not_authenticated", message, headers=CHALLENGE)


def bearer_token(request: HttpRequest) -> str | None:
    """The token of an ``Authorization: Bearer`` header; '' for any other Authorization."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def api_auser(request: HttpRequest) -> AbstractBaseUser:
    """The caller, or ApiError(401). A request with Authorization never falls back to the session,
    which is what makes exempting such requests from CSRF safe."""
    token = bearer_token(request)
    if token is None:
        return await _session_auser(request)
    user = await api_token_aauthenticate(token) if token else None
    if user is None:
        raise ApiError(
            401,
            "invalid_token",
            "The API token is missing, malformed, revoked or unknown.",
            headers={"WWW-Authenticate": 'Bearer realm="api", error="invalid_token"'},
        )
    return user


@sync_to_async
def _session_auser(request: HttpRequest) -> AbstractBaseUser:
    if not request.user.is_authenticated:
        raise not_authenticated()
    return request.user


def exempt_token_requests_from_csrf(request: HttpRequest) -> None:
    if bearer_token(request) is not None and request.path.startswith("/api/"):
        request._dont_enforce_csrf_checks = True


@sync_and_async_middleware
def bearer_csrf_exempt_middleware(get_response):
    """Token requests carry no ambient credentials, so CSRF does not apply to them.

    Goes before CsrfViewMiddleware. Session requests that change state are still checked.
    """
    if iscoroutinefunction(get_response):

        async def middleware(request):
            exempt_token_requests_from_csrf(request)
            return await get_response(request)

    else:

        def middleware(request):
            exempt_token_requests_from_csrf(request)
            return get_response(request)

    return middleware
