"""ASGI entry point: ``uvicorn chatsite.asgi:application``."""

import contextvars
import gc
import os

import django
from django.core.handlers.asgi import ASGIHandler
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")


CREATED_REQUESTS: contextvars.ContextVar[list] = contextvars.ContextVar("created_requests")


class ChatASGIHandler(ASGIHandler):
    """Django's handler, minus the reference cycles it leaves behind for every request.

    A request's objects point at each other (its message storage, its lazy user and its
    ``auser`` all hold the request), so none of them is freed when the request ends: they
    pile up until a full garbage collection, whose pause stalls every open stream, and they
    make that pause longer. Emptying the request when it is done lets them go at once.
    """

    async def handle(self, scope, receive, send):
        created = []
        reset = CREATED_REQUESTS.set(created)
        try:
            await super().handle(scope, receive, send)
        finally:
            CREATED_REQUESTS.reset(reset)
            for request in created:
                request.__dict__.clear()

    def create_request(self, scope, body_file):
        request, error_response = super().create_request(scope, body_file)
        if request is not None:
            CREATED_REQUESTS.get([]).append(request)
        return request, error_response

    async def listen_for_disconnect(self, receive):
        """Return, not raise, when the client goes: the handler treats both the same, but
        the raised exception's traceback ties the handler's frame, and with it the whole
        request, into a reference cycle that only a full garbage collection frees."""
        message = await receive()
        if message["type"] != "http.disconnect":
            raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")


django.setup(set_prefix=False)
application = ChatASGIHandler()


def freeze_what_startup_loaded() -> None:
    """Load every view (the provider and the limits were built by the app's ready()), then
    move all those long-lived objects out of the garbage collector's sight: otherwise each
    full collection walks them all, a pause of 100-200 ms under load that stalls every open
    stream at once."""
    get_resolver().url_patterns  # noqa: B018
    gc.freeze()


freeze_what_startup_loaded()
