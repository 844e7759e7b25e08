"""Writing a reply to one HTTP response: the frame formats of the two stream endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from .generation import Finished, Generation
from .models import Message
from .sse import KEEPALIVE, encode_event, encode_json_data, json_encode

FAILED = {Message.Status.ERROR, Message.Status.INTERRUPTED}


def error_frame(finished: Finished, *, id: int | None = None) -> bytes:
    payload = {"code": finished.error_code, "message": finished.error_message}
    return encode_event(json_encode(payload), event="error", id=id)


class QueryFramer:
    """``GET`` frames for EventSource: ``id: n`` and the token as a JSON string; ``[DONE]`` last."""

    def __init__(self) -> None:
        self.sequence = 0

    def token(self, text: str) -> bytes:
        self.sequence += 1
        return b"id: %d\ndata: %s\n\n" % (
            self.sequence,
            json_encode(text).encode("utf-8", "replace"),
        )

    def end(self, finished: Finished, generation: Generation) -> bytes:
        self.sequence += 1
        if finished.status in FAILED:
            return error_frame(finished, id=self.sequence)
        return b"id: %d\ndata: [DONE]\n\n" % self.sequence


class JsonFramer:
    """``POST`` frames: exactly one ``data:`` line of JSON per frame, nothing else."""

    def token(self, text: str) -> bytes:
        return b'data: {"token": %s, "done": false}\n\n' % json_encode(text).encode(
            "utf-8", "replace"
        )

    def end(self, finished: Finished, generation: Generation) -> bytes:
        if finished.status in FAILED:
            return error_frame(finished)
        return encode_json_data(
            {
                "token": "",
                "done": True,
                "conversation_id": generation.conversation_id,
                "message_id": generation.message_id,
                "status": finished.status,
            }
        )


class ReplyFrames:
    """A reply's frames as a response body. However the response ends, even if it is never
    sent (the client left before its first frame), ``aclose`` stops and saves the reply and
    runs ``on_close`` (which gives back the stream slot); calling it again does nothing."""

    def __init__(
        self,
        generation: Generation,
        framer: QueryFramer | JsonFramer,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.generation = generation
        self.framer = framer
        self.on_close = on_close
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return relay(self.generation, self.framer, self.aclose)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.generation.aclose()
        finally:
            if self.on_close is not None:
                await self.on_close()


async def relay(
    generation: Generation,
    framer: QueryFramer | JsonFramer,
    on_close: Callable[[], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """Yield the reply's frames; ``on_close`` runs however this ends."""
    try:
        while True:
            items = await generation.take()
            if not items:
                yield KEEPALIVE
                continue
            frames = []
            for item in items:
                if isinstance(item, str):
                    frames.append(framer.token(item))
                else:
                    frames.append(framer.end(item, generation))
                    yield b"".join(frames)
                    return
            yield b"".join(frames)
    finally:
        await on_close()
