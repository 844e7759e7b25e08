"""Fair limits: requests per minute (fixed window) and concurrent streams per user (FIFO queue).

Request counters and stream slots live in Redis when REDIS_URL is set (shared by every worker;
a dead worker's slots expire) and in this process otherwise (one worker). Both are checked on
the event loop with the asyncio Redis client: one round trip each, no worker thread; a request
that will start a reply is counted and takes a free slot in one (``request_count_and_slot``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import math
import os
import re
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, cast

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest
from redis.exceptions import RedisError

from .errors import Busy, Unavailable
from .redis_client import key_prefix, redis_client

if TYPE_CHECKING:
    import redis.asyncio

logger = logging.getLogger(__name__)


@cache
def trusted_proxies() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(item, strict=False) for item in settings.CHAT_TRUSTED_PROXIES)


def is_trusted_proxy(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted_proxies())


def client_ip(request: HttpRequest) -> str:
    """The socket's address, or, behind trusted proxies, the first untrusted X-Forwarded-For hop."""
    address: str = request.META.get("REMOTE_ADDR", "")
    if not is_trusted_proxy(address):
        return address
    forwarded: str = request.META.get("HTTP_X_FORWARDED_FOR", "")
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted_proxy(hop):
            return hop
    return hops[0] if hops else address


def rate_limit_key(request: HttpRequest, user: AbstractBaseUser | None) -> str:
    return f"user:{user.pk}" if user is not None else f"ip:{client_ip(request)}"


RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\s*$")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Rate:
    """``100/m``: at most 100 requests in each fixed window of a minute (also ``/s``, ``/h``,
    ``/d`` and multiples such as ``10/5m``)."""

    limit: int
    period: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = RATE.match(text)
        if match is None:
            raise ValueError(f"not a rate: {text!r} (expected e.g. 100/m)")
        count, multiple, unit = match.groups()
        return cls(int(count), int(multiple or 1) * SECONDS[unit])

    def window(self, now: float) -> tuple[int, float]:
        """The index of the window ``now`` falls in and the seconds left in it."""
        return int(now // self.period), self.period - now % self.period


class RequestCounter:
    """Counts requests per key in fixed windows."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate

    async def hit(self, key: str) -> tuple[int, float]:
        """Count one request; the count in this window so far and the seconds left in it."""
        raise NotImplementedError


class LocalRequestCounter(RequestCounter):
    def __init__(self, rate: Rate) -> None:
        super().__init__(rate)
        self._counts: dict[str, tuple[int, int]] = {}

    async def hit(self, key: str) -> tuple[int, float]:
        window, seconds_left = self.rate.window(time.time())
        counted_window, count = self._counts.get(key, (window, 0))
        if counted_window != window:
            if len(self._counts) > 10_000:
                self._counts = {k: v for k, v in self._counts.items() if v[0] == window}
            count = 0
        self._counts[key] = (window, count + 1)
        return count + 1, seconds_left


# KEYS: the window's counter. ARGV: its lifetime in seconds. Returns the count.
COUNT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return count
"""


class RedisRequestCounter(RequestCounter):
    def __init__(self, rate: Rate, *, client: redis.asyncio.Redis, prefix: str) -> None:
        super().__init__(rate)
        self.prefix = prefix
        self._count = client.register_script(COUNT_SCRIPT)

    def counter_now(self, key: str) -> tuple[str, float]:
        """The Redis key counting ``key``'s requests in the current window, and the seconds
        left in it."""
        window, seconds_left = self.rate.window(time.time())
        return f"{self.prefix}:requests:{key}:{window}", seconds_left

    async def hit(self, key: str) -> tuple[int, float]:
        counter, seconds_left = self.counter_now(key)
        with redis_failures_as_503():
            count = await self._count(keys=[counter], args=[self.rate.period + 1])
        return int(count), seconds_left


@dataclass(frozen=True)
class RequestWindow:
    """Where a caller stands in its rate-limit window after a request was counted."""

    limit: int
    count: int
    reset: int
    """Seconds until the window ends."""

    @property
    def exceeded(self) -> bool:
        return self.count > self.limit

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.count)


async def request_count(request: HttpRequest, user: AbstractBaseUser | None) -> RequestWindow:
    """Count this request in its fixed window (per user, else per client IP)."""
    counter = request_counter()
    count, seconds_left = await counter.hit(rate_limit_key(request, user))
    return _window(counter, count, seconds_left)


