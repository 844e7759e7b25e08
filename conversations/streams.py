"""Writing a reply to one HTTP response: the frame formats of the two stream endpoints, and
the response body that attaches to a reply at a position and detaches when it ends."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from .models import Message
from .replies import Finished, Reply
from .sse import KEEPALIVE, encode_event, encode_json_data, json_encode

FAILED = {Message.Status.ERROR, Message.Status.INTERRUPTED}
RETRY_MILLISECONDS = 2000
"""How long EventSource waits before it reconnects (sent first on the GET stream)."""


def error_frame(finished: Finished, *, id: str | None = None) -> bytes:
    payload = {"code": finished.error_code, "message": finished.error_message}
    return encode_event(json_encode(payload), event="error", id=id)


class QueryFramer:
    """``GET`` frames for EventSource: ``retry:`` first, then per token an ``id:`` naming the
    reply and how many of its frames the client has with this one (``<message id>-<n>``, read
    back by ``inputs.last_event_id_from``) and the token as a JSON string; ``[DONE]`` last."""

    def __init__(self, message_id: int, position: int = 0) -> None:
        self.prefix = b"id: %d-" % message_id
        self.position = position

    def start(self) -> bytes:
        return b"retry: %d\n\n" % RETRY_MILLISECONDS

    def token(self, text: str) -> bytes:
        self.position += 1
        return b"%s%d\ndata: %s\n\n" % (
            self.prefix,
            self.position,
            json_encode(text).encode("utf-8", "replace"),
        )

    def end(self, finished: Finished, conversation_id: int, message_id: int) -> bytes:
        self.position += 1
        if finished.status in FAILED:
            return error_frame(finished, id=f"{message_id}-{self.position}")
        return b"%s%d\ndata: [DONE]\n\n" % (self.prefix, self.position)


class JsonFramer:
    """``POST`` frames: exactly one ``data:`` line of JSON per frame, nothing else."""

    def start(self) -> bytes:
        return b""

    def token(self, text: str) -> bytes:
        return b'data: {"token": %s, "done": false}\n\n' % json_encode(text).encode(
            "utf-8", "replace"
        )

    def end(self, finished: Finished, conversation_id: int, message_id: int) -> bytes:
        if finished.status in FAILED:
            return error_frame(finished)
        return encode_json_data(
            {
                "token": "",
                "done": True,
                "conversation_id": conversation_id,
                "message_id": message_id,
                "status": finished.status,
            }
        )


async def saved_reply_frames(message: Message, *, after: int) -> AsyncGenerator[bytes, None]:
    """The frames of a reply that ended and whose tokens are no longer kept, in the POST
    stream's format: its saved text as one token frame (sent when ``after`` is 0), then the
    final frame."""
    framer = JsonFramer()
    frames = [framer.token(message.content)] if after == 0 and message.content else []
    frames.append(framer.end(Finished.of(message), message.conversation_id, message.pk))
    yield b"".join(frames)


class ReplyFrames:
    """A reply's frames from ``position`` on, as a response body, attached to the reply from
    the start (``joining``: to resume or watch it, which the reply counts, rather than as the
    response that started it). However the response ends, even if it is never sent (the
    client left before its first frame), ``aclose`` detaches it and runs ``on_close``; calling
    it again does nothing."""

    def __init__(
        self,
        reply: Reply,
        framer: QueryFramer | JsonFramer,
        *,
        position: int = 0,
        joining: bool = True,
        on_close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.reply = reply
        self.framer = framer
        self.position = position
        self.on_close = on_close
        self._closed = False
        if joining:
            reply.reattach()
        else:
            reply.attach()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return relay(self.reply, self.framer, self.position, self.aclose)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.reply.detach():
            # Stopped at once, without a grace: the response ends once the reply is saved.
            await self.reply.aended()
        if self.on_close is not None:
            await self.on_close()


async def relay(
    reply: Reply,
    framer: QueryFramer | JsonFramer,
    position: int,
    on_close: Callable[[], Awaitable[None]],
) -> AsyncIterator[bytes]:
    """Yield the reply's frames past ``position``; ``on_close`` runs however this ends."""
    try:
        start = framer.start()
        if start:
            yield start
        while True:
            if not await reply.wait_beyond(position):
                yield KEEPALIVE
                continue
            tokens = reply.tokens_from(position)
            position += len(tokens)
            frames = [framer.token(token) for token in tokens]
            if reply.finished is not None and position == reply.token_count:
                frames.append(framer.end(reply.finished, *reply.rows))
                yield b"".join(frames)
                return
            yield b"".join(frames)
    finally:
        await on_close()
