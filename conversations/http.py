"""Decorators and handlers that give every ``/api/`` failure the JSON error shape."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

from django.http import HttpRequest, HttpResponse

from .errors import ApiError, api_error_response, error_response

logger = logging.getLogger(__name__)

AsyncView = Callable[..., Awaitable[HttpResponse]]


def api_view(*methods: str) -> Callable[[AsyncView], AsyncView]:
    """Allow only ``methods`` (405 JSON otherwise) and turn ApiError into its JSON response."""

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
            try:
                return await view(request, *args, **kwargs)
            except ApiError as error:
                return api_error_response(error)

        return wrapper

    return decorator


def is_api_path(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")
