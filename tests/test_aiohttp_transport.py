"""The upstream transport reports aiohttp's failures as the httpx errors the SDK expects."""

from __future__ import annotations

import aiohttp
import httpx
import pytest

from conversations.providers.aiohttp_transport import transport_error


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
