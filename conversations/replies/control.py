"""Ending replies on request, and settling those whose producing process died."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.utils import timezone

from ..errors import Conflict, Invalid, NotFound
from ..limits import Slot
from ..models import Conversation, Message
from ..selectors import message_aget_owned
from ..services import MIN_STALE_AGE, ChatRequest, messages_mark_interrupted
from .heartbeats import replies_aalive, replies_alive
from .idempotency import key_aclaim, key_arecord, key_arelease
from .remote import RemoteReply, kept_token_count, reply_akept_elsewhere
from .reply import Reply
from .running import reply_astart, reply_astop_here, reply_find
from .stops import reply_astop_elsewhere

Attachable = Reply | RemoteReply | Message


async def reply_astop(message_id: int) -> bool:
    """Stop a reply in whichever process produces it and wait until it is saved; False if
    none did."""
    return await reply_astop_here(message_id) or await reply_astop_elsewhere(message_id)


async def message_acancel(*, user: User, message_id: int) -> Message:
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


def messages_interrupt_stale(*, older_than: timedelta) -> int:
    """Mark replies left ``streaming`` by a process that died as ``interrupted``: those older
    than ``older_than`` whose producer no longer beats (``heartbeats``; without Redis, age
    alone decides). Raises RedisError if Redis is configured but cannot be asked."""
    cutoff = timezone.now() - max(older_than, MIN_STALE_AGE)
    streaming = Message.objects.filter(status=Message.Status.STREAMING, created_at__lt=cutoff)
    candidates = set(streaming.values_list("pk", flat=True))
    return messages_mark_interrupted(message_ids=candidates - replies_alive(candidates))


async def reply_aattach(*, user: User, message_id: int, after: int = 0) -> Attachable:
    """The caller's reply to attach to after its first ``after`` token frames: running or
    lately ended in this process (its tokens), produced by another process or kept in Redis
    after it ended there (``RemoteReply``), else its saved row. A row left streaming by a
    process that died is marked interrupted first. NotFound for anything but the caller's
    assistant message; Invalid if ``after`` is past the frames it has."""
    attached = await _aattachable(user, message_id)
    count: int | None
    if isinstance(attached, Reply):
        count = attached.token_count
    elif isinstance(attached, RemoteReply):
        count = await kept_token_count(message_id)
    else:
        count = None
    if count is not None and after > count:
        raise Invalid("invalid_request", "'after' is past the frames of this reply.")
    return attached


async def _aattachable(user: User, message_id: int) -> Attachable:
    reply = reply_find(message_id)
    if reply is not None and reply.owner_id == user.pk:
        return reply
    message = await message_aget_owned(user, message_id)
    if message.role != Message.Role.ASSISTANT:
        raise NotFound("message_not_found", "No such reply.")
    remote = RemoteReply(message_id, message.conversation_id)
    if message.status == Message.Status.STREAMING:
        young = timezone.now() - message.created_at < MIN_STALE_AGE
        if young or await replies_aalive([message_id]):
            if not settings.REDIS_URL:
                raise Conflict(
                    "reply_elsewhere", "This reply is still starting; try again.", retry_after=1
                )
            return remote
        await sync_to_async(messages_mark_interrupted)(message_ids=[message_id])
        await message.arefresh_from_db()
    elif await reply_akept_elsewhere(message_id):
        return remote
    return message


async def reply_aresume(*, user: User, message_id: int, position: int) -> Attachable | None:
    """What a GET reconnecting after frame ``position`` of a reply resumes: the reply, here or
    elsewhere; None if there is nothing to resume (not the caller's, no longer kept, or the
    client has every frame)."""
    reply = reply_find(message_id)
    if reply is not None:
        return reply if reply.owner_id == user.pk and position <= reply.token_count else None
    if not settings.REDIS_URL:
        return None
    try:
        attached = await reply_aattach(user=user, message_id=message_id, after=position)
    except (NotFound, Conflict, Invalid):
        return None
    return attached if isinstance(attached, RemoteReply) else None


async def reply_astart_once(
    *,
    user: User,
    chat_request: ChatRequest,
    idempotency_key: str | None,
    slot: Slot | None = None,
) -> tuple[Attachable, bool]:
    """Start a reply (and True), or, for a request repeated with the same ``Idempotency-Key``,
    the reply its first sending started, to attach to from its start (and False): the model is
    not called again. ``slot``: as for reply_astart."""
    if idempotency_key is None:
        return await reply_astart(user=user, chat_request=chat_request, slot=slot), True
    claim: dict[str, Any] = {"user_id": user.pk, "key": idempotency_key}
    started = await key_aclaim(**claim, chat_request=chat_request)
    if started is not None:
        return await reply_aattach(user=user, message_id=started), False
    try:
        reply = await reply_astart(user=user, chat_request=chat_request, slot=slot)
    except BaseException:
        await asyncio.shield(key_arelease(**claim))
        raise
    await key_arecord(**claim, chat_request=chat_request, message_id=reply.rows[1])
    return reply, True
