"""Business logic on conversations and messages: plain functions that views and tests call."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from asgiref.sync import sync_to_async
from django.contrib.auth.models import AbstractBaseUser
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from . import statements
from .errors import Conflict, NotFound
from .models import Conversation, Message
from .providers import ChatMessage

logger = logging.getLogger(__name__)

TITLE_LENGTH = 60
"""The longest provisional or generated title, in characters (a renamed one may be longer)."""
MAX_TITLE_LENGTH = 200
"""The longest title a conversation can have (its column's length)."""


@dataclass(frozen=True)
class ChatRequest:
    """A validated request for one reply."""

    message: str
    conversation_id: int | None = None
    system_prompt: str | None = None
    history: list[ChatMessage] = field(default_factory=list)
    model: str | None = None
    """The model asked for, already checked against those on offer; None: the conversation's."""


@dataclass(frozen=True)
class OpenedReply:
    """A reply about to stream: the saved rows and the prompt to send upstream."""

    conversation: Conversation
    user_message: Message
    assistant_message: Message
    prompt: list[ChatMessage]
    model: str
    """The model the reply is asked of."""


def conversation_title_from(text: str, *, limit: int = TITLE_LENGTH) -> str:
    """The first words of ``text`` on one line, cut at a word boundary with an ellipsis when
    longer than ``limit`` (a single word longer than half of it is cut where it must be)."""
    words = " ".join(text.split())
    if len(words) <= limit:
        return words
    cut = words[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-–—") + "…"


def prompt_for_conversation(conversation: Conversation) -> list[ChatMessage]:
    """The saved transcript as a prompt: system prompt first, then every non-empty turn in order."""
    prompt: list[ChatMessage] = []
    if conversation.system_prompt:
        prompt.append({"role": "system", "content": conversation.system_prompt})
    turns = conversation.messages.exclude(content="").values_list("role", "content")
    prompt.extend({"role": role, "content": content} for role, content in turns)
    return prompt


def reply_open(
    *,
    user: AbstractBaseUser,
    chat_request: ChatRequest,
    default_model: str,
    default_system_prompt: str,
    model_for_conversation: Callable[[str], str] = lambda saved: saved,
    still_running: Callable[[int], bool] = lambda message_id: True,
) -> OpenedReply:
    """Save the user's message and open the assistant's, all or nothing, before going upstream.

    For a stored conversation the saved transcript is the prompt and client history is ignored;
    a new conversation starts from the client's history (saved too, so the transcript is whole).
    A stored conversation whose last reply is still being written gets no second one
    (Conflict ``reply_in_progress``, naming it); a reply left streaming by a process that died
    (``still_running`` says it is not) is marked interrupted first.

    The model is the request's (saved on the conversation too), else a stored conversation's
    own (``model_for_conversation`` may replace one no longer on offer), else ``default_model``.
    """
    now = timezone.now()
    if chat_request.conversation_id is None:
        model = chat_request.model or default_model
        conversation, messages = statements.insert_with_children(
            Conversation,
            new_conversation_row(
                user=user,
                chat_request=chat_request,
                model=model,
                default_system_prompt=default_system_prompt,
                now=now,
            ),
            Message,
            message_rows(chat_request.history, chat_request.message, model, now),
        )
        *_, user_message, assistant_message = messages
        prompt = new_conversation_prompt(chat_request, default_system_prompt)
        return OpenedReply(conversation, user_message, assistant_message, prompt, model)
    with transaction.atomic():
        conversation = conversation_lock_for_reply(
            user=user,
            conversation_id=chat_request.conversation_id,
            now=now,
            model=chat_request.model,
        )
        replies_in_progress_settle(conversation=conversation, still_running=still_running, now=now)
        model = chat_request.model or model_for_conversation(conversation.model)
        prompt = prompt_for_conversation(conversation)
        prompt.append({"role": "user", "content": chat_request.message})
        rows = message_rows([], chat_request.message, model, now)
        *_, user_message, assistant_message = statements.insert_rows(
            Message, [{"conversation": conversation, **row} for row in rows]
        )
    return OpenedReply(conversation, user_message, assistant_message, prompt, model)


MIN_STALE_AGE = timedelta(seconds=1)
"""A reply is announced alive within moments of its row being written: a younger one is always
taken to be running."""
INTERRUPTED_CODE = "interrupted"
INTERRUPTED_MESSAGE = "The server stopped before this reply finished."


def replies_in_progress_settle(
    *, conversation: Conversation, still_running: Callable[[int], bool], now: datetime
) -> None:
    """Conflict if a reply of the conversation is still being written; mark those whose
    process died interrupted."""
    streaming = Message.objects.filter(conversation=conversation, status=Message.Status.STREAMING)
    orphans = []
    for message_id, created_at in streaming.values_list("pk", "created_at"):
        if now - created_at < MIN_STALE_AGE or still_running(message_id):
            raise Conflict(
                "reply_in_progress",
                "The last reply of this conversation is still being written: attach to it "
                "or stop it before sending another message.",
                details={"message_id": message_id},
            )
        orphans.append(message_id)
    messages_mark_interrupted(message_ids=orphans)


def messages_mark_interrupted(*, message_ids: Collection[int]) -> int:
    """Mark replies still streaming whose process died as interrupted (their text is their
    last checkpoint's)."""
    if not message_ids:
        return 0
    return Message.objects.filter(pk__in=message_ids, status=Message.Status.STREAMING).update(
        status=Message.Status.INTERRUPTED,
        finished_at=timezone.now(),
        error_code=INTERRUPTED_CODE,
        error_message=INTERRUPTED_MESSAGE,
    )


def new_conversation_row(
    *,
    user: AbstractBaseUser,
    chat_request: ChatRequest,
    model: str,
    default_system_prompt: str,
    now: datetime,
) -> dict:
    """A new conversation's row (its last activity is the time it is saved)."""
    return {
        "owner": user,
        "title": conversation_title_from(chat_request.message),
        "system_prompt": system_prompt_for(chat_request, default_system_prompt),
        "model": model,
        "created_at": now,
    }


def conversation_lock_for_reply(
    *, user: AbstractBaseUser, conversation_id: int, now: datetime, model: str | None = None
) -> Conversation:
    """Mark the conversation active (and, given a ``model``, switch it to that one), which also
    locks its row until the transaction ends so concurrent replies to it are saved in order;
    NotFound unless the user owns it."""
    changes: dict = {"updated_at": now} if model is None else {"updated_at": now, "model": model}
    touched = statements.update_rows(
        Conversation, changes, {"id": conversation_id, "owner": user.pk}
    )
    if not touched:
        raise NotFound("conversation_not_found", "No such conversation.")
    return Conversation.objects.get(pk=conversation_id)


def message_rows(history: list[ChatMessage], message: str, model: str, now: datetime) -> list[dict]:
    """The rows a reply opens with, all created ``now``: the client's history, the user's
    message, and the reply (streaming, naming the model asked)."""
    rows = [
        {"role": item["role"], "content": item["content"], "created_at": now} for item in history
    ]
    rows.append({"role": Message.Role.USER, "content": message, "created_at": now})
    rows.append(
        {
            "role": Message.Role.ASSISTANT,
            "status": Message.Status.STREAMING,
            "model": model,
            "created_at": now,
        }
    )
    return rows


def system_prompt_for(chat_request: ChatRequest, default_system_prompt: str) -> str:
    """A new conversation's system prompt: the client's (even empty), else the site's."""
    if chat_request.system_prompt is None:
        return default_system_prompt
    return chat_request.system_prompt


def new_conversation_prompt(chat_request: ChatRequest, default_system_prompt: str) -> list:
    """What prompt_for_conversation will read back for the conversation this request starts."""
    prompt: list[ChatMessage] = []
    system_prompt = system_prompt_for(chat_request, default_system_prompt)
    if system_prompt:
        prompt.append({"role": "system", "content": system_prompt})
    prompt.extend(item for item in chat_request.history if item["content"])
    prompt.append({"role": "user", "content": chat_request.message})
    return prompt


def reply_open_and_release(**kwargs) -> OpenedReply:
    """reply_open, then hand this thread's database connection back to the pool: a reply
    streams for seconds or minutes and must not hold a connection meanwhile."""
    try:
        return reply_open(**kwargs)
    finally:
        connection.close()


reply_aopen = sync_to_async(reply_open_and_release)


def message_finalize(
    *,
    message_id: int,
    status: str,
    content: str,
    ttft_ms: int | None = None,
    duration_ms: int | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    finish_reason: str = "",
    error_code: str = "",
    error_message: str = "",
    attach_count: int = 0,
) -> bool:
    """Close a streaming reply exactly once; returns False if something else already closed it.

    The reply and its conversation's last activity are saved together.
    """
    now = timezone.now()
    result = {
        "status": status,
        "content": content,
        "finished_at": now,
        "ttft_ms": ttft_ms,
        "duration_ms": duration_ms,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "finish_reason": finish_reason,
        "error_code": error_code,
        "error_message": error_message,
        "attach_count": attach_count,
    }
    where = {"id": message_id, "status": Message.Status.STREAMING}
    updated = statements.update_with_parent(
        Message, result, where, "conversation", {"updated_at": now}
    )
    return _finalised(updated, message_id, status)


def _finalised(updated: int, message_id: int, status: str) -> bool:
    if not updated:
        logger.warning("reply %s was already finalised; status %s not saved", message_id, status)
    return bool(updated)


def message_finalize_and_release(**kwargs) -> bool:
    """message_finalize, then hand the worker thread's connection back to the pool."""
    try:
        return message_finalize(**kwargs)
    finally:
        connection.close()


message_afinalize = sync_to_async(message_finalize_and_release, thread_sensitive=False)
"""A reply is saved when it ends, which can be after its request has (a server shutting down
cancels both), so the save runs on a shared worker thread, not on the request's own."""


def message_close_abandoned(*, message_id: int) -> bool:
    """Save a reply whose client left before it started as cancelled (outside any request)."""
    return message_finalize_and_release(
        message_id=message_id,
        status=Message.Status.CANCELLED,
        content="",
    )


message_aclose_abandoned = sync_to_async(message_close_abandoned, thread_sensitive=False)


def message_checkpoint(*, message_id: int, content: str) -> None:
    """Save a streaming reply's text so far; a reply already closed is left as it is. A
    failure is only logged: the reply goes on, and its final save is what counts."""
    try:
        statements.update_rows(
            Message, {"content": content}, {"id": message_id, "status": Message.Status.STREAMING}
        )
    except DatabaseError:
        logger.warning("reply %s: its text so far could not be saved", message_id, exc_info=True)
    finally:
        connection.close()


message_acheckpoint = sync_to_async(message_checkpoint, thread_sensitive=False)


async def conversation_arename(
    *, user: AbstractBaseUser, conversation_id: int, title: str
) -> Conversation:
    """Give the caller's conversation a title of their own; NotFound for anyone else's. Its
    last activity is left as it was: a rename does not move it up the list."""
    renamed = await Conversation.objects.filter(pk=conversation_id, owner=user).aupdate(title=title)
    if not renamed:
        raise NotFound("conversation_not_found", "No such conversation.")
    return await Conversation.objects.aget(pk=conversation_id)


def conversation_set_generated_title(*, conversation_id: int, provisional: str, title: str) -> bool:
    """Replace a conversation's provisional title with the model's, unless it changed meanwhile
    (the owner renamed it); False if it was not replaced. Runs after the reply's request has
    ended, so the connection goes back to the pool at once."""
    title = conversation_title_from(title)
    if not title or title == provisional:
        return False
    try:
        return bool(
            statements.update_rows(
                Conversation, {"title": title}, {"id": conversation_id, "title": provisional}
            )
        )
    finally:
        connection.close()


conversation_aset_generated_title = sync_to_async(
    conversation_set_generated_title, thread_sensitive=False
)
