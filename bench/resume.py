"""The resume scenario: clients drop their stream after some tokens and reattach through the
other of two chatsite workers (``Last-Event-ID``), as after a dropped network behind a load
balancer.

Each client opens ``GET /api/chat/stream`` on worker A, reads ``drop_after`` token frames and
closes the connection; it then reconnects to worker B with the last frame's id. Measured: the
resume latency (the reconnect's request sent to its first token frame), and whether the frames
of both connections, by their ids, are every frame of the reply exactly once, in order.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from urllib.parse import quote

FRAME_ID = re.compile(rb"id: (\d+)-(\d+)\n")


@dataclass
class Resumed:
    latency: float | None = None
    positions: list[int] = field(default_factory=list)
    done: bool = False
    error: str | None = None


async def _get(port: int, path: str, headers: str) -> tuple[asyncio.StreamReader, object, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Accept: text/event-stream\r\n"
        f"Connection: close\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    return reader, writer, head


async def one_client(
    port_a: int,
    port_b: int,
    prompt: str,
    token: str,
    drop_after: int,
    timeout: float,
    offset: float = 0.0,
) -> Resumed:
    await asyncio.sleep(offset)
    result = Resumed()
    auth = f"Authorization: Bearer {token}\r\n"
    try:
        async with asyncio.timeout(timeout):
            reader, writer, head = await _get(
                port_a, f"/api/chat/stream?message={quote(prompt)}", auth
            )
            if not head.startswith(b"HTTP/1.1 200"):
                result.error = head.split(b"\r\n", 1)[0].decode()
                return result
            message_id, received = None, b""
            while len(result.positions) < drop_after:
                data = await reader.read(65536)
                if not data:
                    result.error = "closed before the drop"
                    return result
                received += data
                frames = FRAME_ID.findall(received)
                result.positions = [int(n) for _, n in frames][:drop_after]
                message_id = frames[0][0].decode() if frames else None
            writer.transport.abort()  # the network drops
            last = f"{message_id}-{result.positions[-1]}"
            sent = time.monotonic()
            reader, writer, head = await _get(
                port_b, "/api/chat/stream", f"{auth}Last-Event-ID: {last}\r\n"
            )
            if not head.startswith(b"HTTP/1.1 200"):
                result.error = "resume: " + head.split(b"\r\n", 1)[0].decode()
                return result
            received = b""
            while not result.done:
                data = await reader.read(65536)
                if not data:
                    result.error = "resume closed before [DONE]"
                    return result
                if result.latency is None and b'data: "' in data:
                    result.latency = time.monotonic() - sent
                received += data
                result.done = b"[DONE]" in received
            result.positions += [int(n) for _, n in FRAME_ID.findall(received)]
            writer.close()
    except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
        result.error = result.error or f"{type(exc).__name__}: {exc}"
    return result


async def resume_run(
    port_a: int, port_b: int, tokens_for, *, clients: int, ids: range, drop_after: int = 10
) -> dict:
    """``clients`` streams (100-token replies at 50 tokens/s) started spread over one reply's
    length, as in the steady scenarios, so that they drop and resume spread too; each drops
    after ``drop_after`` tokens and resumes through the other worker."""
    spacing = (0.1 + 100 * 0.02) / clients
    runs = await asyncio.gather(
        *(
            one_client(
                port_a,
                port_b,
                f"tokens=100 interval=0.02 delay=0.1 id={stream_id}",
                tokens_for(stream_id),
                drop_after,
                timeout=60,
                offset=n * spacing,
            )
            for n, stream_id in enumerate(ids[:clients])
        )
    )
    latencies = sorted(r.latency * 1000 for r in runs if r.latency is not None)
    # Every frame once, in order: token frames 1..100, then [DONE] as 101.
    whole = [r for r in runs if r.done and r.positions == list(range(1, 102))]
    return {
        "clients": clients,
        "resumed": len(latencies),
        "latency_ms": {
            "p50": latencies[len(latencies) // 2] if latencies else None,
            "p99": latencies[min(len(latencies) - 1, int(0.99 * (len(latencies) - 1) + 0.5))]
            if latencies
            else None,
            "max": latencies[-1] if latencies else None,
        },
        "exact": len(whole),
        "gaps_or_duplicates": sum(1 for r in runs if r.done and r not in whole),
        "errors": sum(1 for r in runs if r.error),
        "error_samples": sorted({r.error for r in runs if r.error})[:3],
    }
