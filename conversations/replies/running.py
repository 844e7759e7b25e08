"""The replies this process produces, and those it ended lately, by assistant message id.

A reply is started here (``reply_astart``): its rows are opened and its upstream request sent.
While it runs it is in RUNNING, where stop requests (from this process or, through Redis, from
another) find it. Once it has ended and been saved, its tokens are kept for
CHAT_REPLY_RETENTION_SECONDS in ENDED, so that a client that saw part of it can still resume
it frame for frame.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import OrderedDict

from django.conf import settings
from django.contrib.auth.models import User

from chatsite import metrics

from .. import asyncdb
from ..catalog import ModelChoice, model_choice_aget
from ..limits import Slot, slot_owner, stream_slots
from ..providers import get_provider
from ..services import (
    ChatRequest,
    OpenedReply,
    message_aclose_abandoned,
    new_conversation_prompt,
    reply_aopen,
    reply_aopen_new,
)
from ..usage import quota_acheck
from .heartbeats import replies_alive, reply_announce
from .remote import mirror_running, reply_akeep_for_resume
from .reply import Reply
from .stops import listen_for_requests
from .titles import conversation_atitle_when_complete

logger = logging.getLogger(__name__)

RUNNING: dict[int, Reply] = {}
"""Replies being produced in this process."""
ENDED: OrderedDict[int, tuple[float, Reply]] = OrderedDict()
"""Replies this process ended lately, oldest first, with the time they are forgotten."""


async def reply_astart(*, user: User, chat_request: ChatRequest, slot: Slot | None = None) -> Reply:
    """Check the model asked for (Invalid ``model_not_allowed``) and the user's daily token
    quota (Busy ``quota_exceeded``), take one of the user's stream slots (held until the reply
    ends; ``slot``, one of theirs taken already, if given), save the user's message, open the
    assistant's, and start the reply."""
    models = await model_choice_aget()
    models.check(chat_request.model)
    await quota_acheck(user=user)
    if slot is None or slot.released:
        asked = time.monotonic()
        try:
            slot = await stream_slots().acquire(slot_owner(user))
        finally:
            metrics.stream_slot_waited(seconds=time.monotonic() - asked)
    else:
        metrics.stream_slot_waited(seconds=0.0)
    slot.claimed = True
    try:
        reply = await _astart(user, chat_request, models)
    except BaseException:
        await slot.release()
        raise
    reply.on_end(slot.release)
    return reply


async def _astart(user: User, chat_request: ChatRequest, models: ModelChoice) -> Reply:
    """A new conversation's prompt is known before anything is saved, so its upstream request
    goes out first and the rows are written while the model thinks; a stored conversation's
    prompt is read back from the database first."""
    provider = get_provider()
    reply = Reply(
        provider=provider,
        keepalive_seconds=settings.CHAT_KEEPALIVE_SECONDS,
        max_seconds=settings.CHAT_STREAM_MAX_SECONDS,
        checkpoint_seconds=settings.CHAT_CHECKPOINT_SECONDS,
        max_chars=settings.CHAT_MAX_REPLY_CHARS,
        detach_grace_seconds=settings.CHAT_DETACH_GRACE_SECONDS,
    )
    options = {
        "user": user,
        "chat_request": chat_request,
        "default_model": models.default,
        "model_for_conversation": models.for_conversation,
        "default_system_prompt": settings.CHAT_SYSTEM_PROMPT,
        "still_running": still_running,
    }
    if chat_request.conversation_id is not None:
        opened = await _rows_aopen(options)
        reply.start(opened.prompt, model=opened.model)
    else:
        reply.start(
            new_conversation_prompt(chat_request, settings.CHAT_SYSTEM_PROMPT),
            model=chat_request.model or models.default,
        )
        try:
            opened = await _rows_aopen(options)
        except BaseException:
            await reply.adiscard()
            raise
    message_id = opened.assistant_message.pk
    reply.bind(owner_id=user.pk, conversation_id=opened.conversation.pk, message_id=message_id)
    # The reply cannot end before this: it is saved only once bound.
    RUNNING[message_id] = reply
    reply.on_end(lambda: _ended(message_id))
    if chat_request.conversation_id is None and settings.CHAT_AUTO_TITLES:
        conversation = opened.conversation
        reply.on_end(
            lambda: conversation_atitle_when_complete(
                reply,
                conversation_id=conversation.pk,
                first_message=chat_request.message,
                provisional=conversation.title,
            )
        )
    listen_for_requests({"stop": stop_running, "mirror": mirror_here})
    reply_announce(message_id, running=RUNNING.keys)
    return reply


