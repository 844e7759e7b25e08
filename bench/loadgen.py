"""A cheap load generator: raw asyncio sockets, one HTTP/1.1 GET stream per task.

Token frames are counted by their ``data: "`` prefix straight from the received bytes (no
de-chunking, no JSON), each stamped with the time its bytes arrived.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import quote

TOKEN = b'data: "'


@dataclass
class StreamResult:
    id: int
    sent_at: float
    first_at: float | None = None
    arrivals: list[float] = field(default_factory=list)
    clean_end: bool = False
    closed_at: float | None = None
    error: str | None = None

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]


async def stream(
    port: int,
    stream_id: int,
    prompt: str,
    *,
    token: str | None = None,
    close_after: int | None = None,
    timeout: float = 120.0,
) -> StreamResult:
    """One GET /api/chat/stream; with ``close_after`` the client leaves after that many tokens."""
    result = StreamResult(id=stream_id, sent_at=time.monotonic())
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = (
        f"GET /api/chat/stream?message={quote(prompt)} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"{auth}Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as exc:
        result.error = f"connect: {exc}"
        return result
    try:
        result.sent_at = time.monotonic()
        writer.write(request)
        await asyncio.wait_for(read_stream(reader, writer, result, close_after), timeout)
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        result.error = result.error or f"{type(exc).__name__}: {exc}"
    finally:
        writer.transport.abort() if result.closed_at is None else None
    return result


async def read_stream(reader, writer, result: StreamResult, close_after: int | None) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        result.error = head.split(b"\r\n", 1)[0].decode()
        return
    tail = b""
    while True:
        data = await reader.read(65536)
        now = time.monotonic()
        if not data:
            result.error = result.error or "closed before [DONE]"
            return
        window = tail + data
        count = window.count(TOKEN) - tail.count(TOKEN)
        if count:
            if result.first_at is None:
                result.first_at = now
            result.arrivals.extend([now] * count)
        if b"event: error" in window:
            result.error = "error frame"
            return
        if b"[DONE]" in window:
            result.clean_end = True
            return
        if close_after is not None and len(result.arrivals) >= close_after:
            writer.close()
            result.closed_at = time.monotonic()
            result.clean_end = True
            return
        tail = window[-8:]
