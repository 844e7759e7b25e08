"""ASGI entry point: ``uvicorn chatsite.asgi:application``.

CHAT_FAST_PATH=1 (the default): ``ChatASGIHandler``, Django's handler with its undocumented
methods overridden (docs/internals.md). CHAT_FAST_PATH=0: ``StockApplication``, Django's own
``get_asgi_application()`` with the site's additions made through the ASGI interface only.
Both serve lifespan (the replies running at shutdown are saved), refuse a body over
CHAT_MAX_BODY_BYTES with 413 before it is read, and run what a request left for its end.
"""

import asyncio
import contextlib
import gc
import io
import logging
import os
import tempfile
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import aclosing
from typing import IO, Any, ParamSpec, TypeVar, cast

import django
from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.asgi import get_asgi_application
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, ASGIRequest
from django.db import close_old_connections, connections, reset_queries
from django.db.backends.base.base import BaseDatabaseWrapper
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase, ResponseHeaders
from django.urls import get_resolver

from chatsite.lifecycle import CURRENT, Handling, arun_shutdown, arun_startup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
_P = ParamSpec("_P")
_T = TypeVar("_T")
logger = logging.getLogger(__name__)


class RequestThreads:
    """The threads requests run their thread-sensitive work on (the ORM, Django's signals), one
    request at a time each, as Django arranges it, but kept for later requests: asgiref would
    otherwise start a thread for every request, and another one to join it when it ends."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self.lent = 0
        self._idle: list[ThreadPoolExecutor] = []

    def take(self) -> ThreadPoolExecutor:
        self.lent += 1
        if self._idle:
            return self._idle.pop()
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")

    def give_back(self, executor: ThreadPoolExecutor) -> None:
        self.lent -= 1
        if len(self._idle) < self.keep:
            self._idle.append(executor)
        else:
            executor.shutdown(wait=False)


class RequestThread(Executor):
    """Where one request's thread-sensitive calls run: one thread at a time, taken from
    ``RequestThreads`` at a call and given back as soon as the request holds nothing tied to
    it: after each call that leaves no database connection open on it (the ORM's work here
    hands its connections back to the pool), or else when its streaming body starts or the
    request ends. Between two calls a request waiting on the loop (Redis, the upstream, a
    client) holds no thread, so a worker taking many requests at once runs their setups on
    a few threads instead of one each.

    asgiref asks of an executor given to ThreadSensitiveContext that it run one call at a time
    on one thread; this one does, and changes thread only between calls, when nothing tied to
    the thread (a database connection, a transaction) is left on it."""

    __slots__ = ("_threads", "_executor", "_calls", "_clean", "_loop")

    def __init__(self, threads: RequestThreads) -> None:
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._calls = 0
        self._clean = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        if self._executor is None:
            self._executor = self._threads.take()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._calls += 1
        future = self._executor.submit(self._run, fn, *args, **kwargs)
        # Added before asyncio's own callback (run_in_executor wraps the future after this
        # returns), so ``_call_done`` runs on the loop before the caller resumes.
        future.add_done_callback(self._report)
        return future

    def _run(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return fn(*args, **kwargs)
        finally:
            self._clean = not holds_a_connection()

    def _report(self, future: Future[Any]) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._call_done)

    def _call_done(self) -> None:
        self._calls -= 1
        if self._clean:
            self.release()

    @property
    def holds_a_thread(self) -> bool:
        return self._executor is not None

    def release(self) -> None:
        """Give the thread back now, unless a call is running on it."""
        if not self._calls:
            self.give_back()

    def give_back(self) -> None:
        """At the request's end: the thread goes back, even with a call of a task the request
        left behind still queued on it (it runs before the next request's)."""
        if self._executor is not None:
            self._threads.give_back(self._executor)
            self._executor = None


REQUEST_STARTED_RECEIVERS = (reset_queries, close_old_connections)
"""Django's own receivers of ``request_started`` (connected in ``django.db``)."""


@contextlib.contextmanager
def request_started_unheard() -> Iterator[None]:
    """While the worker serves (its ASGI lifespan), Django's own ``request_started`` receivers
    are disconnected (not with DEBUG on), and connected again after.

    Both are synchronous, so ``Signal.asend`` ran them in the request's thread, a hop there
    and back before every view (0.4 ms of the time to first token at steady 50, measured
    with ``python -m bench.probe steady``); a signal with no receivers returns at once.
    Neither has anything to do here: ``close_old_connections`` closes the obsolete connections
    of the thread the request's ORM work runs on, and that thread comes from RequestThreads,
    whose threads hold none (CONN_MAX_AGE is 0, so ``request_finished`` closed every
    connection of the request before; a call that outlives its request and opens one leaves
    it to the next request, which uses it and closes it at its end);
    ``reset_queries`` empties the query log, which only DEBUG fills. Other receivers of
    ``request_started`` are left connected. ``tests/test_asgi.py`` checks the threads hold no
    connection and that a serving worker's signal has no receivers; with CHAT_FAST_PATH=0 the
    stock application keeps Django's."""
    if settings.DEBUG:
        yield
        return
    unheard = [
        receiver
        for receiver in REQUEST_STARTED_RECEIVERS
        if signals.request_started.disconnect(receiver)
    ]
    try:
        yield
    finally:
        for receiver in unheard:
            signals.request_started.connect(receiver)


def holds_a_connection() -> bool:
    """Whether this thread has a database connection open (or a transaction begun)."""
    return any(
        c.connection is not None or c.in_atomic_block
        for c in connections.all(initialized_only=True)
    )


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

    A streaming response holds neither a thread nor a database connection while it streams
    (``send_response``, also Django's own undocumented method, shape-checked there too):
    Django would keep the request's thread until the end of the request, so each open stream
    cost a thread's memory (a cold worker's first 200 streams started 213 threads).
    """

    def __init__(self) -> None:
        super().__init__()
        self.threads = RequestThreads()
        self.max_body_bytes = settings.CHAT_MAX_BODY_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            with request_started_unheard():
                await lifespan(receive, send)
            return
        await super().__call__(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if declared_length(scope) > self.max_body_bytes:
            await self.send_response(body_too_large(scope, self.max_body_bytes), send)
            return
        thread = RequestThread(self.threads)
        handling = Handling(thread=thread)
        reset = CURRENT.set(handling)
        try:
            async with ThreadSensitiveContext(executor=thread):
                await super().handle(scope, receive, send)
        except BodyTooLarge:
            await self.send_response(body_too_large(scope, self.max_body_bytes), send)
        finally:
            thread.give_back()
            CURRENT.reset(reset)
        await handling.arun_after()
        requests, handling.requests = handling.requests, []
        for request in requests:
            request.__dict__.clear()

    async def read_body(self, receive: Receive) -> IO[bytes]:
        """Django's read_body, refusing a body (chunked, or longer than it said) as soon as it
        passes CHAT_MAX_BODY_BYTES, before more of it is read or stored. A body that fits in
        one message (every body this site takes) is kept in a plain in-memory file, as
        Django's spooled file would keep it, without the spooled file's wrapper."""
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        first = message.get("body", b"")
        if len(first) > self.max_body_bytes:
            raise BodyTooLarge()
        if not message.get("more_body", False):
            return remember_body(io.BytesIO(first))
        body_file = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - returned open, as Django does
            max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b"
        )
        body_file.write(first)
        received = len(first)
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
        return remember_body(body_file)

    async def send_response(self, response: HttpResponseBase, send: Send) -> None:
        """Django's send_response; a streaming response is sent here, with the same messages
        (``tests/test_asgi.py`` compares them), holding less while it streams:

        - before its head, the request's database connections go back to the pool and its
          thread to the others (not while a transaction is open, nor while a call still runs
          on the thread; a later call, the response's close at the end, takes a thread again);
        - after its head, the encoded head, the response's headers and the request's objects
          are let go (a streaming body here never reads its request: its view took what it
          needed), and the request body's buffer is closed. The request keeps only what its
          ``close`` at the end uses."""
        handling = CURRENT.get(None)
        if not isinstance(response, StreamingHttpResponse) or handling is None:
            await super().send_response(response, send)
            return
        thread = handling.thread
        if thread is not None and thread.holds_a_thread:
            opened = [c for c in connections.all(initialized_only=True) if c.connection is not None]
            if not any(c.in_atomic_block for c in opened):
                if opened:
                    await sync_to_async(close_connections)(opened)
                thread.release()
        await send(
            {
                "type": "http.response.start",
                "status": response.status_code,
                "headers": encoded_head(response),
            }
        )
        forget_head(response)
        handling.let_go_of_requests()
        # StreamingHttpResponse.__aiter__ is an async generator (typed as an iterator).
        parts = cast(AsyncGenerator[bytes, None], aiter(response))
        async with aclosing(parts) as content:
            async for part in content:
                for chunk, _ in self.chunk_bytes(part):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body"})

    def create_request(
        self, scope: Mapping[str, Any], body_file: IO[bytes]
    ) -> tuple[ASGIRequest, None] | tuple[None, HttpResponseBase]:
        created = super().create_request(scope, body_file)
        if created[0] is not None:
            CURRENT.get().requests.append(created[0])
        return created

    async def listen_for_disconnect(self, receive: Receive) -> None:
        """Return, not raise, when the client goes: the handler treats both the same, but
        the raised exception's traceback ties the handler's frame, and with it the whole
        request, into a reference cycle that only a full garbage collection frees."""
        message = await receive()
        if message["type"] != "http.disconnect":
            raise AssertionError(f"Invalid ASGI message after request body: {message['type']}")


class StockApplication:
    """Django's own ASGI application (``get_asgi_application()``) and what the site adds to
    it, through the ASGI interface only: lifespan, the body cap (413), the work a request left
    for its end (``chatsite.lifecycle``), and the request's database connections handed back
    once its response streams (Django would keep them until the stream ends; a pool of 20
    would then hold 20 open streams at most)."""

    def __init__(self) -> None:
        self.django = get_asgi_application()
        self.max_body_bytes = settings.CHAT_MAX_BODY_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            await self.django(scope, receive, send)
            return
        if declared_length(scope) > self.max_body_bytes:
            await send_plain(body_too_large(scope, self.max_body_bytes), send)
            return
        handling = Handling()
        reset = CURRENT.set(handling)
        try:
            await self.django(scope, self.counting(receive), releasing_connections(send))
        except BodyTooLarge:
            await send_plain(body_too_large(scope, self.max_body_bytes), send)
        finally:
            CURRENT.reset(reset)
        await handling.arun_after()

    def counting(self, receive: Receive) -> Receive:
        """``receive``, raising BodyTooLarge (out of Django's handler) as soon as the body
        read so far passes CHAT_MAX_BODY_BYTES."""
        received = 0

        async def counted() -> Mapping[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise BodyTooLarge()
            return message

        return counted


def releasing_connections(send: Send) -> Send:
    """``send``, handing the request's database connections back before the first part of a
    body that comes in parts (a stream), as Django does when a request ends: with
    ``close_old_connections``, on the request's thread (``sync_to_async`` in its context)."""
    released = False

    async def sending(message: Mapping[str, Any]) -> None:
        nonlocal released
        if not released and message.get("more_body") and message["type"] == "http.response.body":
            released = True
            await sync_to_async(close_old_connections)()
        await send(message)

    return sending


async def send_plain(response: HttpResponse, send: Send) -> None:
    """A complete, non-streaming response sent straight over ASGI."""
    headers = [
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()
    ]
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})


async def lifespan(receive: Receive, send: Send) -> None:
    """ASGI lifespan, which Django's handler refuses: at startup, what
    ``chatsite.lifecycle.run_at_startup`` registered (the connections every request needs are
    opened); at shutdown, what ``chatsite.lifecycle.run_at_shutdown`` registered (the replies
    still running are saved ``interrupted``). uvicorn sends the shutdown once the
    graceful-shutdown timeout has passed, and then exits at once, before any task it leaves
    behind could save anything."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await arun_startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await arun_shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return


def close_connections(opened: list[BaseDatabaseWrapper]) -> None:
    """Close the request's database connections, on the thread that opened them."""
    for connection in opened:
        connection.close()


def encoded_head(response: HttpResponseBase) -> list[tuple[bytes, bytes]]:
    """The response's header fields and cookies as Django's send_response encodes them."""
    head = []
    for name, value in response.items():
        encoded_name = name.encode("ascii") if isinstance(name, str) else name
        encoded_value = value.encode("latin1") if isinstance(value, str) else value
        head.append((bytes(encoded_name), bytes(encoded_value)))
    for cookie in response.cookies.values():
        head.append((b"Set-Cookie", cookie.output(header="").encode("ascii").strip()))
    return head


def forget_head(response: HttpResponseBase) -> None:
    """Drop a sent response's header fields and cookies: a new, empty ``headers`` mapping
    (deleting each field would leave the old one's table allocated)."""
    response.headers = ResponseHeaders({})
    response.cookies.clear()


def remember_body(body_file: IO[bytes]) -> IO[bytes]:
    """Note the request's body file, closed (its buffer freed) once a streaming body starts."""
    handling = CURRENT.get(None)
    if handling is not None:
        handling.body_files.append(body_file)
    return body_file


class BodyTooLarge(Exception):
    """A request body passed CHAT_MAX_BODY_BYTES while it was read."""


def declared_length(scope: Mapping[str, Any]) -> int:
    """The request's Content-Length, or 0 (none, or not a number: the body is counted as read)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def body_too_large(scope: Mapping[str, Any], max_bytes: int) -> HttpResponse:
    """413, before any middleware or view: JSON on the API, plain text elsewhere. The
    connection is closed, so the rest of the body is never read."""
    message = f"The request body is larger than {max_bytes} bytes."
    response: HttpResponse
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
application: ChatASGIHandler | StockApplication
if settings.CHAT_FAST_PATH:
    application = ChatASGIHandler()
else:
    application = StockApplication()
    logger.info(
        "CHAT_FAST_PATH=0: serving on Django's stock handler, middlewares and ORM statements"
    )


def freeze_what_startup_loaded() -> None:
    """Load every view (the provider and the limits were built by the app's ready()), then
    move all those long-lived objects out of the garbage collector's sight: otherwise each
    full collection walks them all, a pause of 100-200 ms under load that stalls every open
    stream at once."""
    get_resolver().url_patterns  # noqa: B018
    gc.freeze()


if settings.CHAT_FAST_PATH:
    freeze_what_startup_loaded()