async def _ended(message_id: int) -> None:
    """Only once the reply is saved: a stop asked for meanwhile waits for this save."""
    reply = RUNNING[message_id]
    await reply_akeep_for_resume(reply)
    del RUNNING[message_id]
    if settings.CHAT_REPLY_RETENTION_SECONDS > 0:
        _forget_expired()
        ENDED[message_id] = (time.monotonic() + settings.CHAT_REPLY_RETENTION_SECONDS, reply)


def _forget_expired() -> None:
    now = time.monotonic()
    while ENDED:
        message_id, (forget_at, _) = next(iter(ENDED.items()))
        if forget_at > now:
            return
        del ENDED[message_id]


def still_running(message_id: int) -> bool:
    """Whether a reply still streaming has a producer, here or (by its heartbeat) elsewhere.
    Called from a worker thread."""
    return message_id in RUNNING or bool(replies_alive([message_id]))


def reply_find(message_id: int) -> Reply | None:
    """The reply if this process produces it or ended it lately."""
    reply = RUNNING.get(message_id)
    if reply is None:
        _forget_expired()
        kept = ENDED.get(message_id)
        reply = kept[1] if kept is not None else None
    return reply


ABANDONED: set[asyncio.Task] = set()
"""Saves of replies whose client left while their rows were being written."""


async def _rows_aopen(options: dict) -> OpenedReply:
    """reply_aopen; if the caller is cancelled meanwhile (the client left), the worker thread
    still writes the rows, and the reply is then saved as cancelled, not left streaming."""
    new = options["chat_request"].conversation_id is None and asyncdb.available()
    opening = asyncio.ensure_future((reply_aopen_new if new else reply_aopen)(**options))
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
    save = message_aclose_abandoned(message_id=opened.assistant_message.pk)
    # A fresh context: nothing of the request's, which has ended, is carried into the save.
    task = asyncio.get_running_loop().create_task(save, context=contextvars.Context())
    ABANDONED.add(task)
    task.add_done_callback(ABANDONED.discard)


def mirror_here(message_id: int) -> None:
    """Copy a reply this process produces to Redis for a reader in another process."""
    mirror_running(RUNNING.get(message_id))


def stop_running(message_id: int) -> None:
    """Stop a reply if this process produces it (asked by another process)."""
    reply = RUNNING.get(message_id)
    if reply is not None:
        reply.stop()


async def reply_astop_here(message_id: int) -> bool:
    """Stop a reply produced by this process and wait until it is saved; False if not here."""
    reply = RUNNING.get(message_id)
    if reply is None:
        return False
    await reply.aclose()
    return True


SHUTDOWN_SAVE_SECONDS = 10.0
"""How long a stopping process waits for its interrupted replies to be saved."""


async def replies_ainterrupt_running() -> None:
    """The process is stopping: every reply it still produces is stopped, its upstream request
    closed, and saved ``interrupted`` with its text so far."""
    replies = list(RUNNING.values())
    for reply in replies:
        reply.stop("shutdown")
    if replies:
        logger.warning("stopping: %d replies still running are saved interrupted", len(replies))
        await asyncio.wait(
            [asyncio.ensure_future(reply.aended()) for reply in replies],
            timeout=SHUTDOWN_SAVE_SECONDS,
        )
