"""The request-head cap (``chatsite/http_protocol.py``, served by ``python -m chatsite.serve``):
heads over ``CHAT_MAX_HEADER_BYTES`` get 431 and a closed connection before they finish, and
do not hold up anyone else; the uvicorn internals it relies on are checked here by name."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from chatsite import serve
from chatsite.http_protocol import (
    DEFAULT_MAX_HEADER_BYTES,
    CappedHttpToolsProtocol,
    max_header_bytes_from_env,
    problems,
)
from tests.conftest import ROOT, LiveServer, free_port
from tests.raw_http import split_head

PAGE = "/accounts/login/"
SMALL_LIMIT = 8192


@pytest.fixture(scope="module")
def small_limit_server(start_server) -> LiveServer:
    return start_server("small-header-limit", CHAT_MAX_HEADER_BYTES=str(SMALL_LIMIT))


def open_head(server: LiveServer, path: str = PAGE) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ".encode())
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (status, headers, body by Content-Length) from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed without a full response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, headers = split_head(head)
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the server closed in the middle of the response body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def assert_closed(sock: socket.socket) -> None:
    """The server closed the connection: end of stream, or a reset (it left bytes unread)."""
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(65536) == b""


def get_page_seconds(client: httpx.Client) -> float:
    started = time.perf_counter()
    response = client.get(PAGE)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200
    return elapsed


# Through a running server.


def test_a_1_mb_header_gets_431_and_a_closed_connection_before_it_is_all_sent(server):
    piece = b"a" * 16384
    pieces = 64  # 1 MiB of header value
    sock = open_head(server)
    with sock:
        # Just past the limit, then nothing more: a server that waits for the rest never answers.
        sent = 0
        while sent <= DEFAULT_MAX_HEADER_BYTES:
            sock.sendall(piece)
            sent += len(piece)

        status, headers, body = read_response(sock)

        assert status == 431
        assert headers["connection"] == "close"
        assert json.loads(body)["error"]["code"] == "headers_too_large"
        assert_closed(sock)
        with pytest.raises(OSError):  # the rest of the header is refused
            for _ in range(pieces - sent // len(piece)):
                sock.sendall(piece)
    assert "Request head over CHAT_MAX_HEADER_BYTES=65536 bytes: 431" in server.log()


def test_a_huge_request_line_gets_431(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    with sock:
        sock.sendall(b"GET /" + b"a" * (DEFAULT_MAX_HEADER_BYTES + 16384))

        status, _, _ = read_response(sock)

        assert status == 431
        assert_closed(sock)


def test_other_requests_stay_prompt_while_a_client_sends_a_huge_header(server):
    """The issue's case. Without the cap a request made while a 64 MB header is coming in waits
    until all of it has arrived (seconds); with it, the header is cut off after the limit."""
    size, piece = 64 * 1024 * 1024, b"a" * (1024 * 1024)
    under_way = threading.Event()
    outcome = {"sent": 0}

    def send_huge_header() -> None:
        sock = open_head(server)
        try:
            while outcome["sent"] < size:
                sock.sendall(piece)
                outcome["sent"] += len(piece)
                under_way.set()
            sock.sendall(b"\r\n\r\n")
        except OSError:
            pass
        finally:
            under_way.set()
            sock.close()

    with httpx.Client(base_url=server.url, timeout=60) as client:
        slowest_before = max(get_page_seconds(client) for _ in range(7))
        sender = threading.Thread(target=send_huge_header)
        sender.start()
        under_way.wait(60)
        during = get_page_seconds(client)
        sender.join(60)

    assert during < 20 * slowest_before, (
        f"{during * 1000:.1f} ms while the header was sent, at most "
        f"{slowest_before * 1000:.1f} ms just before"
    )
    assert outcome["sent"] < size, "the server read the whole 64 MB header"


def test_headers_just_under_the_limit_are_served(server):
    padding = "p" * (DEFAULT_MAX_HEADER_BYTES - 2048)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        responses = [client.get(PAGE, headers={"X-Padding": padding}) for _ in range(3)]

    assert [response.status_code for response in responses] == [200, 200, 200]


def test_the_limit_comes_from_the_environment(small_limit_server):
    with httpx.Client(base_url=small_limit_server.url, timeout=10) as client:
        under = client.get(PAGE, headers={"X-Padding": "p" * (SMALL_LIMIT - 1024)})
        over = client.get(PAGE, headers={"X-Padding": "p" * (SMALL_LIMIT + 1024)})

    assert under.status_code == 200
    assert over.status_code == 431
    assert over.headers["connection"] == "close"


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{PAGE}", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_the_cap_holds_in_every_worker_with_the_limit_from_an_env_file(
    server_env, tmp_path, redis_url
):
    """uvicorn spawns its workers afresh; the protocol class reaches them with their config, and
    the limit is read after uvicorn has loaded its --env-file."""
    port = free_port()
    env_file = tmp_path / "server.env"
    env_file.write_text(f"CHAT_MAX_HEADER_BYTES={SMALL_LIMIT}\n")
    env = {k: v for k, v in server_env.items() if k != "CHAT_MAX_HEADER_BYTES"}
    env["REDIS_URL"] = redis_url  # several workers share their state through it
    log_path = tmp_path / "workers.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "chatsite.serve", "chatsite.asgi:application"),
                *("--port", str(port), "--workers", "2"),
                *("--env-file", str(env_file)),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while log_path.read_text().count("Started server process") < 2 or not answers(port):
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            padding = {"X-Padding": "p" * (SMALL_LIMIT + 1024)}
            statuses = {
                httpx.get(f"http://127.0.0.1:{port}{PAGE}", headers=padding).status_code
                for _ in range(12)
            }
        finally:
            process.terminate()
            process.wait(20)

    assert statuses == {431}
    assert log_path.read_text().count(f"CHAT_MAX_HEADER_BYTES={SMALL_LIMIT} bytes: 431") == 12
    assert "Serving with stock uvicorn" not in log_path.read_text()


# The launcher and the guard, in this process.


def test_uvicorn_internals_the_header_cap_relies_on_are_unchanged():
    """chatsite/http_protocol.py subclasses uvicorn's HttpToolsProtocol (data_received,
    on_message_begin, on_headers_complete, on_message_complete, send_400_response,
    on_response_complete; transport, logger, client, url, headers, cycle,
    server_state.default_headers) and chatsite/serve.py reuses uvicorn.main.main's click
    parameters and passes the class as Config(http=...). If this fails, uvicorn changed: the
    launcher serves stock uvicorn without the cap (with a warning) until the subclass is fixed."""
    assert problems() == [], "uvicorn's httptools protocol changed shape: " + "; ".join(problems())
    assert serve.command_problems() == [], "uvicorn's command line changed shape"


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


@pytest.fixture
def uvicorn_run(monkeypatch):
    """What the launcher hands to uvicorn.run, which is not called."""
    calls: list[dict] = []
    monkeypatch.setattr(sys.modules["uvicorn.main"], "run", lambda app, **kw: calls.append(kw))
    return calls


@pytest.fixture
def launcher_log():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    serve.logger.addHandler(handler)
    yield records
    serve.logger.removeHandler(handler)


@pytest.mark.parametrize("http", [None, "auto", "httptools"])
def test_the_launcher_serves_the_capped_protocol(uvicorn_run, launcher_log, http):
    args = ["chatsite.asgi:application", *(["--http", http] if http else [])]

    serve.build_command().main(args=args, standalone_mode=False)

    assert uvicorn_run[0]["http"] is CappedHttpToolsProtocol
    assert launcher_log == []


def test_the_launcher_leaves_other_protocols_alone(uvicorn_run):
    serve.build_command().main(args=["x:app", "--http", "h11"], standalone_mode=False)

    assert uvicorn_run[0]["http"] == "h11"


def test_the_launcher_serves_stock_uvicorn_with_a_warning_when_uvicorn_changed(
    uvicorn_run, launcher_log, monkeypatch
):
    monkeypatch.setattr("chatsite.http_protocol.problems", lambda: ["HttpToolsProtocol.x is gone"])

    serve.build_command().main(args=["chatsite.asgi:application"], standalone_mode=False)

    assert uvicorn_run[0]["http"] == "auto"
    assert "HttpToolsProtocol.x is gone" in launcher_log[0].getMessage()


def launch(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chatsite.serve", "chatsite.asgi:application", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_malformed_limit_stops_the_launcher():
    result = launch("--port", "1", CHAT_MAX_HEADER_BYTES="64k")

    assert result.returncode != 0
    assert "CHAT_MAX_HEADER_BYTES must be a positive number of bytes, got '64k'" in result.stderr


def test_a_malformed_limit_in_uvicorns_env_file_stops_the_launcher(tmp_path, monkeypatch):
    env_file = tmp_path / "server.env"
    env_file.write_text("CHAT_MAX_HEADER_BYTES=lots\n")
    monkeypatch.delenv("CHAT_MAX_HEADER_BYTES", raising=False)

    result = launch("--port", "1", "--env-file", str(env_file))

    assert result.returncode != 0
    assert "CHAT_MAX_HEADER_BYTES must be a positive number of bytes, got 'lots'" in result.stderr


@pytest.mark.parametrize(
    ("value", "expected"), [("", DEFAULT_MAX_HEADER_BYTES), ("8192", 8192), (" 100 ", 100)]
)
def test_the_limit_is_read_as_bytes(value, expected):
    assert max_header_bytes_from_env({"CHAT_MAX_HEADER_BYTES": value}) == expected


@pytest.mark.parametrize("value", ["0", "-1", "64k", "1.5"])
def test_a_limit_that_is_not_a_positive_integer_is_refused(value):
    with pytest.raises(ValueError, match="CHAT_MAX_HEADER_BYTES must be a positive number"):
        max_header_bytes_from_env({"CHAT_MAX_HEADER_BYTES": value})
