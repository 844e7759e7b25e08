"""An httpx transport on aiohttp, for the SDK's requests to the model service.

httpx's own transport parses responses in Python (h11): for a paced stream, each chunk's
framing cost more CPU than all the rest of the relay. aiohttp parses them in C. The SDK keeps
building, sending and checking its requests through httpx; only the bytes on the wire go
through aiohttp here (the SDK's own ``DefaultAioHttpClient`` does the same, but keeps cookies
and reports a refused connection as a timeout).
"""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import httpx

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
