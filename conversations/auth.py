"""Who is calling an API endpoint: a bearer token, else the browser session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest
from django.http.response import HttpResponseBase
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


async def api_auser(request: HttpRequest) -> User:
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
def _session_auser(request: HttpRequest) -> User:
    if not request.user.is_authenticated:
        raise not_authenticated()
    return request.user


def exempt_token_requests_from_csrf(request: HttpRequest) -> None:
    """An API request is exempt from CSRF unless a session cookie is what would authenticate
    it: with Authorization it never falls back to the session, and with no session cookie it
    carries no ambient credentials (it gets 401, not a CSRF failure)."""
    if request.path.startswith("/api/") and (
        bearer_token(request) is not None or settings.SESSION_COOKIE_NAME not in request.COOKIES
    ):
        # Django's private flag, the one its own test client sets; not in the stubs.
        request._dont_enforce_csrf_checks = True  # type: ignore[attr-defined]


def is_same_origin(request: HttpRequest) -> bool:
    """Whether a request can be shown to come from this site's own pages (or from the user
    typing its address): ``Sec-Fetch-Site`` where the browser sends it, else an ``Origin`` or
    ``Referer`` of this site (or of CSRF_TRUSTED_ORIGINS). A request that shows nothing, as
    older browsers send for a cross-site image or script, is not."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source:
        return False
    parts = urlsplit(source)
    origin = f"{parts.scheme}://{parts.netloc}"
    return origin == f"{request.scheme}://{request.get_host()}" or (
        origin in settings.CSRF_TRUSTED_ORIGINS
    )


def require_same_origin_session(request: HttpRequest) -> None:
    """ApiError(403) for a request authenticated by the browser session that does not show it
    comes from this site (a GET is not CSRF-checked, and a GET stream starts a reply)."""
    if bearer_token(request) is None and not is_same_origin(request):
        raise ApiError(
            403,
            "cross_site",
            "A stream opened with the browser session must come from this site's pages; "
            "other clients send an API token.",
        )


def require_staff(user: User) -> None:
    """ApiError(403) unless ``user`` is staff (signed in, or by one of their API tokens)."""
    if not getattr(user, "is_staff", False):
        raise ApiError(403, "staff_only", "Only staff may use this endpoint.")


@sync_and_async_middleware
def bearer_csrf_exempt_middleware(
    get_response: Callable[[HttpRequest], Any],
) -> Callable[[HttpRequest], Any]:
    """Requests without ambient credentials are exempt from CSRF (see
    exempt_token_requests_from_csrf). Goes before CsrfViewMiddleware. Session requests that
    change state are still checked."""
    if iscoroutinefunction(get_response):

        async def amiddleware(request: HttpRequest) -> HttpResponseBase:
            exempt_token_requests_from_csrf(request)
            response: HttpResponseBase = await get_response(request)
            return response

        return amiddleware

    def middleware(request: HttpRequest) -> HttpResponseBase:
        exempt_token_requests_from_csrf(request)
        response: HttpResponseBase = get_response(request)
        return response

    return middleware
