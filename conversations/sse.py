"""Server-Sent Events: frames as bytes, and the response that carries them.

Knows nothing of models or providers. Fields are sanitised so that no value can end a line or a
frame early; multi-line data goes on one ``data:`` line per line, as the SSE spec requires.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterable
from typing import Any

from django.http import StreamingHttpResponse

KEEPALIVE = b": ping\n\n"

_FIELD_UNSAFE = re.compile(r"[\r\n\x00]")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")

json_encode = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode


def encode_event(data: str, *, event: str | None = None, id: str | int | None = None) -> bytes:
    """One SSE frame: optional ``event:`` and ``id:`` fields, then the data line(s)."""
    lines = []
    if event is not None:
        lines.append(f"event: {_FIELD_UNSAFE.sub('', event)}")
    if id is not None:
        lines.append(f"id: {_FIELD_UNSAFE.sub('', str(id))}")
    lines.extend(f"data: {line}" for line in _LINE_BREAKS.split(data))
    return ("\n".join(lines) + "\n\n").encode("utf-8", "replace")


def encode_json_data(payload: object) -> bytes:
    """A frame of a single ``data:`` line holding JSON (JSON never contains a raw line break)."""
    return b"data: " + json_encode(payload).encode("utf-8", "replace") + b"\n\n"


class EventStreamResponse(StreamingHttpResponse):
    """A streaming ``text/event-stream`` response that proxies and browsers will not buffer."""

    def __init__(self, frames: AsyncIterable[bytes], **kwargs: Any) -> None:
        super().__init__(frames, content_type="text/event-stream", **kwargs)
        self["Cache-Control"] = "no-cache"
        self["X-Accel-Buffering"] = "no"
