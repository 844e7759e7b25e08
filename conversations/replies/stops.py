"""Stopping a reply that another server process produces.

A reply runs in the process that received its request (``running.RUNNING``). With
REDIS_URL set, every process that produces replies also listens on one Redis channel: a stop
request that reaches another process is published there, the process holding the reply stops
it, and the publisher waits until the reply's row is saved. Without Redis there is one
process, and nothing to publish.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable

from django.conf import settings
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from ..errors import Unavailable
from ..models import Message
from ..redis_client import key_prefix, redis_client

logger = logging.getLogger(__name__)

REPUBLISH_SECONDS = 0.5
"""A process whose listener was still subscribing when a stop was published hears the next."""
POLL_SECONDS = 0.05
PING_SECONDS = 30.0
"""An idle listener pings Redis this often, and reconnects if nothing came back for twice as
long (a connection dropped silently, as by a failover or a NAT, would otherwise never wake)."""
RETRY_SECONDS = (1.0, 30.0)
"""The first and the longest wait before listening again after a failure."""

_listeners: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def channel(action: str = "stop") -> str:
    """The channel of requests to the process producing a reply: ``stop`` it, or ``mirror``
    its tokens for readers in other processes (``replies.remote``)."""
    return f"{key_prefix()}:{action}-reply"


Handlers = dict[str, Callable[[int], None]]


def listen_for_requests(handlers: Handlers) -> None:
    """Make sure this process hears requests about its replies (one listener per event loop,
    started by the first reply): ``handlers[action](message_id)`` is called for each."""
    if not settings.REDIS_URL:
        return
    loop = asyncio.get_running_loop()
    listener = _listeners.get(loop)
    if listener is None or listener.done():
        # A context of its own: the listener outlives the request that started it.
        _listeners[loop] = loop.create_task(
            _listen(handlers), name="reply-requests-listener", context=contextvars.Context()
        )


async def _listen(handlers: Handlers) -> None:
    by_channel = {channel(action).encode(): handler for action, handler in handlers.items()}
    retry = RETRY_SECONDS[0]
    while True:
        try:
            async with redis_client().pubsub() as pubsub:
                await pubsub.subscribe(*by_channel)
                if retry > RETRY_SECONDS[0]:
                    logger.warning("listening for stop requests again")
                retry = RETRY_SECONDS[0]
                await _hear(pubsub, by_channel)
        except (RedisError, OSError):
            if retry == RETRY_SECONDS[0]:
                logger.warning("not listening for stop requests; retrying", exc_info=True)
            await asyncio.sleep(retry)
            retry = min(retry * 2, RETRY_SECONDS[1])


async def _hear(pubsub: PubSub, by_channel: dict[bytes, Callable[[int], None]]) -> None:
    heard_at = time.monotonic()
    while True:
        message = await pubsub.get_message(timeout=PING_SECONDS)
        if message is not None:
            heard_at = time.monotonic()
            if message["type"] == "message":
                _handle(by_channel[message["channel"]], message["data"])
        elif time.monotonic() - heard_at > 2 * PING_SECONDS:
            raise ConnectionError("Redis did not answer the listener's ping")
        else:
            await pubsub.ping()


def _handle(handler: Callable[[int], None], data: bytes) -> None:
    try:
        message_id = int(data)
    except ValueError:
        logger.warning("ignored a malformed request about a reply: %r", data[:100])
        return
    handler(message_id)


async def reply_astop_elsewhere(message_id: int) -> bool:
    """Ask the other processes to stop this reply and wait until it is saved; False if none
    did within CHAT_STOP_WAIT_SECONDS (its process died: ``interrupt_stale_replies`` settles
    such rows). Unavailable if Redis cannot be reached."""
    if not settings.REDIS_URL:
        return False
    next_publish = 0.0
    try:
        async with asyncio.timeout(settings.CHAT_STOP_WAIT_SECONDS):
            while True:
                if time.monotonic() >= next_publish:
                    await redis_client().publish(channel("stop"), str(message_id))
                    next_publish = time.monotonic() + REPUBLISH_SECONDS
                await asyncio.sleep(POLL_SECONDS)
                if not await _still_streaming(message_id):
                    return True
    except TimeoutError:
        return False
    except (RedisError, OSError) as error:
        logger.warning("could not ask other processes to stop reply %s", message_id, exc_info=True)
        raise Unavailable(
            "stop_unavailable",
            "The other server processes could not be reached to stop this reply; try again.",
            retry_after=1,
        ) from error


async def _still_streaming(message_id: int) -> bool:
    return await Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).aexists()


async def aclose_listeners() -> None:
    """Stop this loop's listener (for tests, which start and stop loops)."""
    listener = _listeners.pop(asyncio.get_running_loop(), None)
    if listener is not None:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
