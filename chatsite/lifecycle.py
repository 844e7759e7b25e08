"""What a request leaves for the moment it has been handled to the end, and what the process
does when it starts serving and when it is told to stop.

Django's ASGI handler drops a response that the client left before it was sent (a disconnect
while a middleware or the first ``send`` is awaited): its body is never iterated, so an async
generator's ``finally`` never runs. ``chatsite.asgi`` runs what was registered here once the
request has been handled, whether its response was sent, dropped or failed; not when handling
itself is cancelled (a server shutting down), which each reply handles on its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from django.http import HttpRequest

    from chatsite.asgi import RequestThread

logger = logging.getLogger(__name__)

AfterRequest = Callable[[], Awaitable[None]]


@dataclass
class Handling:
    """One request being handled: on the fast path its thread for thread-sensitive work (a
    ``chatsite.asgi.RequestThread``), the request objects created and their body files; in
    both modes the work left for its end."""

    thread: RequestThread | None = None
    requests: list[HttpRequest] = field(default_factory=list)
    body_files: list[IO[bytes]] = field(default_factory=list)
    after: list[AfterRequest] = field(default_factory=list)

    def let_go_of_requests(self) -> None:
        """Once a streaming response's head is sent: empty the request objects but for what
        their ``close`` uses (ASGIRequest's ``_stream``), and close the body files, freeing
        their buffers (Django closes them again at the end, which does nothing)."""
        for body_file in self.body_files:
            body_file.close()
        for request in self.requests:
            kept = request.__dict__.get("_stream")
            request.__dict__.clear()
            if kept is not None:
                request.__dict__["_stream"] = kept
        self.body_files = []

    async def arun_after(self) -> None:
        """Run the work left for the end (once: the tasks a request started keep its context,
        and so this object, alive after it)."""
        callbacks, self.after = self.after, []
        for callback in callbacks:
            try:
                await callback()
            except Exception:
                logger.exception("the end of a request could not be handled")


CURRENT: contextvars.ContextVar[Handling] = contextvars.ContextVar("handling")


def run_after_request(callback: AfterRequest) -> bool:
    """Await ``callback`` once this request has been handled (and True). Outside
    ``chatsite.asgi``'s applications (Django's test client, which consumes every response it
    is given) this does nothing (and False)."""
    handling = CURRENT.get(None)
    if handling is None:
        return False
    handling.after.append(callback)
    return True


AtShutdown = Callable[[], Awaitable[None]]
_AT_SHUTDOWN: list[AtShutdown] = []
AtStartup = Callable[[], Awaitable[None]]
_AT_STARTUP: list[tuple[AtStartup, str]] = []
STARTUP_SECONDS = 5.0
"""How long each startup callback may take before the process serves without it."""


def run_at_startup(callback: AtStartup, *, purpose: str) -> None:
    """Await ``callback`` before the server sends this process its first request (ASGI
    lifespan startup), for at most STARTUP_SECONDS. It is preparation, not a precondition: if
    it fails or takes longer, one warning names ``purpose`` and the kind of failure (an
    outage is not a bug: no traceback, no error text, which may hold an address) and the
    process serves anyway (``/readyz`` tells whether the database and Redis answer)."""
    _AT_STARTUP.append((callback, purpose))


async def arun_startup() -> None:
    for callback, purpose in _AT_STARTUP:
        try:
            async with asyncio.timeout(STARTUP_SECONDS):
                await callback()
        except Exception as error:
            logger.warning(
                "could not %s before serving (%s); serving anyway", purpose, type(error).__name__
            )


def run_at_shutdown(callback: AtShutdown) -> None:
    """Await ``callback`` when the server stops this process (ASGI lifespan shutdown: after
    uvicorn's graceful-shutdown timeout has cancelled the requests still open)."""
    _AT_SHUTDOWN.append(callback)


async def arun_shutdown() -> None:
    for callback in _AT_SHUTDOWN:
        try:
            await callback()
        except Exception:
            logger.exception("shutting down failed")