async def request_count_and_slot(
    request: HttpRequest, user: AbstractBaseUser
) -> tuple[RequestWindow, Slot | None]:
    """Count a request that will start a reply (as ``request_count``) and, unless that puts
    it over its limit, take one of the user's stream slots if one is free now (None if not:
    ``stream_slots().acquire`` then queues for one). With Redis both are one round trip, one
    fewer on the way to the first token than counting and then taking the slot (0.25 ms of
    TTFT p50 at steady 50, ``python -m bench.probe steady`` with server-side timestamps)."""
    counter, slots, key = request_counter(), stream_slots(), rate_limit_key(request, user)
    if isinstance(slots, LocalStreamSlots):
        count, seconds_left = await counter.hit(key)
        slot = slots.try_acquire(slot_owner(user)) if count <= counter.rate.limit else None
        return _window(counter, count, seconds_left), slot
    # Both are Redis's exactly when REDIS_URL is set (request_counter, stream_slots).
    counted, seconds_left = cast(RedisRequestCounter, counter).counter_now(key)
    count, slot = await cast(RedisStreamSlots, slots).try_acquire_counting(
        slot_owner(user), counter=counted, limit=counter.rate.limit, ttl=counter.rate.period + 1
    )
    return _window(counter, count, seconds_left), slot


def _window(counter: RequestCounter, count: int, seconds_left: float) -> RequestWindow:
    return RequestWindow(counter.rate.limit, count, max(1, math.ceil(seconds_left)))


def slot_owner(user: AbstractBaseUser) -> str:
    """Whose stream slots a user's reply takes: the user's own."""
    return f"user:{user.pk}"


def streams_busy(retry_after: int, reason: str) -> Busy:
    return Busy(
        "too_many_streams",
        f"Too many streams at once ({reason}); at most {settings.CHAT_STREAMS_PER_USER} "
        "per user. Try again shortly.",
        retry_after=retry_after,
    )


@dataclass
class Slot:
    """A held stream slot; release it exactly once. A slot taken before its reply started
    (``request_count_and_slot``) is ``claimed`` by the reply that holds it from then on."""

    owner: str
    token: str
    pool: StreamSlots
    released: bool = False
    claimed: bool = False

    async def release(self) -> None:
        if not self.released:
            self.released = True
            await self.pool.release(self)


class StreamSlots:
    def __init__(self, *, limit: int, queue_length: int, wait_seconds: float, ttl: float) -> None:
        self.limit = limit
        self.queue_length = queue_length
        self.wait_seconds = wait_seconds
        self.ttl = ttl

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.wait_seconds))

    async def acquire(self, owner: str) -> Slot:
        """A slot of ``owner``'s, waiting in line for one if none is free (Busy when the line
        is full or no slot frees in time)."""
        raise NotImplementedError

    async def release(self, slot: Slot) -> None:
        raise NotImplementedError


@dataclass
class _Local:
    in_use: dict[str, float] = field(default_factory=dict)
    waiters: deque[tuple[str, asyncio.Future[None]]] = field(default_factory=deque)


class LocalStreamSlots(StreamSlots):
    """Slots for one process; waiters are served first in, first out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._owners: dict[str, _Local] = {}
        self._tokens = itertools.count()

    def _state(self, owner: str) -> _Local:
        state = self._owners.setdefault(owner, _Local())
        now = time.monotonic()
        for token, expires in list(state.in_use.items()):
            if expires < now:
                del state.in_use[token]
        return state

    def try_acquire(self, owner: str) -> Slot | None:
        """A slot of ``owner``'s if one is free now and nobody is waiting for one, else None."""
        state = self._state(owner)
        if len(state.in_use) < self.limit and not state.waiters:
            token = str(next(self._tokens))
            state.in_use[token] = time.monotonic() + self.ttl
            return Slot(owner, token, self)
        return None

    async def acquire(self, owner: str) -> Slot:
        if (free := self.try_acquire(owner)) is not None:
            return free
        state = self._state(owner)
        token = str(next(self._tokens))
        if len(state.waiters) >= self.queue_length:
            raise streams_busy(self.retry_after, "the queue is full")
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (token, granted)
        state.waiters.append(entry)
        try:
            await asyncio.wait([granted], timeout=self.wait_seconds)
        finally:
            if not granted.done():
                state.waiters.remove(entry)
                granted.cancel()
            elif (task := asyncio.current_task()) is not None and task.cancelling():
                await Slot(owner, token, self).release()
        if granted.cancelled():
            raise streams_busy(self.retry_after, "no slot freed in time")
        return Slot(owner, token, self)

    async def release(self, slot: Slot) -> None:
        state = self._owners.get(slot.owner)
        if state is None or state.in_use.pop(slot.token, None) is None:
            return
        while state.waiters:
            token, granted = state.waiters.popleft()
            if not granted.done():
                state.in_use[token] = time.monotonic() + self.ttl
                granted.set_result(None)
                return
        if not state.in_use:
            del self._owners[slot.owner]


# KEYS: slots, queue. ARGV: now, expires, limit, member, queue_length, queue_expired_before.
# Returns 1 (slot taken), 0 (waiting in the queue) or -1 (queue full).
ACQUIRE_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[6])
local free = tonumber(ARGV[3]) - redis.call('ZCARD', KEYS[1])
local rank = redis.call('ZRANK', KEYS[2], ARGV[4])
if not rank then
  if free > 0 and redis.call('ZCARD', KEYS[2]) == 0 then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
    return 1
  end
  if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then
    return -1
  end
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[4])
  return 0
