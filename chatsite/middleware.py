"""Project-wide response headers."""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.utils.decorators import sync_and_async_middleware


@sync_and_async_middleware
def content_security_policy_middleware(get_response):
    """Send CONTENT_SECURITY_POLICY (no inline script) unless the response set its own."""
    policy = settings.CONTENT_SECURITY_POLICY

    if iscoroutinefunction(get_response):

        async def middleware(request):
            response = await get_response(request)
            response.headers.setdefault("Content-Security-Policy", policy)
            return response

    else:

        def middleware(request):
            response = get_response(request)
            response.headers.setdefault("Content-Security-Policy", policy)
            return response

    return middleware
