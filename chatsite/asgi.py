"""ASGI entry point: ``uvicorn chatsite.asgi:application``."""

import gc
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor

import django
from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpResponse, JsonResponse
from django.urls import get_resolver

from chatsite.lifecycle import CURRENT, Handling

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")


class RequestThreads:
    """One thread per request for its thread-sensitive work (the ORM, Django's signals), as
    Django arranges it, but kept for later requests: asgiref would otherwise start a thread for
    every request, and another one to join it when the request ends."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._idle: list[ThreadPoolExecutor] = []

    def take(self) -> ThreadPoolExecutor:
        if self._idle:
            return self._idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        if len(self._idle) < self.keep:
            self._idle.append(executor)
        else:
            executor.shutdown(wait=False)


class ChatASGIHandler(ASGIHandler):
    """Django's handler with reused request threads, the work a request left for its end
    (``chatsite.lifecycle``) done, and minus the reference cycles it leaves behind for every
    request.

    A request's objects point at each other (its message storage, its lazy user and its
    ``auser`` all hold the request), so none of them is freed when the request ends: they
    pile up until a full garbage collection, whose pause stalls every open stream, and they
    make that pause longer. Emptying the request once handled lets them go at once (not
    when handling was cancelled, as at shutdown: Django's own tasks may still hold it).

    A body over CHAT_MAX_BODY_BYTES is refused with 413 before it is read: on its
    Content-Length in ``handle``, or as it arrives in ``read_body`` (Django's own method, not
    documented; ``tests/test_asgi.py`` checks its shape, and without this override Django
    reads the whole body and the view answers 413 after).
    """

    def __init__(self) -> None:
        super().__init__()
        self.threads = RequestThreads()
        self.max_body_bytes = settings.CHAT_MAX_BODY_BYTES

    async def handle(self, scope, receive, send):
        if declared_length(scope) > self.max_body_bytes:
            await self.send_response(body_too_large(scope, self.max_body_bytes), send)
            return
        handling = Handling()
        reset = CURRENT.set(handling)
        executor = self.threads.take()
        try:
            async with ThreadSensitiveContext(executor=executor):
                await super().handle(scope, receive, send)
        except BodyTooLarge:
            await self.send_response(body_too_large(scope, self.max_body_bytes), send)
        finally:
            self.threads.give_back(executor)
            CURRENT.reset(reset)
        await handling.arun_after()
        requests, handling.requests = handling.requests, []
        for request in requests:
            request.__dict__.clear()

    async def read_body(self, receive):
        """Django's read_body, refusing a body (chunked, or longer than it said) as soon as it
        passes CHAT_MAX_BODY_BYTES, before more of it is read or stored."""
        body_file = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - returned open, as Django does
            max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b"
        )
        received = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body_file.close()
                raise RequestAborted()
            if "body" in message:
                received += len(message["body"])
                if received > self.max_body_bytes:
                    body_file.close()
                    raise BodyTooLarge()
                body_file.write(message["body"])
            if not message.get("more_body", False):
                break
        body_file.seek(0)
        return body_file

    def create_request(self, scope, body_file):
        request, error_response = super().create_request(scope, body_file)
        if request is not None:
            CURRENT.get().requests.append(request)
        return request, error_response

    async def listen_for_disconnect(self, receive):
        """Return, not raise, when the client goes: the handler treats both the same, but
        the raised exception's traceback ties the handler's frame, and with it the whole
        request, into a reference cycle that only a full garbage collection frees."""
        message = await receive()
        if message["type"] != "http.disconnect":
            raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")


class BodyTooLarge(Exception):
    """A request body passed CHAT_MAX_BODY_BYTES while it was read."""


def declared_length(scope) -> int:
    """The request's Content-Length, or 0 (none, or not a number: the body is counted as read)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def body_too_large(scope, max_bytes: int) -> HttpResponse:
    """413, before any middleware or view: JSON on the API, plain text elsewhere. The
    connection is closed, so the rest of the body is never read."""
    message = f"The request body is larger than {max_bytes} bytes."
    if scope.get("path", "").startswith("/api/"):
        response = JsonResponse(
            {"error": {"code": "body_too_large", "message": message}}, status=413
        )
    else:
        response = HttpResponse(message, status=413, content_type="text/plain; charset=utf-8")
    response["Content-Length"] = str(len(response.content))
    response["Connection"] = "close"
    return response


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
