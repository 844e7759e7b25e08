"""A fast fake OpenAI-compatible upstream for the benchmark, run as its own process.

The prompt's last user message selects the reply: ``tokens=N interval=S delay=S``. Paced
streams share one ticker per interval (one timer wake-up per tick for all streams, not one per
token), chunks are pre-encoded, and each request records when it started, when its first token
went out and when its client aborted. Connections are kept alive between streams, as a real
API's are. ``GET /stats`` returns (and clears) those records; ``GET /active`` the number of
streams still being written (a relay that never aborts leaves them running after its clients
left, and the next measurement must not share the machine with them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import time
from dataclasses import asdict, dataclass, field
from functools import cache

PARAMS = re.compile(r"(\w+)=([\d.]+)")
CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def frame(payload: dict) -> bytes:
    data = b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


@cache
def token_chunks(count: int) -> tuple[bytes, ...]:
    base = {"id": "bench", "object": "chat.completion.chunk", "created": 0, "model": "bench"}
    return tuple(
        frame({**base, "choices": [{"index": 0, "delta": {"content": f"tok{i} "}}]})
        for i in range(count)
    )


@cache
def closing_chunks(count: int) -> bytes:
    base = {"id": "bench", "object": "chat.completion.chunk", "created": 0, "model": "bench"}
    stop = frame({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": 10, "completion_tokens": count, "total_tokens": 10 + count}
    done = b"data: [DONE]\n\n"
    return (
        stop
        + frame({**base, "choices": [], "usage": usage})
        + b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)
    )


FIRST = frame(
    {
        "id": "bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "bench",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
    }
)


@dataclass
class Record:
    id: int
    started: float
    tokens: int
    first_token_at: float | None = None
    finished_at: float | None = None
    aborted_at: float | None = None
    sent: int = 0


@dataclass(eq=False)
class Stream:
    writer: asyncio.StreamWriter
    record: Record
    chunks: tuple[bytes, ...]
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Ticker:
    """Writes the next token of every stream on the same interval at each tick."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.streams: set[Stream] = set()
        self.task: asyncio.Task | None = None

    def add(self, stream: Stream) -> None:
        self.streams.add(stream)
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self.run())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time()
        while self.streams:
            now = time.monotonic()
            for stream in list(self.streams):
                self.advance(stream, now)
            next_tick += self.interval
            await asyncio.sleep(max(0.0, next_tick - loop.time()))

    def advance(self, stream: Stream, now: float) -> None:
        record = stream.record
        if record.aborted_at is None and stream.writer.is_closing():
            record.aborted_at = now  # the write side saw the reset before the EOF watcher ran
        if record.aborted_at is not None:
            self.streams.discard(stream)
            stream.done.done() or stream.done.set_result(None)
            return
        stream.writer.write(stream.chunks[record.sent])
        if record.first_token_at is None:
            record.first_token_at = now
        record.sent += 1
        if record.sent == len(stream.chunks):
            stream.writer.write(closing_chunks(len(stream.chunks)))
            record.finished_at = now
            self.streams.discard(stream)
            stream.done.set_result(None)


class Upstream:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.tickers: dict[float, Ticker] = {}
        self.active = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one connection until the client closes it or aborts a stream."""
        while await self.serve_one(reader, writer):
            pass
        writer.close()

    async def serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            match = CONTENT_LENGTH.search(head)
            body = await reader.readexactly(int(match.group(1)) if match else 0)
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        if head.startswith(b"GET /stats"):
            payload = json.dumps([asdict(r) for r in self.records]).encode()
            self.records = []
        elif head.startswith(b"GET /active"):
            payload = json.dumps({"streams": self.active}).encode()
        else:
            self.active += 1
            try:
                return await self.stream(reader, writer, json.loads(body))
            finally:
                self.active -= 1
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(payload), payload)
        )
        return False

    async def stream(self, reader, writer, body: dict) -> bool:
        """One streamed reply; True if the connection can serve another request."""
        prompt = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        params = {k: float(v) for k, v in PARAMS.findall(prompt)}
        count, interval = int(params.get("tokens", 100)), params.get("interval", 0.02)
        record = Record(id=int(params.get("id", 0)), started=time.monotonic(), tokens=count)
        self.records.append(record)
        stream = Stream(writer, record, token_chunks(count))
        watcher = asyncio.ensure_future(self.watch(reader, stream))
        writer.write(HEAD + FIRST)
        await asyncio.sleep(params.get("delay", 0.1))
        if interval > 0:
            self.tickers.setdefault(interval, Ticker(interval)).add(stream)
            await stream.done
        else:
            await self.flood(stream)
        watcher.cancel()
        await asyncio.wait([watcher])
        try:
            await writer.drain()
        except ConnectionError:
            return False
        return record.finished_at is not None and record.aborted_at is None

    async def flood(self, stream: Stream) -> None:
        record = stream.record
        try:
            for chunk in stream.chunks:
                if record.aborted_at is not None:
                    return
                stream.writer.write(chunk)
                if record.first_token_at is None:
                    record.first_token_at = time.monotonic()
                record.sent += 1
                await stream.writer.drain()
            stream.writer.write(closing_chunks(len(stream.chunks)))
            record.finished_at = time.monotonic()
        except ConnectionError:
            record.aborted_at = record.aborted_at or time.monotonic()

    async def watch(self, reader: asyncio.StreamReader, stream: Stream) -> None:
        """An end of file while the reply streams is the client aborting it (clients send
        nothing else mid-reply; a waiting read is cancelled without losing data)."""
        await reader.read(1)
        if stream.record.finished_at is None:
            stream.record.aborted_at = time.monotonic()


async def main(port: int) -> None:
    upstream = Upstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
