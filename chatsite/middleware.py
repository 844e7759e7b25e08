"""Project-wide response headers."""

from __future__ import annotations

from django.conf import settings
from django.utils.deprecation import MiddlewareMixin


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """Send CONTENT_SECURITY_POLICY (no inline script) unless the response set its own."""

    def process_response(self, request, response):
        response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response
