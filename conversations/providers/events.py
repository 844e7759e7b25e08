"""Reading an upstream's Server-Sent Events from raw bytes, without per-event objects."""

from __future__ import annotations


class EventDataReader:
    """Feed received bytes; get back the data of each event completed by them."""

    def __init__(self) -> None:
        self.buffer = b""
        self.data: list[bytes] = []

    def feed(self, received: bytes) -> list[bytes]:
        *lines, self.buffer = (self.buffer + received).split(b"\n")
        events = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if line.startswith(b"data:"):
                self.data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif not line and self.data:
                events.append(b"\n".join(self.data))
                self.data = []
        return events
