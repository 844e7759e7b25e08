"""Reading a reply that another server process produces, through Redis Streams.

Nothing is written to Redis per token for a reply nobody reads from elsewhere. A process that
wants a reply it does not produce (a client resuming or attaching through it) says so on the
``mirror`` channel and counts itself among the reply's remote readers; the producing process
then copies the reply's tokens into a Redis stream (``<prefix>:reply:<id>:frames``), one entry
per batch that was ready at once (the backlog first), and an ``end`` entry, for as long as
remote readers are present. Each entry says at which token it starts, so readers that join
late skip what they have. While a remote reader is present, the mirror counts as a client of
the reply (the detach grace counts clients in every process); when none is left, it detaches.

A reply that a client left before its end is copied whole when it ends (one entry), so a
client that resumes it through another process gets it frame for frame while the stream is
kept (CHAT_REPLY_RETENTION_SECONDS).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.conf import settings
from redis.exceptions import RedisError

from ..redis_client import key_prefix, redis_client
from ..services import messages_mark_interrupted
from ..sse import KEEPALIVE
from .heartbeats import replies_aalive
from .reply import INTERRUPTED, Finished, Reply
from .stops import channel

if TYPE_CHECKING:
    from ..streams import JsonFramer, QueryFramer

logger = logging.getLogger(__name__)

READ_BLOCK_MS = 1000
PRESENCE_SECONDS = 3.0
"""A remote reader that has not said it is there for this long has gone."""
MAX_ENTRIES = 50_000
LOST = Finished(
    "error", "resume_unavailable", "Part of this reply is no longer kept; reload the page."
)

# KEYS: the readers set. ARGV: the reader, seconds its word lasts.
PRESENT_SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('EXPIRE', KEYS[1], 3600)
return 1
"""
# KEYS: the readers set. Returns how many readers are present.
COUNT_SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""


def frames_key(message_id: int) -> str:
    return f"{key_prefix()}:reply:{message_id}:frames"


def readers_key(message_id: int) -> str:
    return f"{key_prefix()}:reply:{message_id}:readers"


# -- the producing process ------------------------------------------------------------------

_mirrors: dict[int, asyncio.Task[None]] = {}


def mirror_running(reply: Reply | None) -> None:
    """Copy ``reply`` (produced here) to Redis for readers elsewhere, unless already."""
    if reply is None or reply.message_id in _mirrors or reply.finished is not None:
        return
    _, message_id = reply.rows
    task = asyncio.get_running_loop().create_task(
        _mirror(reply), name="reply-mirror", context=contextvars.Context()
    )
    _mirrors[message_id] = task
    task.add_done_callback(lambda _: _mirrors.pop(message_id, None))


async def _mirror(reply: Reply) -> None:
    _, message_id = reply.rows
    count_readers = redis_client().register_script(COUNT_SCRIPT)
    reply.attach()
    position = reply.mirrored
    try:
        next_count = 0.0
        while True:
            try:
                async with asyncio.timeout(1.0):
                    await reply.wait_beyond(position)
            except TimeoutError:
                pass
            position = await _copy(reply, position)
            if reply.finished is not None and position == reply.token_count:
                await _copy_end(reply)
                return
            if time.monotonic() >= next_count:
                next_count = time.monotonic() + 1.0
                if not await count_readers(keys=[readers_key(message_id)]):
                    return
    except (RedisError, OSError):
        logger.warning("reply %s could not be copied for other processes", message_id)
    finally:
        reply.mirrored = position
        reply.detach()


async def _copy(reply: Reply, position: int) -> int:
    tokens = reply.tokens_from(position)
    if tokens:
        await redis_client().xadd(
            frames_key(reply.rows[1]),
            {"from": position, "t": json.dumps(tokens, ensure_ascii=False)},
            maxlen=MAX_ENTRIES,
            approximate=True,
        )
    return position + len(tokens)


async def _copy_end(reply: Reply) -> None:
    finished = reply.finished
    if finished is None:
        raise RuntimeError("a reply's end is copied only once it has ended")
    end = [finished.status, finished.error_code, finished.error_message]
    conversation_id, message_id = reply.rows
    key = frames_key(message_id)
    async with redis_client().pipeline(transaction=False) as pipe:
        pipe.xadd(key, {"end": json.dumps(end), "conversation": conversation_id})
        pipe.expire(key, max(1, round(settings.CHAT_REPLY_RETENTION_SECONDS)))
        await pipe.execute()


