"""Which streaming replies still have a producer: a heartbeat in Redis.

A process that produces replies says so in one Redis sorted set (``<prefix>:replies-alive``,
the reply's id scored with the time its word expires, by Redis's clock): once for each reply
as soon as it starts, and for all of its replies every CHAT_HEARTBEAT_SECONDS. A word expires
after three beats, so a process that dies (killed, out of memory) stops vouching for its
replies within three beats, and ``interrupt_stale_replies`` may then settle them; a reply
whose producer is alive is never touched, however old it is. One command per beat, never one
per token. Without REDIS_URL there is one process and no heartbeat: the command goes by age.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Collection

from django.conf import settings
from redis.exceptions import RedisError

from ..redis_client import key_prefix, redis_client, sync_redis_client

logger = logging.getLogger(__name__)

BEATS_TO_EXPIRE = 3

# KEYS: the set. ARGV: seconds a word lasts, then reply ids. Scores are by Redis's clock, so
# the clocks of the processes do not matter.
BEAT_SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[i])
end
return #ARGV - 1
"""

# KEYS: the set. ARGV: reply ids. Returns those whose producer's word has not expired.
ALIVE_SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local alive = {}
for i = 1, #ARGV do
  local expires = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if expires and tonumber(expires) > now then
    table.insert(alive, ARGV[i])
  end
end
return alive
"""


def key() -> str:
    return f"{key_prefix()}:replies-alive"


class Heart:
    """One event loop's heartbeat task: new replies are announced at once (coalesced), all
    running ones every ``interval`` seconds."""

    def __init__(self, running: Callable[[], Collection[int]], interval: float) -> None:
        self.running = running
        self.interval = interval
        self.new: set[int] = set()
        self.wake = asyncio.Event()
        self.beat = redis_client().register_script(BEAT_SCRIPT)
        self.failing = False
        # A context of its own: the task outlives the request that started it.
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name="reply-heartbeat", context=contextvars.Context()
        )

    def announce(self, message_id: int) -> None:
        self.new.add(message_id)
        self.wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_full_beat = loop.time()
        while True:
            try:
                async with asyncio.timeout(max(0.0, next_full_beat - loop.time())):
                    await self.wake.wait()
            except TimeoutError:
                pass
            self.wake.clear()
            if loop.time() >= next_full_beat:
                ids = set(self.running())
                next_full_beat = loop.time() + self.interval
            else:
                ids = self.new & set(self.running())
            self.new.clear()
            if ids:
                await self._send(ids)

    async def _send(self, ids: set[int]) -> None:
        try:
            await self.beat(keys=[key()], args=[self.interval * BEATS_TO_EXPIRE, *ids])
        except (RedisError, OSError):
            if not self.failing:
                logger.warning("replies' heartbeat cannot reach Redis; retrying", exc_info=True)
            self.failing = True
        else:
            if self.failing:
                logger.warning("replies' heartbeat reaches Redis again")
            self.failing = False


_hearts: dict[asyncio.AbstractEventLoop, Heart] = {}


def reply_announce(message_id: int, *, running: Callable[[], Collection[int]]) -> None:
    """Say that this process produces ``message_id`` (and, from now on, every reply that
    ``running()`` lists). Does nothing without REDIS_URL."""
    if not settings.REDIS_URL:
        return
    loop = asyncio.get_running_loop()
    heart = _hearts.get(loop)
    if heart is None or heart.task.done():
        heart = _hearts[loop] = Heart(running, settings.CHAT_HEARTBEAT_SECONDS)
    heart.announce(message_id)


def replies_alive(message_ids: Collection[int]) -> set[int]:
    """Those of ``message_ids`` whose producer has beaten lately (synchronous, for commands).
    Without REDIS_URL: none is known to be. Raises RedisError if Redis cannot be reached."""
    if not settings.REDIS_URL or not message_ids:
        return set()
    alive = sync_redis_client().register_script(ALIVE_SCRIPT)(keys=[key()], args=list(message_ids))
    return {int(message_id) for message_id in alive}


async def replies_aalive(message_ids: Collection[int]) -> set[int]:
    """replies_alive on the event loop."""
    if not settings.REDIS_URL or not message_ids:
        return set()
    alive = await redis_client().register_script(ALIVE_SCRIPT)(keys=[key()], args=list(message_ids))
    return {int(message_id) for message_id in alive}


async def aclose_hearts() -> None:
    """Stop this loop's heartbeat (for tests, which start and stop loops)."""
    heart = _hearts.pop(asyncio.get_running_loop(), None)
    if heart is not None:
        heart.task.cancel()
        await asyncio.gather(heart.task, return_exceptions=True)
