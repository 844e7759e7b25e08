"""An httpx transport on aiohttp, for the SDK's requests to the model service.

httpx's own transport parses responses in Python (h11): for a paced stream, each chunk's
framing cost more CPU than all the rest of the relay. aiohttp parses them in C. The SDK keeps
building, sending and checking its requests through httpx; only the bytes on the wire go
through aiohttp here (the SDK's own ``DefaultAioHttpClient`` does the same, but keeps cookies
and reports a refused connection as a timeout).

A request's body goes out in the same step as its head (``BodyWithHeadRequest``).
"""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import httpx
from aiohttp.payload import BytesPayload

AIOHTTP_WRITES_BODIES_EAGERLY = sys.version_info >= (3, 12)
"""From Python 3.12 aiohttp starts the task that writes a body eagerly: it is done before
``send`` returns, and ``BodyWithHeadRequest`` leaves it alone."""

BODY_WITH_HEAD_MAX_BYTES = 1 << 16
"""A larger body goes aiohttp's way, written in chunks that wait for the socket to drain."""

TRANSPORT_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.RemoteProtocolError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
)
"""aiohttp's errors as httpx's (the SDK maps those), most specific first; any other is a
``ReadError``, a connection that failed on its way."""


def transport_error(exc: aiohttp.ClientError) -> httpx.TransportError:
    error_class = next(
        (
            httpx_error
            for aiohttp_error, httpx_error in TRANSPORT_ERRORS
            if isinstance(exc, aiohttp_error)
        ),
        httpx.ReadError,
    )
    return error_class(str(exc) or type(exc).__name__)


class AiohttpResponseBody(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.content.iter_any():
                yield chunk
        except aiohttp.ClientError as exc:
            raise transport_error(exc) from exc

    async def aclose(self) -> None:
        """A body read to its end gives its connection back for the next request; one closed
        early closes its connection, which is how the model service learns to stop."""
        if self.response.content.at_eof():
            self.response.release()
        else:
            self.response.close()


class BodyWithHeadRequest(aiohttp.ClientRequest):
    """aiohttp's request, with a body already in hand written in the step that sends the head.

    Before Python 3.12 aiohttp writes every body from a task of its own, started at the loop's
    next turn. On a busy loop that turn comes after every callback already queued: at steady 50
    the new stream's request reached the model service 1.7 ms (p50) after it was sent, a third
    of the TTFT overhead above the floor (``python -m bench.probe steady`` with server-side
    timestamps). Here a bytes body of up to BODY_WITH_HEAD_MAX_BYTES, sent with its length
    (not chunked), with no ``Expect: 100-continue`` and the socket not paused, is held back
    from aiohttp's ``send``, which then takes its no-body way and writes the head at once, and
    is written to the connection's transport right after it.

    Relies on ``ClientRequest._body`` (a ``BytesPayload`` holding ``_value``) and ``_continue``
    (private), and on ``send`` writing the head itself when the body is ``None`` (its source:
    ``if self._body or self._continue is not None or protocol.writing_paused``); guarded by
    ``tests/test_internals.py``, listed in ``docs/internals.md``. Anything else, and every
    request from Python 3.12 on, is aiohttp's own ``send``.
    """

    async def send(self, conn: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        body = self._body
        protocol = conn.protocol
        if (
            AIOHTTP_WRITES_BODIES_EAGERLY
            or not isinstance(body, BytesPayload)
            or not isinstance(body._value, bytes)
            or len(body._value) > BODY_WITH_HEAD_MAX_BYTES
            or self._continue is not None
            or self.chunked is not None  # chunked framing (or compression) is aiohttp's to write
            or protocol is None
            or protocol.writing_paused
        ):
            return await super().send(conn)
        self._body = None
        try:
            response = await super().send(conn)
        finally:
            self._body = body
        transport = conn.transport
        if transport is None or transport.is_closing():
            raise aiohttp.ClientConnectionResetError("Cannot write to closing transport")
        transport.write(body._value)
        return response


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session (its connection pool), opened on the first request's event loop.

    It keeps no cookies: one client serves every user's requests, so a cookie the upstream
    set for one must not go out with the next. Certificates are checked as httpx checks them
    (certifi's authorities, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``). Proxies come from the
    environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``), read once per
    host: aiohttp's own ``trust_env`` reads them, and ``~/.netrc``, in a worker thread on every
    request.
    """

    def __init__(self, *, max_connections: int = 1000, keepalive_seconds: float = 5.0) -> None:
        self.max_connections = max_connections
        self.keepalive_seconds = keepalive_seconds
        # Built here, at startup: loading the certificate authorities takes milliseconds,
        # which the first request would otherwise spend on the event loop.
        self.ssl_context = httpx.create_ssl_context()
        self.session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str], str | None] = {}

    def proxy_for(self, url: httpx.URL) -> str | None:
        """The proxy the environment names for ``url``'s scheme and host, if any."""
        key = (url.scheme, url.host)
        if key not in self._proxies:
            proxies = urllib.request.getproxies()
            # Undocumented (urllib's own helper behind proxy_bypass), so not in typeshed.
            bypass = urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
                url.host, proxies
            )
            self._proxies[key] = None if bypass else proxies.get(url.scheme, proxies.get("all"))
        return self._proxies[key]

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections,
            keepalive_timeout=self.keepalive_seconds,
            ssl=self.ssl_context,
        )
        return aiohttp.ClientSession(
            connector=connector,
            request_class=BodyWithHeadRequest,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.session is None:
            self.session = self._open_session()
        timeout = request.extensions.get("timeout", {})
        try:
            response = await self.session.request(
                request.method,
                str(request.url),
                headers=[
                    (name, value)
                    for name, value in request.headers.multi_items()
                    if name != "transfer-encoding"
                ],
                data=await request.aread() or None,
                proxy=self.proxy_for(request.url),
                allow_redirects=False,
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    connect=timeout.get("pool"),
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                ),
            )
        except aiohttp.ClientError as exc:
            raise transport_error(exc) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseBody(response),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
