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

Round trips are per process, not per reader or per token: the mirrors' entries of one event
loop round go out in one pipeline (``EntriesBatch``), and a process reads every reply it
relays from elsewhere with one blocking ``XREAD`` (``FramesHub``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT, KeyT, StreamIdT

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
        fields: dict[FieldT, EncodableT] = {
            "from": position,
            "t": json.dumps(tokens, ensure_ascii=False),
        }
        await entries_batch().xadd(frames_key(reply.rows[1]), fields)
    return position + len(tokens)


Queued = tuple[str, dict[FieldT, EncodableT], asyncio.Future[None]]
"""A stream, an entry's fields, and the future told when the entry was written."""


class EntriesBatch:
    """The mirrors' writes, sent together: every entry added while the event loop runs one
    round goes out in one pipeline at the start of the next. Replies read elsewhere whose
    tokens arrive together (an upstream tick, a busy loop) cost one round trip, not one each.
    """

    def __init__(self) -> None:
        self._queued: list[Queued] = []

    async def xadd(self, stream: str, fields: dict[FieldT, EncodableT]) -> None:
        """Add the entry to ``stream`` (capped at MAX_ENTRIES); raises what Redis raised."""
        loop = asyncio.get_running_loop()
        written = loop.create_future()
        if not self._queued:
            loop.call_soon(self._send_queued)
        self._queued.append((stream, fields, written))
        await written

    def _send_queued(self) -> None:
        queued, self._queued = self._queued, []
        _in_background(self._send(queued), "mirror-entries")

    async def _send(self, queued: list[Queued]) -> None:
        try:
            async with redis_client().pipeline(transaction=False) as pipe:
                for stream, fields, _ in queued:
                    pipe.xadd(stream, fields, maxlen=MAX_ENTRIES, approximate=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            for _, _, written in queued:
                if not written.done():
                    written.set_exception(exc)
        else:
            for _, _, written in queued:
                if not written.done():
                    written.set_result(None)


_batches: dict[asyncio.AbstractEventLoop, EntriesBatch] = {}


def entries_batch() -> EntriesBatch:
    """This event loop's batch."""
    return _this_loops(_batches, EntriesBatch)


_T = TypeVar("_T")
_background: set[asyncio.Task[None]] = set()


def _this_loops(instances: dict[asyncio.AbstractEventLoop, _T], make: Callable[[], _T]) -> _T:
    """The instance of the running event loop (one per loop: the tests run several), made on
    first use; those of closed loops are dropped."""
    loop = asyncio.get_running_loop()
    instance = instances.get(loop)
    if instance is None:
        for stale in [other for other in instances if other.is_closed()]:
            del instances[stale]
        instance = instances[loop] = make()
    return instance


def _in_background(work: Coroutine[Any, Any, None], name: str) -> None:
    """Run ``work`` on its own (a fresh context: nothing of the request that started it),
    referenced until it ends."""
    task = asyncio.get_running_loop().create_task(work, name=name, context=contextvars.Context())
    _background.add(task)
    task.add_done_callback(_background.discard)


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


class FramesHub:
    """One blocking ``XREAD`` for every reply this process reads from elsewhere, instead of
    one per reader: with 50 readers of replies paced at 50 tokens a second, 2,500 reads a
    second became a few hundred, each returning what every reader has waiting. A reader
    (``subscribe``) says from which entry it reads; the hub delivers each entry past it. A new
    reader wakes the hub's pending read (an entry in the hub's own wake stream), so it is in
    the next read at once."""

    def __init__(self) -> None:
        self.readers: dict[str, set[HubReader]] = {}
        self.wake_key = f"{key_prefix()}:frames-hub:{uuid.uuid4().hex}"
        self._wake_last = "0-0"
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, stream: str, last_entry: str) -> HubReader:
        reader = HubReader(self, stream, last_entry)
        self.readers.setdefault(stream, set()).add(reader)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._read(), name="frames-hub", context=contextvars.Context()
            )
        else:
            self._wake()
        return reader

    def unsubscribe(self, reader: HubReader) -> None:
        readers = self.readers.get(reader.stream)
        if readers is not None:
            readers.discard(reader)
            if not readers:
                del self.readers[reader.stream]

    def _wake(self) -> None:
        """Cut the pending read short (fire and forget: a wake that fails costs at most one
        ``READ_BLOCK_MS``)."""

        async def wake() -> None:
            with contextlib.suppress(RedisError, OSError):
                async with redis_client().pipeline(transaction=False) as pipe:
                    pipe.xadd(self.wake_key, {"w": 1}, maxlen=10, approximate=False)
                    pipe.expire(self.wake_key, 60)
                    await pipe.execute()

        _in_background(wake(), "frames-hub-wake")

    async def _read(self) -> None:
        client = redis_client()
        try:
            while self.readers:
                streams: dict[KeyT, StreamIdT] = {self.wake_key: self._wake_last}
                for stream, readers in self.readers.items():
                    streams[stream] = min((r.last_entry for r in readers), key=entry_order)
                result = await client.xread(streams, count=500, block=READ_BLOCK_MS)
                for key, entries in result or ():
                    stream = key.decode()
                    if stream == self.wake_key:
                        self._wake_last = entries[-1][0].decode()
                        continue
                    for reader in list(self.readers.get(stream, ())):
                        reader.deliver(entries)
        except (RedisError, OSError) as exc:
            for readers in list(self.readers.values()):
                for reader in readers:
                    reader.fail(exc)
            self.readers.clear()


_hubs: dict[asyncio.AbstractEventLoop, FramesHub] = {}


def frames_hub() -> FramesHub:
    """This event loop's hub."""
    return _this_loops(_hubs, FramesHub)


def entry_order(entry: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry.partition("-")
    return int(milliseconds), int(sequence or 0)


class HubReader:
    """One reader's share of the hub: the entries past ``last_entry``, as ``XREAD`` would
    return them for its stream alone."""

    __slots__ = ("hub", "stream", "last_entry", "_entries", "_waiter", "_error")

    def __init__(self, hub: FramesHub, stream: str, last_entry: str) -> None:
        self.hub = hub
        self.stream = stream
        self.last_entry = last_entry
        self._entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    def deliver(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        after = entry_order(self.last_entry)
        fresh = [entry for entry in entries if entry_order(entry[0].decode()) > after]
        if fresh:
            self._entries.extend(fresh)
            self.last_entry = fresh[-1][0].decode()
            self._wake()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_entries(self, timeout: float) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """What arrived past the last call, waiting up to ``timeout`` for something; [] if
        nothing came."""
        if not self._entries and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                pass
            finally:
                self._waiter = None
        if self._error is not None:
            raise self._error
        entries, self._entries = self._entries, []
        return entries

    def close(self) -> None:
        self.hub.unsubscribe(self)


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
        position = self.position
        reading = frames_hub().subscribe(stream, "0-0")
        try:
            start = self.framer.start()
            if start:
                yield start
            await present(keys=[readers_key(message_id)], args=[self.reader, PRESENCE_SECONDS])
            await client.publish(channel("mirror"), str(message_id))
            said_at = quiet_since = time.monotonic()
            while True:
                entries = await reading.next_entries(READ_BLOCK_MS / 1000)
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
                for _, fields in entries:
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
            reading.close()
            await self.aclose()

    def _end(self, finished: Finished) -> bytes:
        return self.framer.end(finished, self.remote.conversation_id, self.remote.message_id)
