"""A cap on the request head for uvicorn's httptools protocol: 431 past ``CHAT_MAX_HEADER_BYTES``.

Why here. uvicorn has no header limit for httptools (only h11 has one, and h11 is much
slower). httptools hands a header to Python only once the whole header has arrived, and
until then grows it with ``bytes +=`` (uvicorn grows the URL the same way): each read copies
everything received so far, so one 60 MB header keeps the event loop busy for seconds and
every other request on the worker waits. Django sees the headers only after all that, so
the handler is too late. The one place that sees header bytes as they come is the
protocol's ``data_received``: this subclass adds up the length of each read while a request
head is open, and past the limit answers ``431 Request Header Fields Too Large`` with
``Connection: close`` and closes the connection; what the client still sends is never read.

Measuring. The request line and the header lines are counted as they arrive, so a head is
cut at most one read (about 256 KB, uvloop's and asyncio's read size) past the limit. A head
that completes within the read that took it over is measured exactly when it completes (URL
and header lengths), and so is one that began in the same read as the end of the request
before it (pipelining), where the read's share of it is unknown; that refusal goes through
uvicorn's parser-error path, which also logs its "Invalid HTTP request received." Per request
the cap is a few attribute updates (under 1 µs, ``bench/protocol_cost.py``); no loop over
bytes, and over headers only in those two cases.

The limit: ``CHAT_MAX_HEADER_BYTES`` (default 65536, 64 KiB, about as generous as common
proxies allow), read from ``os.environ`` once per process, at the first connection (so after
uvicorn has loaded any ``--env-file``; the launcher refuses a malformed value before serving).
It is read here, not from Django's settings: it belongs to the HTTP server, which needs it
before and apart from the application (the bench's peers do not use Django at all).
Production runs behind a proxy that caps headers anyway; this cap is for the worker itself.

Below uvicorn's public API (uvicorn 0.54), each checked by :func:`problems`, which the launcher
(``chatsite/serve.py``) runs before using this class (if it finds a problem it logs a warning
and serves with stock uvicorn) and which ``tests/test_header_cap.py::
test_uvicorn_internals_the_header_cap_relies_on_are_unchanged`` asserts:

- ``uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`` is subclassed; its constructor
  takes ``config, server_state, app_state`` and builds the httptools parser on ``self``.
- ``HttpToolsProtocol.data_received`` feeds the parser synchronously, so the parser's
  callbacks (httptools' own names: ``on_message_begin``, ``on_headers_complete``,
  ``on_message_complete``) run inside it; they are overridden and call the stock ones.
- ``HttpToolsProtocol.send_400_response(msg)`` is what ``data_received`` calls when the parser
  raises ``httptools.HttpParserError``, which an exception raised in a callback becomes
  (``HttpParserCallbackError``); it is overridden to answer 431 when the cap raised.
- ``HttpToolsProtocol.on_response_complete`` runs when a response has been sent, and
  ``cycle.response_complete`` tells whether the current one has: a head refused behind a
  pipelined request still being answered gets its 431 after that response, not before it.
- Attributes: ``transport``, ``logger``, ``client``, ``server_state.default_headers`` (the
  ``server``/``date`` headers), ``url`` and ``headers`` (the request so far), ``cycle``.
- ``uvicorn.Config(http=<a protocol class>)`` serves with that class (typed so in
  ``uvicorn.run``, not documented); the launcher passes the class this way.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

ENV_NAME = "CHAT_MAX_HEADER_BYTES"
DEFAULT_MAX_HEADER_BYTES = 64 * 1024


def max_header_bytes_from_env(environ: Mapping[str, str] = os.environ) -> int:
    """``CHAT_MAX_HEADER_BYTES`` as a positive integer; ValueError names a malformed value."""
    value = environ.get(ENV_NAME, "").strip()
    if not value:
        return DEFAULT_MAX_HEADER_BYTES
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise ValueError(f"{ENV_NAME} must be a positive number of bytes, got {value!r}")
    return limit


class HeadTooLarge(Exception):
    """Raised in a parser callback to stop parsing a head over the limit."""


def _answer_431(default_headers: list[tuple[bytes, bytes]], limit: int) -> bytes:
    body = json.dumps(
        {
            "error": {
                "code": "headers_too_large",
                "message": f"The request line and headers exceed {limit} bytes.",
            }
        }
    ).encode()
    lines = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n",
        b"\r\n",
        body,
    ]
    return b"".join(lines)


class CappedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol that refuses request heads over ``max_header_bytes``.

    The per-request hooks call ``HttpToolsProtocol``'s directly: on Python 3.11 a bare
    ``super()`` builds an object on every call, which was half of this class's cost per request.
    """

    # Read at the first connection, once uvicorn has loaded any --env-file.
    max_header_bytes: int = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.max_header_bytes:
            CappedHttpToolsProtocol.max_header_bytes = max_header_bytes_from_env()
        # Bytes received since the current head began (whole reads that carried part of it).
        self._head_bytes = 0
        # True from the start of a request (or of the connection) until its headers complete.
        self._reading_head = True
        # Whether the read being fed was counted for the head that is open in it.
        self._read_counted = False
        # The open head began in a read that also carried the end of the request before it.
        self._head_unmeasured = False
        # A head was refused: nothing more is read; the 431 goes out once any earlier
        # (pipelined) response is complete, so that responses stay in order.
        self._head_refused = False
        self._refusal_pending = False

    def data_received(self, data: bytes) -> None:
        if self._head_refused:
            return
        self._read_counted = self._reading_head
        if self._reading_head:
            self._head_bytes += len(data)
        HttpToolsProtocol.data_received(self, data)
        if (
            self._reading_head
            and self._head_bytes > self.max_header_bytes
            and not self._head_refused
            and not self.transport.is_closing()
        ):
            self._refuse_head()

    def on_message_begin(self) -> None:
        self._head_unmeasured = not self._read_counted
        HttpToolsProtocol.on_message_begin(self)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        if (
            self._head_bytes > self.max_header_bytes or self._head_unmeasured
        ) and self._head_size() > self.max_header_bytes:
            self._head_refused = True
            raise HeadTooLarge  # stops the parser; uvicorn then calls send_400_response
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self._reading_head = True
        self._read_counted = False
        self._head_bytes = 0
        HttpToolsProtocol.on_message_complete(self)

    def send_400_response(self, msg: str) -> None:
        if self._head_refused:
            self._refuse_head()
        else:
            super().send_400_response(msg)

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)
        if self._refusal_pending:
            self._send_431()

    def _head_size(self) -> int:
        """The request line and header lines of a complete head, give or take whitespace."""
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _refuse_head(self) -> None:
        self._head_refused = True
        if self.cycle is not None and not self.cycle.response_complete:
            self._refusal_pending = True
            self.transport.pause_reading()
        else:
            self._send_431()

    def _send_431(self) -> None:
        self._refusal_pending = False
        if self.transport.is_closing():
            return
        client = f"{self.client[0]}:{self.client[1]} - " if self.client else ""
        self.logger.warning(
            "%sRequest head over %s=%d bytes: 431, connection closed.",
            client,
            ENV_NAME,
            self.max_header_bytes,
        )
        self.transport.write(_answer_431(self.server_state.default_headers, self.max_header_bytes))
        self.transport.close()


