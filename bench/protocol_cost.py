"""The header cap's cost per request: the same keep-alive requests through uvicorn's stock
httptools protocol and through ``CappedHttpToolsProtocol``, in one process, no sockets.

    .venv/bin/python -m bench.protocol_cost

A request as the bench's clients send it (one read, eight headers) goes in, the protocol runs
a trivial ASGI app, and the response is written to a recording transport; the figure is the
median of seven runs of 20,000 requests, in microseconds per request.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import uvloop
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from chatsite.http_protocol import CappedHttpToolsProtocol, RecordingTransport

REQUEST = (
    b"GET /api/chat/stream?message=hello HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
    b"User-Agent: bench/1.0\r\nAccept: text/event-stream\r\nAccept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\nAuthorization: Bearer cst_0123456789abcdef0123456789abcdef\r\n"
    b"Cookie: a=b; c=d\r\n\r\n"
)
REQUESTS, RUNS = 20_000, 7


async def app(scope, receive, send) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def microseconds_per_request(protocol_class: type) -> float:
    config = Config(
        app=app, http=protocol_class, lifespan="off", log_config=None, proxy_headers=False
    )
    protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
    protocol.access_log = False
    transport = RecordingTransport()
    protocol.connection_made(transport)
    started = time.perf_counter()
    for _ in range(REQUESTS):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the request's task runs
        await asyncio.sleep(0)
    elapsed = time.perf_counter() - started
    assert transport.written.count(b"HTTP/1.1 200 ") == REQUESTS
    return elapsed / REQUESTS * 1e6


async def main() -> None:
    runs: dict[str, list[float]] = {"stock": [], "capped": []}
    for _ in range(RUNS):  # alternating, so drift shows in both
        runs["stock"].append(await microseconds_per_request(HttpToolsProtocol))
        runs["capped"].append(await microseconds_per_request(CappedHttpToolsProtocol))
    for name, values in runs.items():
        print(
            f"{name:>6}: {statistics.median(values):.2f} µs/request "
            f"(runs: {', '.join(f'{v:.2f}' for v in values)})"
        )


if __name__ == "__main__":
    uvloop.run(main())
