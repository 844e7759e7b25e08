"""The request-head cap (``chatsite/http_protocol.py``): heads over ``CHAT_MAX_HEADER_BYTES``
get 431 and a closed connection; the uvicorn internals it relies on are checked here by name."""

from __future__ import annotations

import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chatsite.http_protocol import DEFAULT_MAX_HEADER_BYTES, max_header_bytes_from_env, problems


def test_uvicorn_internals_the_header_cap_relies_on_are_unchanged():
    """chatsite/http_protocol.py subclasses uvicorn's HttpToolsProtocol (data_received,
    on_message_begin, on_headers_complete, on_message_complete, send_400_response,
    on_response_complete; transport, logger, client, url, headers, cycle,
    server_state.default_headers) and is served as Config(http=<the class>). If this fails,
    uvicorn changed and the subclass must follow."""
    assert problems() == [], "uvicorn's httptools protocol changed shape: " + "; ".join(problems())


def test_the_guard_notices_a_callback_uvicorn_no_longer_has(monkeypatch):
    monkeypatch.delattr(HttpToolsProtocol, "send_400_response")

    assert "HttpToolsProtocol.send_400_response is gone" in problems()


def test_the_guard_notices_when_the_parser_is_no_longer_fed_in_data_received(monkeypatch):
    stock = HttpToolsProtocol.data_received

    def later(self, data):
        self.loop.call_soon(stock, self, data)

    monkeypatch.setattr(HttpToolsProtocol, "data_received", later)

    assert any(
        problem.startswith("a small head and a body over the limit") for problem in problems()
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("", DEFAULT_MAX_HEADER_BYTES), ("8192", 8192), (" 100 ", 100)]
)
def test_the_limit_is_read_as_bytes(value, expected):
    assert max_header_bytes_from_env({"CHAT_MAX_HEADER_BYTES": value}) == expected


@pytest.mark.parametrize("value", ["0", "-1", "64k", "1.5"])
def test_a_limit_that_is_not_a_positive_integer_is_refused(value):
    with pytest.raises(ValueError, match="CHAT_MAX_HEADER_BYTES must be a positive number"):
        max_header_bytes_from_env({"CHAT_MAX_HEADER_BYTES": value})