# The guard: the launcher's check and the test's.

_OVERRIDDEN = (
    "data_received",
    "on_message_begin",
    "on_headers_complete",
    "on_message_complete",
    "send_400_response",
    "on_response_complete",
)


class RecordingTransport(asyncio.Transport):
    """Collects what the protocol writes; enough of a transport for the self-check."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


async def _ok_app(scope: dict, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def _exercise(limit: int) -> list[str]:
    """Drive the capped protocol over a fake transport; what did not behave as it must."""
    silent = logging.getLogger("chatsite.http.self_check")
    silent.propagate = False
    silent.addHandler(logging.NullHandler())

    class Probe(CappedHttpToolsProtocol):
        max_header_bytes = limit

    async def answer(reads: list[bytes]) -> tuple[list[bytes], bool]:
        config = Config(
            app=_ok_app, http=Probe, lifespan="off", log_config=None, proxy_headers=False
        )
        protocol = Probe(config=config, server_state=ServerState(), app_state={})
        if config.http_protocol_class is not Probe:
            raise RuntimeError("Config(http=<class>) no longer serves with that class")
        protocol.logger = silent
        protocol.access_log = False
        transport = RecordingTransport()
        protocol.connection_made(transport)
        for data in reads:
            protocol.data_received(data)
        for _ in range(20):
            await asyncio.sleep(0)
        return re.findall(rb"HTTP/1\.1 (\d{3}) ", transport.written), transport.closed

    small = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
    big = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (2 * limit)
    body = b"b" * (4 * limit)
    post = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    pieces = [big[start : start + limit // 4] for start in range(0, len(big), limit // 4)]
    cases = [
        ("two small pipelined requests in one read", [small + small], [b"200", b"200"], False),
        ("a small head and a body over the limit in one read", [post + body], [b"200"], False),
        (
            "a small head, then a body over the limit",
            [post, body[:limit], body[limit:]],
            [b"200"],
            False,
        ),
        ("a head over the limit arriving in reads", pieces, [b"431"], True),
        ("a whole head over the limit in one read", [big + b"\r\n\r\n"], [b"431"], True),
        (
            "a head over the limit behind a small request",
            [small + big + b"\r\n\r\n"],
            [b"200", b"431"],
            True,
        ),
    ]
    failures = []
    for name, reads, statuses, closed in cases:
        got = await answer(reads)
        if got != (statuses, closed):
            failures.append(
                f"{name}: answered {got[0]}, closed {got[1]}; expected {statuses}, {closed}"
            )
    return failures


def problems() -> list[str]:
    """What in uvicorn no longer has the shape this module relies on; empty when all is well."""
    found = []
    for name in _OVERRIDDEN:
        if not callable(getattr(HttpToolsProtocol, name, None)):
            found.append(f"HttpToolsProtocol.{name} is gone")
    parameters = inspect.signature(HttpToolsProtocol.__init__).parameters
    for name in ("config", "server_state", "app_state"):
        if name not in parameters:
            found.append(f"HttpToolsProtocol.__init__ no longer takes {name!r}")
    if found:
        return found
    # On a thread of its own: its event loop neither meets one running here nor is left behind.
    try:
        with ThreadPoolExecutor(1) as executor:
            return executor.submit(asyncio.run, _exercise(limit=1024)).result()
    except Exception as exc:  # any failure means: do not use the subclass
        return [f"driving the capped protocol raised {exc!r}"]
