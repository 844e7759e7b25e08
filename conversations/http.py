"""Decorators and handlers that give every ``/api/`` failure the JSON error shape."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt

from chatsite import metrics

from .auth import acsrf_rejection, api_auser, carries_session_credentials
from .errors import (
    ApiError,
    Busy,
    Conflict,
    DomainError,
    Invalid,
    Mismatch,
    NotFound,
    Unavailable,
    api_error_response,
    error_response,
)
from .limits import RequestWindow, Slot, request_count, request_count_and_slot

logger = logging.getLogger(__name__)

AsyncView = Callable[..., Coroutine[Any, Any, HttpResponseBase]]


class ApiRequest(HttpRequest):
    """For type hints only: the request an ``api_view`` hands its view (Django's own request,
    with the caller set as ``api_user`` and, for a view that takes stream slots, the one taken
    ahead as ``stream_slot``)."""

    api_user: User
    stream_slot: Slot | None


class AuthenticatedRequest(HttpRequest):
    """For type hints only: the request of a ``login_required`` view (its user signed in)."""

    user: User


def api_view(
    *methods: str, starts_a_reply: Callable[[HttpRequest], bool] | None = None
) -> Callable[[AsyncView], AsyncView]:
    """An API endpoint: CSRF-checked only when the browser session authenticates it (403),
    only ``methods`` (405), an authenticated caller (401) within the rate limit (429, and
    ``RateLimit-*`` headers on every answer), set as ``request.api_user``; any ApiError becomes
    its JSON response.

    For a request that ``starts_a_reply`` says will start one, one of the caller's stream
    slots is taken as it is counted, if one is free (``request_count_and_slot``), and handed
    to the view as ``request.stream_slot``; given back after the view unless a reply claimed
    it.

    The view is ``csrf_exempt`` for CsrfViewMiddleware and checks CSRF itself, first, with
    Django's own check, and only for a request that carries the session's ambient credentials:
    one with an API token, or with no session cookie at all, cannot be forged that way."""

    def decorator(view: AsyncView) -> AsyncView:
        @csrf_exempt
        @functools.wraps(view)
        async def wrapper(request: ApiRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if carries_session_credentials(request):
                rejected = await acsrf_rejection(request)
                if rejected is not None:
                    return rejected
            if request.method not in methods:
                return error_response(
                    405,
                    "method_not_allowed",
                    f"Use {' or '.join(methods)}.",
                    headers={"Allow": ", ".join(methods)},
                )
            window = None
            request.stream_slot = None
            try:
                try:
                    request.api_user = await api_auser(request)
                except ApiError:
                    window = await request_count(request, None)
                    raise_if_exceeded(window)
                    raise
                if starts_a_reply is not None and starts_a_reply(request):
                    window, request.stream_slot = await request_count_and_slot(
                        request, request.api_user
                    )
                else:
                    window = await request_count(request, request.api_user)
                raise_if_exceeded(window)
                response = await view(request, *args, **kwargs)
            except DomainError as error:
                response = api_error_failure(as_api_error(error))
            except ApiError as error:
                response = api_error_failure(error)
            finally:
                slot = request.stream_slot
                if slot is not None and not slot.claimed:
                    await slot.release()
            if window is not None:
                for name, value in rate_limit_headers(window).items():
                    response.headers.setdefault(name, value)
            return response

        # Read by the OpenAPI test; set through __dict__, as a function has no declared
        # attributes for the type checker.
        wrapper.__dict__["allowed_methods"] = methods
        return wrapper

    return decorator


STATUSES: dict[type[DomainError], int] = {
    Invalid: 400,
    NotFound: 404,
    Conflict: 409,
    Mismatch: 422,
    Busy: 429,
    Unavailable: 503,
}


def as_api_error(error: DomainError) -> ApiError:
    """A domain error as the API says it: the status its kind calls for, Retry-After when
    trying again later may work."""
    status = next(code for kind, code in STATUSES.items() if isinstance(error, kind))
    headers = {} if error.retry_after is None else {"Retry-After": str(error.retry_after)}
    return ApiError(status, error.code, error.message, headers=headers, details=error.details)


REFUSALS = frozenset({429, 503})
"""Statuses counted in the metrics as refusals (a limit, a service out of reach)."""


def api_error_failure(error: ApiError) -> HttpResponse:
    """The error's response; a refusal is counted by its code."""
    if error.status in REFUSALS:
        metrics.request_refused(status=error.status, reason=error.code)
    return api_error_response(error)


def rate_limit_headers(window: RequestWindow) -> dict[str, str]:
    """The IETF RateLimit header fields: where the caller stands in its window."""
    return {
        "RateLimit-Limit": str(window.limit),
        "RateLimit-Remaining": str(window.remaining),
        "RateLimit-Reset": str(window.reset),
    }


def raise_if_exceeded(window: RequestWindow) -> None:
    if window.exceeded:
        raise ApiError(
            429,
            "rate_limited",
            f"Too many requests: the limit is {settings.CHAT_RATE_LIMIT}. "
            f"Try again in {window.reset} s.",
            headers={"Retry-After": str(window.reset)},
        )


def is_api_path(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")