async def reply_akeep_for_resume(reply: Reply) -> None:
    """When a reply a client left ends, copy it whole, so it can be resumed through any
    process (one entry per reply, not per token; the mirror, if one ran, has done it)."""
    if not settings.REDIS_URL or reply.message_id in _mirrors:
        return
    if not (reply.detached_ever or reply.attached == 0):
        return
    try:
        await _copy(reply, 0)
        await _copy_end(reply)
    except (RedisError, OSError):
        logger.warning("reply %s could not be kept for resuming elsewhere", reply.message_id)


# -- a reading process ----------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteReply:
    """A reply of another process (running, or ended and still kept in Redis)."""

    message_id: int
    conversation_id: int


async def reply_akept_elsewhere(message_id: int) -> bool:
    """Whether Redis still keeps an ended reply's frames."""
    if not settings.REDIS_URL:
        return False
    try:
        return bool(await redis_client().exists(frames_key(message_id)))
    except (RedisError, OSError):
        return False


async def kept_token_count(message_id: int) -> int | None:
    """How many tokens a reply kept in Redis has, if its end is there."""
    entries = await redis_client().xrange(frames_key(message_id))
    total = 0
    for _, fields in entries:
        if b"t" in fields:
            total = max(total, int(fields[b"from"]) + len(json.loads(fields[b"t"])))
        elif b"end" in fields:
            return total
    return None


class RemoteFrames:
    """A response body that reads a reply another process produces, from ``position`` on.
    ``framer`` is a QueryFramer or JsonFramer (``conversations.streams``)."""

    def __init__(
        self,
        remote: RemoteReply,
        framer: QueryFramer | JsonFramer,
        *,
        position: int,
        keepalive: float,
    ) -> None:
        self.remote = remote
        self.framer = framer
        self.position = position
        self.keepalive = keepalive
        self.reader = uuid.uuid4().hex
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RedisError, OSError):  # else the reader's word expires
            await asyncio.shield(
                redis_client().zrem(readers_key(self.remote.message_id), self.reader)
            )

    async def _frames(self) -> AsyncIterator[bytes]:
        message_id = self.remote.message_id
        client = redis_client()
        present = client.register_script(PRESENT_SCRIPT)
        stream = frames_key(message_id)
        last_entry = "0-0"
        position = self.position
        try:
            start = self.framer.start()
            if start:
                yield start
            await present(keys=[readers_key(message_id)], args=[self.reader, PRESENCE_SECONDS])
            await client.publish(channel("mirror"), str(message_id))
            said_at = quiet_since = time.monotonic()
            while True:
                entries = await client.xread({stream: last_entry}, count=500, block=READ_BLOCK_MS)
                now = time.monotonic()
                if now - said_at >= 1.0:
                    said_at = now
                    await present(
                        keys=[readers_key(message_id)], args=[self.reader, PRESENCE_SECONDS]
                    )
                if not entries:
                    if not await replies_aalive([message_id]):
                        # Its process died: the row keeps the text of its last checkpoint.
                        await sync_to_async(messages_mark_interrupted)(message_ids=[message_id])
                        yield self._end(INTERRUPTED)
                        return
                    # The producer may have missed the request, or its mirror stopped.
                    await client.publish(channel("mirror"), str(message_id))
                    if now - quiet_since >= self.keepalive:
                        quiet_since = now
                        yield KEEPALIVE
                    continue
                quiet_since = now
                frames = []
                for entry, fields in entries[0][1]:
                    last_entry = entry
                    if b"end" in fields:
                        finished = Finished(*json.loads(fields[b"end"]))
                        frames.append(self._end(finished))
                        yield b"".join(frames)
                        return
                    first = int(fields[b"from"])
                    if first > position:
                        frames.append(self._end(LOST))
                        yield b"".join(frames)
                        return
                    tokens = json.loads(fields[b"t"])[position - first :]
                    position += len(tokens)
                    frames.extend(self.framer.token(token) for token in tokens)
                if frames:
                    yield b"".join(frames)
        finally:
            await self.aclose()

    def _end(self, finished: Finished) -> bytes:
        return self.framer.end(finished, self.remote.conversation_id, self.remote.message_id)
