"""The upstream transport: aiohttp's failures as the httpx errors the SDK expects, TLS checked
and proxies taken from the environment as httpx does."""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import httpx
import pytest
import trustme

from conversations.providers.aiohttp_transport import (
    AIOHTTP_WRITES_BODIES_EAGERLY,
    BODY_WITH_HEAD_MAX_BYTES,
    AiohttpTransport,
    transport_error,
)
from tests.loops import run_in_new_loop


def connector_error(error: OSError) -> aiohttp.ClientConnectorError:
    key = aiohttp.client_reqrep.ConnectionKey("upstream", 443, True, True, None, None, None)
    return aiohttp.ClientConnectorError(key, error)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (connector_error(ConnectionRefusedError(111, "refused")), httpx.ConnectError),
        (aiohttp.ConnectionTimeoutError("connect"), httpx.ConnectTimeout),
        (aiohttp.SocketTimeoutError("read"), httpx.ReadTimeout),
        (aiohttp.ServerDisconnectedError(), httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError("cut"), httpx.RemoteProtocolError),
        (aiohttp.ClientOSError(104, "reset"), httpx.ReadError),
    ],
)
def test_aiohttp_errors_become_the_most_specific_httpx_error(error, expected):
    mapped = transport_error(error)

    assert type(mapped) is expected
    assert str(mapped)


def ok_response(body: bytes) -> bytes:
    """A 200 with ``body``, after which the server closes the connection."""
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        len(body),
        body,
    )


async def get_over_tls(authority: trustme.CA) -> httpx.Response:
    """GET / from a loopback HTTPS server whose certificate ``authority`` issued."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ok_response(b"ok"))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            response = await client.get(f"https://127.0.0.1:{port}/")
            await response.aread()
            return response
    finally:
        server.close()
        await server.wait_closed()


def test_upstream_certificate_is_checked_against_ssl_cert_file(tmp_path, monkeypatch):
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "authority.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "authority.pem"))

    response = run_in_new_loop(get_over_tls(authority))

    assert (response.status_code, response.text) == (200, "ok")


def test_upstream_certificate_from_an_unknown_authority_is_refused(monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)

    with pytest.raises(httpx.ConnectError, match="certificate verify failed"):
        run_in_new_loop(get_over_tls(trustme.CA()))


async def get_with_proxy_env(
    monkeypatch, url: str, no_proxy: str, variable: str = "HTTP_PROXY"
) -> tuple[str, list[bytes]]:
    """GET ``url`` with ``variable`` naming a loopback proxy; what answered, and the request
    lines the proxy saw. Both the proxy and the direct server (on 127.0.0.1) answer their name."""
    proxied: list[bytes] = []

    def server_named(name: bytes, seen: list[bytes] | None):
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                if seen is not None:
                    seen.append(head.split(b"\r\n", 1)[0])
                writer.write(ok_response(name))
                await writer.drain()
            finally:
                writer.close()

        return answer

    proxy = await asyncio.start_server(server_named(b"proxy", proxied), "127.0.0.1", 0)
    direct = await asyncio.start_server(server_named(b"direct", None), "127.0.0.1", 0)
    monkeypatch.setenv(variable, f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    url = url.replace("DIRECT_PORT", str(direct.sockets[0].getsockname()[1]))
    try:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            response = await client.get(url)
            return (await response.aread()).decode(), proxied
    finally:
        for server in (proxy, direct):
            server.close()
            await server.wait_closed()


@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
def test_upstream_request_goes_through_the_proxy_the_environment_names(monkeypatch, variable):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)

    answered_by, proxied = run_in_new_loop(
        get_with_proxy_env(monkeypatch, "http://upstream.test/v1/models", "", variable)
    )

    assert answered_by == "proxy"
    assert proxied == [b"GET http://upstream.test/v1/models HTTP/1.1"]


def test_upstream_host_listed_in_no_proxy_is_reached_directly(monkeypatch):
    answered_by, proxied = run_in_new_loop(
        get_with_proxy_env(monkeypatch, "http://127.0.0.1:DIRECT_PORT/v1", no_proxy="127.0.0.1")
    )

    assert (answered_by, proxied) == ("direct", [])


async def post_watching_tasks(body: bytes) -> tuple[bytes, bytes, list[str]]:
    """POST ``body`` to a loopback server that answers with the body it read; the head it read,
    that answer, and the coroutines of the tasks the loop started meanwhile."""
    started: list[str] = []
    loop = asyncio.get_running_loop()

    def watching(loop, coroutine, **options):
        started.append(coroutine.__qualname__)
        return asyncio.Task(coroutine, loop=loop, **options)

    heads: list[bytes] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            heads.append(head)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            writer.write(ok_response(await reader.readexactly(length)))
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop.set_task_factory(watching)
    try:
        async with httpx.AsyncClient(transport=AiohttpTransport()) as client:
            response = await client.post(f"http://127.0.0.1:{port}/v1/chat", content=body)
            return heads[0], await response.aread(), started
    finally:
        loop.set_task_factory(None)
        server.close()
        await server.wait_closed()


def test_a_request_body_goes_out_in_the_step_that_sends_its_head():
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}'

    head, echoed, started = run_in_new_loop(post_watching_tasks(body))

    assert echoed == body
    assert head.startswith(b"POST /v1/chat HTTP/1.1\r\n")
    assert b"\r\ncontent-length: %d\r\n" % len(body) in head.lower()
    assert "ClientRequest.write_bytes" not in started, (
        "the body waited for a task of its own, a turn of the loop after its head"
    )


def test_a_body_too_large_to_go_with_the_head_is_written_as_aiohttp_writes_it():
    body = b"x" * (BODY_WITH_HEAD_MAX_BYTES + 1)

    _, echoed, started = run_in_new_loop(post_watching_tasks(body))

    assert echoed == body
    # Seen here only where aiohttp starts that task through the loop (before Python 3.12):
    # it is what the test above proves is skipped.
    assert ("ClientRequest.write_bytes" in started) is not AIOHTTP_WRITES_BODIES_EAGERLY
