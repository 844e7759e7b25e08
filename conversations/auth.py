"""Who is calling an API endpoint: a bearer token, else the browser session."""

from __future__ import annotations

from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import CsrfViewMiddleware

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


def carries_session_credentials(request: HttpRequest) -> bool:
    """Whether the browser session is what would authenticate this API request: it has a
    session cookie and no Authorization (with Authorization it never falls back to the session).
    Only such a request needs CSRF protection: any other carries no ambient credentials (with
    no session cookie it gets 401, not a CSRF failure)."""
    return bearer_token(request) is None and settings.SESSION_COOKIE_NAME in request.COOKIES


def csrf_rejection(request: HttpRequest) -> HttpResponse | None:
    """Django's CSRF check of an unsafe request (what CsrfViewMiddleware does for a view that
    is not exempt), or None when it passes: the response of CSRF_FAILURE_VIEW otherwise."""
    return _CSRF.process_view(request, _no_view, (), {})


async def acsrf_rejection(request: HttpRequest) -> HttpResponse | None:
    """csrf_rejection in a thread, as Django runs a middleware's ``process_view`` under ASGI;
    on the fast path inline unless it may read the session (CSRF_USE_SESSIONS) or parse a
    multipart body (otherwise it reads a cookie and a header or a form field: no I/O), as
    ``chatsite.middleware.CsrfViewMiddleware`` decides."""
    if (
        not settings.CHAT_FAST_PATH
        or settings.CSRF_USE_SESSIONS
        or request.content_type == "multipart/form-data"
    ):
        return await sync_to_async(csrf_rejection)(request)
    return csrf_rejection(request)


def _no_view(request: HttpRequest) -> HttpResponse:
    raise AssertionError("only CsrfViewMiddleware.process_view is called")


_CSRF = CsrfViewMiddleware(_no_view)


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
