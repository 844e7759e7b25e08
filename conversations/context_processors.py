from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def site(request: HttpRequest) -> dict[str, bool]:
    return {"signup_enabled": settings.CHAT_SIGNUP_ENABLED}