end
if rank < free then
  redis.call('ZREM', KEYS[2], ARGV[4])
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  return 1
end
return 0
"""


# KEYS: slots, queue, a request counter. ARGV: now, expires, limit, member,
# queue_expired_before, the counter's lifetime, the request limit. Counts the request (as
# COUNT_SCRIPT) and, within the request limit, takes a free slot if nobody waits for one.
# Returns {count, 1 (slot taken) or 0 (none)}.
COUNT_AND_TRY_SCRIPT = """
local count = redis.call('INCR', KEYS[3])
if count == 1 then
  redis.call('EXPIRE', KEYS[3], ARGV[6])
end
if count > tonumber(ARGV[7]) then
  return {count, 0}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[5])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) and redis.call('ZCARD', KEYS[2]) == 0 then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
  return {count, 1}
end
return {count, 0}
"""


class RedisStreamSlots(StreamSlots):
    """Slots shared by every process through Redis; a slot expires after ``ttl`` seconds."""

    poll_seconds = 0.05

    def __init__(self, *, client: redis.asyncio.Redis, prefix: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.redis = client
        self.prefix = prefix
        self._acquire = self.redis.register_script(ACQUIRE_SCRIPT)
        self._count_and_try = self.redis.register_script(COUNT_AND_TRY_SCRIPT)

    async def try_acquire_counting(
        self, owner: str, *, counter: str, limit: int, ttl: int
    ) -> tuple[int, Slot | None]:
        """Count a request on ``counter`` (a RedisRequestCounter's key, kept ``ttl`` seconds)
        and, if the count is within ``limit``, take a slot of ``owner``'s if one is free and
        nobody waits for one; one round trip. The count, and the slot or None."""
        member = f"{os.getpid()}:{uuid.uuid4().hex}"
        now = time.time()
        args: list[float | str] = [now, now + self.ttl, self.limit, member]
        args += [now - self.wait_seconds - 5, ttl, limit]
        with redis_failures_as_503():
            count, taken = await self._count_and_try(keys=[*self._keys(owner), counter], args=args)
        return int(count), Slot(owner, member, self) if taken else None

    def _keys(self, owner: str) -> list[str]:
        return [f"{self.prefix}:streams:{owner}:slots", f"{self.prefix}:streams:{owner}:queue"]

    async def _try(self, owner: str, member: str) -> int:
        now = time.time()
        args: list[float | str] = [now, now + self.ttl, self.limit, member, self.queue_length]
        args.append(now - self.wait_seconds - 5)
        return int(await self._acquire(keys=self._keys(owner), args=args))

    async def acquire(self, owner: str) -> Slot:
        member = f"{os.getpid()}:{uuid.uuid4().hex}"
        slots_key, queue_key = self._keys(owner)
        deadline = time.monotonic() + self.wait_seconds
        with redis_failures_as_503():
            try:
                while (result := await self._try(owner, member)) == 0:
                    if time.monotonic() >= deadline:
                        raise streams_busy(self.retry_after, "no slot freed in time")
                    await asyncio.sleep(self.poll_seconds)
            except BaseException:
                with contextlib.suppress(RedisError, OSError):
                    await asyncio.shield(self.redis.zrem(queue_key, member))
                raise
        if result < 0:
            raise streams_busy(self.retry_after, "the queue is full")
        return Slot(owner, member, self)

    async def release(self, slot: Slot) -> None:
        try:
            await asyncio.shield(self.redis.zrem(self._keys(slot.owner)[0], slot.token))
        except (RedisError, OSError):
            logger.warning("a stream slot could not be given back; it expires", exc_info=True)


@contextlib.contextmanager
def redis_failures_as_503() -> Iterator[None]:
    """Redis unreachable: the limits cannot be checked, so the request is refused (logged for
    operators), not failed."""
    try:
        yield
    except (RedisError, OSError) as error:
        logger.error("the limits cannot be checked: Redis failed", exc_info=True)
        raise Unavailable(
            "limits_unavailable",
            "The service cannot check its limits right now; try again shortly.",
            retry_after=5,
        ) from error


@cache
def request_counter() -> RequestCounter:
    rate = Rate.parse(settings.CHAT_RATE_LIMIT)
    if settings.REDIS_URL:
        return RedisRequestCounter(rate, client=redis_client(), prefix=key_prefix())
    return LocalRequestCounter(rate)


@cache
def stream_slots() -> StreamSlots:
    options = {
        "limit": settings.CHAT_STREAMS_PER_USER,
        "queue_length": settings.CHAT_STREAM_QUEUE_LENGTH,
        "wait_seconds": settings.CHAT_STREAM_QUEUE_WAIT_SECONDS,
        "ttl": settings.CHAT_STREAM_MAX_SECONDS + 60,
    }
    if settings.REDIS_URL:
        return RedisStreamSlots(client=redis_client(), prefix=key_prefix(), **options)
    return LocalStreamSlots(**options)
