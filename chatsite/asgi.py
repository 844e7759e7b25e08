"""ASGI entry point: ``uvicorn chatsite.asgi:application``."""

import gc
import os

from django.core.asgi import get_asgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

application = get_asgi_application()


def freeze_what_startup_loaded() -> None:
    """Load every view and the configured provider, then move all those long-lived objects
    out of the garbage collector's sight: otherwise each full collection walks them all, a
    pause of 100-200 ms under load that stalls every open stream at once."""
    from conversations.providers import get_provider

    get_resolver().url_patterns  # noqa: B018
    get_provider()
    gc.freeze()


freeze_what_startup_loaded()
