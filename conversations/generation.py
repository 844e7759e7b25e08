"""One assistant reply in flight, from the first upstream call to its single finalisation.

The producing side (a task iterating the provider) and the writing side (whoever calls
``take``) are separate, so a reply can later outlive or be stopped apart from one HTTP response.
Nothing here runs a timer per token: keep-alives and the time limit are one timer each per reply.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from .errors import Conflict
from .heartbeats import reply_announce
from .models import Conversation, Message
from .providers import ChatMessage, ChatProvider, ProviderError, StreamOutcome, get_provider
from .selectors import message_aget_owned
from .services import (
    ChatRequest,
    OpenedReply,
    message_acheckpoint,
    message_aclose_abandoned,
    message_afinalize,
    new_conversation_prompt,
    reply_aopen,
)
from .stops import listen_for_stops, reply_astop_elsewhere
from .storable import storable

logger = logging.getLogger(__name__)

CANCEL_RETRY_SECONDS = 0.05

RUNNING: dict[int, Generation] = {}
"""Replies being produced in this process, by assistant message id (for stop requests)."""


@dataclass(frozen=True)
class Finished:
    """The last item of every reply."""

    status: str
    error_code: str = ""
    error_message: str = ""


CANCELLED = Finished(Message.Status.CANCELLED)
TIMED_OUT = Finished(
    Message.Status.ERROR, "stream_timeout", "The reply took too long and was stopped."
)
INTERRUPTED = Finished(
    Message.Status.INTERRUPTED, "interrupted", "The server stopped before this reply finished."
)
INTERNAL_ERROR = Finished(
    Message.Status.ERROR, "internal_error", "The reply failed because of an error on the server."
)
NOT_SAVED = Finished(Message.Status.ERROR, "save_failed", "The reply could not be saved.")


def too_long(max_chars: int) -> Finished:
    return Finished(
        Message.Status.ERROR,
        "reply_too_long",
        f"The reply passed the limit of {max_chars} characters and was stopped.",
    )


class Generation:
    def __init__(
        self,
        *,
        provider: ChatProvider,
        keepalive_seconds: float,
        max_seconds: float,
        checkpoint_seconds: float = 0.0,
        max_chars: int = 200_000,
    ) -> None:
        self.provider = provider
        self.max_chars = max_chars
        self.conversation_id: int | None = None
        self.message_id: int | None = None
        self.keepalive_seconds = keepalive_seconds
        self.max_seconds = max_seconds
        self.checkpoint_seconds = checkpoint_seconds
        self._parts: list[str] = []
        self._checkpointed = 0
        self._checkpoint: asyncio.TimerHandle | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self._items: list[str | Finished] = []
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._cancel_retry: asyncio.TimerHandle | None = None
        self._last_take = 0.0
        self._stop_reason: str | None = None
        self._finalising = False
        self._saved: asyncio.Future[bool] | None = None

    def start(self, prompt: Sequence[ChatMessage]) -> None:
        """Send the prompt upstream; the rows may be bound later, before the reply is saved."""
        loop = asyncio.get_running_loop()
        self._last_take = loop.time()
        self._saved = loop.create_future()
        self._task = loop.create_task(self._produce(prompt), name="reply")
        self._deadline = loop.call_later(self.max_seconds, self.stop, "timeout")
        if self.keepalive_seconds > 0:
            self._keepalive = loop.call_later(self.keepalive_seconds, self._keepalive_tick)
        if self.checkpoint_seconds > 0:
            self._checkpoint = loop.call_later(self.checkpoint_seconds, self._checkpoint_tick)

    async def take(self) -> list[str | Finished]:
        """All items produced since the last call; an empty list means: send a keep-alive."""
        if not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        items, self._items = self._items, []
        self._last_take = asyncio.get_running_loop().time()
        return items

    def bind(self, *, conversation_id: int, message_id: int) -> None:
        """The saved rows this reply finalises."""
        self.conversation_id, self.message_id = conversation_id, message_id
        if not self._finalising:
            RUNNING[message_id] = self
            listen_for_stops(stop_running)
            reply_announce(message_id, running=RUNNING.keys)
        self._saved.set_result(True)

    async def adiscard(self) -> None:
        """Stop a reply whose rows could not be saved; it then saves nothing."""
        self._saved.set_result(False)
        self.stop("discarded")
        await asyncio.wait([self._task])

    def stop(self, reason: str = "cancelled") -> None:
        """Stop producing: the upstream request is closed and the partial reply saved."""
        task = self._task
        if task is None or task.done() or self._finalising or self._stop_reason:
            return
        loop = asyncio.get_running_loop()
        if task.cancelling():
            # Being cancelled already: a server shutting down cancels every task at once, and
            # such a reply is saved as interrupted. But the count can also be left above zero by
            # code below (seen while the upstream request was on its way), so a task still
            # running shortly after is stopped as asked.
            self._cancel_retry = loop.call_later(CANCEL_RETRY_SECONDS, self._stop_late, reason)
            return
        self._stop_reason = reason
        self._cancel()

    def _stop_late(self, reason: str) -> None:
        if not (self._task.done() or self._finalising or self._stop_reason):
            self._stop_reason = reason
            self._cancel()

    def _cancel(self) -> None:
        """Cancel the producing task, and again until it gives up: code below it can swallow a
        cancellation, and a reply left waiting for its upstream would never end."""
        if self._task.done() or self._finalising:
            return
        self._task.cancel()
        loop = asyncio.get_running_loop()
        self._cancel_retry = loop.call_later(CANCEL_RETRY_SECONDS, self._cancel)

    async def aclose(self) -> None:
        """Stop if still running and wait until the reply is saved."""
        self.stop()
        if self._task is not None:
            await asyncio.wait([self._task])

    def _put(self, item: str | Finished) -> None:
        self._items.append(item)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _keepalive_tick(self) -> None:
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last_take
        if idle >= self.keepalive_seconds * 0.99:
            self._wake()
            idle = 0.0
        self._keepalive = loop.call_later(self.keepalive_seconds - idle, self._keepalive_tick)

    def _checkpoint_tick(self) -> None:
        """Save the text so far, if it grew, while the reply goes on: a process that dies
        mid-reply then leaves it behind for ``interrupt_stale_replies``."""
        loop = asyncio.get_running_loop()
        grew = len(self._parts) > self._checkpointed
        idle = self._checkpointing is None or self._checkpointing.done()
        if self.message_id is not None and grew and idle and not self._finalising:
            self._checkpointed = len(self._parts)
            save = message_acheckpoint(message_id=self.message_id, content="".join(self._parts))
            self._checkpointing = loop.create_task(save, context=contextvars.Context())
        self._checkpoint = loop.call_later(self.checkpoint_seconds, self._checkpoint_tick)

    async def _produce(self, prompt: Sequence[ChatMessage]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_token_at: float | None = None
        parts = self._parts
        room = self.max_chars
        outcome = StreamOutcome()
        finished = Finished(Message.Status.COMPLETE)
        try:
            async with aclosing(self.provider.stream(prompt, outcome)) as deltas:
                async for delta in deltas:
                    if first_token_at is None:
                        first_token_at = loop.time()
                    # What the database cannot store is replaced before the client sees
                    # it, so what is sent is what is saved.
                    delta = storable(delta)
                    room -= len(delta)
                    if room < 0:
                        # Closing the provider's stream closes the upstream request.
                        finished = too_long(self.max_chars)
                        delta = delta[:room]
                        if delta:
                            parts.append(delta)
                            self._put(delta)
                        break
                    parts.append(delta)
                    self._put(delta)
        except ProviderError as exc:
            finished = Finished(Message.Status.ERROR, exc.code, exc.message)
        except asyncio.CancelledError:
            finished = {None: INTERRUPTED, "timeout": TIMED_OUT}.get(self._stop_reason, CANCELLED)
            if self._stop_reason is None:
                raise
        except Exception:
            logger.exception("reply %s failed", self.message_id)
            finished = INTERNAL_ERROR
        finally:
            self._finalising = True
            for timer in (self._deadline, self._keepalive, self._cancel_retry, self._checkpoint):
                if timer is not None:
                    timer.cancel()
            try:
                if await self._saved:
                    try:
                        await self._finalize(finished, outcome, parts, started, first_token_at)
                    finally:
                        # Only now: a stop asked for meanwhile waits for this save.
                        RUNNING.pop(self.message_id, None)
            except Exception:
                logger.exception("reply %s could not be saved", self.message_id)
                finished = NOT_SAVED
            finally:
                self._put(finished)

    async def _finalize(
        self,
        finished: Finished,
        outcome: StreamOutcome,
        parts: list[str],
        started: float,
        first_token_at: float | None,
    ) -> None:
        ended = asyncio.get_running_loop().time()
        await message_afinalize(
            message_id=self.message_id,
            conversation_id=self.conversation_id,
            status=finished.status,
            content="".join(parts),
            ttft_ms=_ms(first_token_at - started) if first_token_at is not None else None,
            duration_ms=_ms(ended - started),
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            finish_reason=outcome.finish_reason,
            error_code=finished.error_code,
            error_message=finished.error_message,
        )
        logger.info(
            "reply %s %s: %d deltas in %.0f ms",
            self.message_id,
            finished.status,
            len(parts),
            (ended - started) * 1000,
        )


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


async def generation_aopen(*, user: AbstractBaseUser, chat_request: ChatRequest) -> Generation:
    """Save the user's message, open the assistant's, and start the reply.

    A new conversation's prompt is known before anything is saved, so its upstream request
    goes out first and the rows are written while the model thinks; a stored conversation's
    prompt is read back from the database first.
    """
    provider = get_provider()
    generation = Generation(
        provider=provider,
        keepalive_seconds=settings.CHAT_KEEPALIVE_SECONDS,
        max_seconds=settings.CHAT_STREAM_MAX_SECONDS,
        checkpoint_seconds=settings.CHAT_CHECKPOINT_SECONDS,
        max_chars=settings.CHAT_MAX_REPLY_CHARS,
    )
    options = {
        "user": user,
        "chat_request": chat_request,
        "model": provider.model,
        "default_system_prompt": settings.CHAT_SYSTEM_PROMPT,
    }
    if chat_request.conversation_id is not None:
        opened = await _rows_aopen(options)
        generation.start(opened.prompt)
    else:
        generation.start(new_conversation_prompt(chat_request, settings.CHAT_SYSTEM_PROMPT))
        try:
            opened = await _rows_aopen(options)
        except BaseException:
            await generation.adiscard()
            raise
    generation.bind(conversation_id=opened.conversation.pk, message_id=opened.assistant_message.pk)
    return generation


ABANDONED: set[asyncio.Task] = set()
"""Saves of replies whose client left while their rows were being written."""


async def _rows_aopen(options: dict) -> OpenedReply:
    """reply_aopen; if the caller is cancelled meanwhile (the client left), the worker thread
    still writes the rows, and the reply is then saved as cancelled, not left streaming."""
    opening = asyncio.ensure_future(reply_aopen(**options))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_cancel_abandoned_reply)
        raise


def _cancel_abandoned_reply(opening: asyncio.Future[OpenedReply]) -> None:
    if opening.cancelled():
        return
    if opening.exception() is not None:
        logger.warning("a reply's rows could not be saved", exc_info=opening.exception())
        return
    opened = opening.result()
    save = message_aclose_abandoned(
        message_id=opened.assistant_message.pk, conversation_id=opened.conversation.pk
    )
    # A fresh context: nothing of the request's, which has ended, is carried into the save.
    task = asyncio.get_running_loop().create_task(save, context=contextvars.Context())
    ABANDONED.add(task)
    task.add_done_callback(ABANDONED.discard)


def stop_running(message_id: int) -> None:
    """Stop a reply if this process produces it (asked by another process)."""
    generation = RUNNING.get(message_id)
    if generation is not None:
        generation.stop()


async def generation_astop(message_id: int) -> bool:
    """Stop a reply produced by this process and wait until it is saved; False if not here."""
    generation = RUNNING.get(message_id)
    if generation is None:
        return False
    await generation.aclose()
    return True


async def reply_astop(message_id: int) -> bool:
    """Stop a reply in whichever process produces it and wait until it is saved; False if
    none did."""
    return await generation_astop(message_id) or await reply_astop_elsewhere(message_id)


async def message_acancel(*, user: AbstractBaseUser, message_id: int) -> Message:
    """Stop the caller's reply if it is still streaming, in whichever process produces it,
    and return it as saved; Conflict if no process stopped it (the one producing it died)."""
    message = await message_aget_owned(user, message_id)
    if message.status == Message.Status.STREAMING:
        stopped = await reply_astop(message.pk)
        await message.arefresh_from_db()
        if not stopped and message.status == Message.Status.STREAMING:
            raise Conflict(
                "not_cancellable_here",
                "No server process stopped this reply: the one producing it has stopped running.",
            )
    return message


async def conversation_adelete(*, conversation: Conversation) -> None:
    """Stop the conversation's replies still streaming, in whichever process, then delete it
    with its messages."""
    streaming = Message.objects.filter(conversation=conversation, status=Message.Status.STREAMING)
    message_ids = [message_id async for message_id in streaming.values_list("pk", flat=True)]
    await asyncio.gather(*(reply_astop(message_id) for message_id in message_ids))
    await conversation.adelete()
