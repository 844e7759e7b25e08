"""A strict, small SSE reader for tests: frames as they arrive, with their arrival time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx


@dataclass
class Frame:
    raw: str
    received_at: float
    fields: list[tuple[str, str]] = field(default_factory=list)

    @property
    def is_comment(self) -> bool:
        return all(name == "" for name, _ in self.fields)

    @property
    def has_data(self) -> bool:
        """An event, not a comment or a frame of only ``retry:``."""
        return any(name == "data" for name, _ in self.fields)

    def get(self, name: str) -> str | None:
        values = [value for key, value in self.fields if key == name]
        return "\n".join(values) if values else None

    @property
    def data(self) -> str | None:
        return self.get("data")

    @property
    def event(self) -> str | None:
        return self.get("event")

    def json(self):
        return json.loads(self.data)


def parse_frame(raw: str, received_at: float = 0.0) -> Frame:
    frame = Frame(raw, received_at)
    for line in raw.split("\n"):
        name, _, value = line.partition(":")
        frame.fields.append((name, value[1:] if value.startswith(" ") else value))
    return frame


def iter_frames(response: httpx.Response) -> Iterator[Frame]:
    """Frames of a streaming response, split on blank lines however the bytes were chunked."""
    buffer = b""
    for chunk in response.iter_raw():
        buffer += chunk
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            yield parse_frame(raw.decode("utf-8"), time.monotonic())
    assert buffer == b"", f"the stream ended inside a frame: {buffer!r}"


def content_frames(frames: list[Frame]) -> list[Frame]:
    return [frame for frame in frames if frame.has_data]


def parse_body(body: bytes) -> list[Frame]:
    """The frames of a complete response body, which must end with a whole frame."""
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), f"the body does not end with a whole frame: {text[-80:]!r}"
    return [parse_frame(raw) for raw in text[:-2].split("\n\n")]
