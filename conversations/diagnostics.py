"""The diagnostics stream: frames sent at a fixed spacing, each saying when it left the server,
so that a client can tell whether something between them holds frames back, compresses them,
or cuts a connection that stays silent (``manage.py check_streaming`` reads it).

Frames, in order (SSE, with ``event:`` names):

- ``tick`` × ``count``, ``interval_ms`` apart, each ``id: <seq>`` and data
  ``{"seq", "count", "interval_ms", "sent_ms", "sent_at", "keepalive_seconds"}``: ``sent_ms``
  is when it left, in milliseconds since the first tick left (the server's monotonic clock),
  ``sent_at`` the same moment as wall-clock time;
- with ``idle_seconds``: ``idle`` (``{"seconds"}``), then that long without a byte;
- ``end`` (``{"count"}``): the stream is whole.

Knows nothing of models or requests; the view checks who may read it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from .sse import encode_event, json_encode

DEFAULT_COUNT = 10
MIN_COUNT = 2
MAX_COUNT = 100
DEFAULT_INTERVAL_MS = 200
MIN_INTERVAL_MS = 50
MAX_INTERVAL_MS = 5000
MAX_IDLE_SECONDS = 300
"""The bounds keep a stream short: 100 ticks 5 s apart and 300 s of silence at most."""


@dataclass(frozen=True)
class DiagnosticPlan:
    """What one diagnostics stream sends."""

    count: int = DEFAULT_COUNT
    interval_ms: int = DEFAULT_INTERVAL_MS
    idle_seconds: int = 0


async def diagnostic_frames(
    plan: DiagnosticPlan, *, keepalive_seconds: float
) -> AsyncIterator[bytes]:
    """The frames of ``plan``: each tick is due ``interval_ms`` after the one before it (from
    the first tick's time, so late wake-ups do not add up), and says when it actually left."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    interval = plan.interval_ms / 1000
    for seq in range(1, plan.count + 1):
        delay = start + (seq - 1) * interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        payload = {
            "seq": seq,
            "count": plan.count,
            "interval_ms": plan.interval_ms,
            "sent_ms": round((loop.time() - start) * 1000, 1),
            "sent_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "keepalive_seconds": keepalive_seconds,
        }
        yield encode_event(json_encode(payload), event="tick", id=seq)
    if plan.idle_seconds:
        yield encode_event(json_encode({"seconds": plan.idle_seconds}), event="idle")
        await asyncio.sleep(plan.idle_seconds)
    yield encode_event(json_encode({"count": plan.count}), event="end")
