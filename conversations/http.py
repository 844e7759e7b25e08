"""Decorators and handlers that give every ``/api/`` failure the JSON error shape."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from django.http import HttpRequest, HttpResponse

from .auth import api_auser
from .errors import ApiError, api_error_response, error_response
from .limits import enforce_rate_limit

logger = logging.getLogger(__name__)

AsyncView = Callable[..., Awaitable[HttpResponse]]


def api_view(*methods: str) -> Callable[[AsyncView], AsyncView]:
    """An API endpoint: only ``methods`` (405), an authenticated caller (401) within the rate
    limit (429, and ``RateLimit-*`` headers on every answer), set as ``request.api_user``; any
    ApiError becomes its JSON response."""

    def decorator(view: AsyncView) -> AsyncView:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if request.method not in methods:
                return error_response(
                    405,
                    "method_not_allowed",
                    f"Use {' or '.join(methods)}.",
                    headers={"Allow": ", ".join(methods)},
                )
            limit_headers: dict[str, str] = {}
            try:
                try:
                    request.api_user = await api_auser(request)
                except ApiError:
                    limit_headers = await enforce_rate_limit(request, None)
                    raise
                limit_headers = await enforce_rate_limit(request, request.api_user)
                response = await view(request, *args, **kwargs)
            except ApiError as error:
                response = api_error_response(error)
            for name, value in limit_headers.items():
                response.headers.setdefault(name, value)
            return response

        wrapper.allowed_methods = methods
        return wrapper

    return decorator


def is_api_path(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")
