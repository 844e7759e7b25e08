"""Stopping a reply that another server process produces.

A reply runs in the process that received its request (``generation.RUNNING``). With
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

from .limits import key_prefix, redis_client
from .models import Message

logger = logging.getLogger(__name__)

STOP_WAIT_SECONDS = 5.0
"""How long a stop request waits for the reply's row to be saved by the process holding it."""
REPUBLISH_SECONDS = 0.5
"""A process whose listener was still subscribing when a stop was published hears the next."""
POLL_SECONDS = 0.05
RESUBSCRIBE_SECONDS = 1.0

_listeners: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


def channel() -> str:
    return f"{key_prefix()}:stop-reply"


def listen_for_stops(stop: Callable[[int], None]) -> None:
    """Make sure this process hears stop requests (one listener per event loop, started by the
    first reply); ``stop(message_id)`` is called for each."""
    if not settings.REDIS_URL:
        return
    loop = asyncio.get_running_loop()
    listener = _listeners.get(loop)
    if listener is None or listener.done():
        # A context of its own: the listener outlives the request that started it.
        _listeners[loop] = loop.create_task(
            _listen(stop), name="stop-listener", context=contextvars.Context()
        )


async def _listen(stop: Callable[[int], None]) -> None:
    while True:
        try:
            async with redis_client().pubsub(ignore_subscribe_messages=True) as pubsub:
                await pubsub.subscribe(channel())
                async for message in pubsub.listen():
                    _stop_named(stop, message["data"])
        except Exception:
            logger.warning(
                "not listening for stop requests; again in %s s", RESUBSCRIBE_SECONDS, exc_info=True
            )
            await asyncio.sleep(RESUBSCRIBE_SECONDS)


def _stop_named(stop: Callable[[int], None], data: bytes) -> None:
    try:
        message_id = int(data)
    except ValueError:
        logger.warning("ignored a malformed stop request: %r", data[:100])
        return
    stop(message_id)


async def reply_astop_elsewhere(message_id: int) -> bool:
    """Ask the other processes to stop this reply and wait until it is saved; False if none
    did in time (its process may have died: ``interrupt_stale_replies`` settles such rows)."""
    if not settings.REDIS_URL:
        return False
    deadline = time.monotonic() + STOP_WAIT_SECONDS
    next_publish = 0.0
    try:
        while time.monotonic() < deadline:
            if time.monotonic() >= next_publish:
                await redis_client().publish(channel(), str(message_id))
                next_publish = time.monotonic() + REPUBLISH_SECONDS
            await asyncio.sleep(POLL_SECONDS)
            if not await _still_streaming(message_id):
                return True
    except Exception:
        logger.warning("could not ask other processes to stop reply %s", message_id, exc_info=True)
    return False


async def _still_streaming(message_id: int) -> bool:
    return await Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).aexists()


async def aclose_listeners() -> None:
    """Stop this loop's listener (for tests, which start and stop loops)."""
    listener = _listeners.pop(asyncio.get_running_loop(), None)
    if listener is not None:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)
