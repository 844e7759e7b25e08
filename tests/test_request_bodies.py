"""A request body over CHAT_MAX_BODY_BYTES is refused before it is read, from anyone."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from tests.raw_http import split_head


def raw_connection(server) -> socket.socket:
    url = urlsplit(server.url)
    connection = socket.create_connection((url.hostname, url.port), timeout=5)
    return connection


def read_response(connection: socket.socket) -> tuple[str, dict[str, str], bytes]:
    """The status line, headers and body of a response on a connection the server closes."""
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return *split_head(head), body


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/api/chat/stream", "application/json"), ("/accounts/login/", "text/plain; charset=utf-8")],
)
def test_a_body_declared_over_the_limit_is_refused_before_any_of_it_is_sent(
    server, path, content_type
):
    with raw_connection(server) as connection:
        connection.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Content-Length: 1000000000\r\n\r\n".encode()
        )
        status, headers, body = read_response(connection)

    assert status == "HTTP/1.1 413 Request Entity Too Large"
    assert headers["content-type"] == content_type
    assert headers["connection"] == "close"
    if path.startswith("/api/"):
        assert json.loads(body)["error"]["code"] == "body_too_large"
    else:
        assert b"larger than 262144 bytes" in body


def test_a_chunked_body_is_refused_once_it_passes_the_limit(server):
    # One byte past the limit, and the body never ends. (No more than that is sent: a server
    # that closes a connection with data unread resets it, and the client may lose the answer.)
    chunks = [b"x" * 131_072, b"x" * 131_072, b"x"]
    with raw_connection(server) as connection:
        connection.sendall(
            b"POST /api/chat/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for chunk in chunks:
            connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, headers, body = read_response(connection)

    assert status == "HTTP/1.1 413 Request Entity Too Large"
    assert json.loads(body)["error"]["code"] == "body_too_large"


def test_a_body_within_the_limit_is_read_as_before(server, client):
    response = client.post("/api/chat/stream", json={"message": "m" * 30_000})

    assert response.status_code == 200
