"""Business logic on conversations and messages: plain functions that views and tests call."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db import DatabaseError, connection, transaction
from django.utils import timezone

from . import asyncdb, statements
from .errors import Conflict, Invalid, NotFound
from .models import Conversation, Message, UsageDay
from .providers import ChatMessage
from .statements import postgresql
from .usage import ReplyUsage, utc_day
from .versions import Tree

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
    regenerate_of: int | None = None
    """A reply of the conversation to answer again: the new reply is a version of it."""
    edit_of: int | None = None
    """A message of the user's in the conversation that ``message`` replaces, as a version."""


@dataclass(frozen=True)
class OpenedReply:
    """A reply about to stream: the saved rows and the prompt to send upstream."""

    conversation: Conversation
    user_message: Message | None
    """None for a regenerated reply: it answers a message saved before."""
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


class Turn(NamedTuple):
    """A saved message as the prompt and the version tree need it."""

    pk: int
    parent_id: int | None
    role: str
    content: str


def conversation_tree(conversation_id: int) -> Tree[Turn]:
    """Every message of the conversation, in the order written, as a version tree."""
    rows = Message.objects.filter(conversation_id=conversation_id).order_by("created_at", "id")
    return Tree(Turn(*row) for row in rows.values_list("pk", "parent_id", "role", "content"))


def prompt_from(system_prompt: str, turns: Iterable[tuple[str, str]]) -> list[ChatMessage]:
    """The one way a prompt is made: the system prompt first (if any), then every turn that
    has text, in order."""
    prompt: list[ChatMessage] = []
    if system_prompt:
        prompt.append({"role": "system", "content": system_prompt})
    prompt.extend({"role": role, "content": content} for role, content in turns if content)
    return prompt


def prompt_for_conversation(conversation: Conversation) -> list[ChatMessage]:
    """The saved conversation as a prompt: the path it shows."""
    path = conversation_tree(conversation.pk).path(conversation.current_leaf_id)
    return prompt_from(conversation.system_prompt, ((turn.role, turn.content) for turn in path))


def reply_parent(
    tree: Tree[Turn], chat_request: ChatRequest, *, shown_leaf: int | None
) -> int | None:
    """The message a new reply's first row follows: the saved message a regenerated reply
    answers, the parent of an edited message, else the last message shown."""
    if chat_request.regenerate_of is not None:
        reply = tree.by_id.get(chat_request.regenerate_of)
        if reply is None or reply.role != Message.Role.ASSISTANT:
            raise NotFound("message_not_found", "No such reply in this conversation.")
        if reply.parent_id is None:
            raise Invalid(
                "nothing_to_answer", "This reply answers no message, so it cannot be regenerated."
            )
        return reply.parent_id
    if chat_request.edit_of is not None:
        edited = tree.by_id.get(chat_request.edit_of)
        if edited is None or edited.role != Message.Role.USER:
            raise NotFound("message_not_found", "No such message of yours in this conversation.")
        return edited.parent_id
    path = tree.path(shown_leaf)
    return path[-1].pk if path else None


def reply_open(
    *,
    user: User,
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
        start = NewConversation.of(user, chat_request, default_model, default_system_prompt, now)
        return start.opened(
            statements.insert_with_children(
                Conversation, start.conversation, Message, start.messages, chain="parent"
            )
        )
    with transaction.atomic():
        conversation = conversation_lock_for_reply(
            user=user,
            conversation_id=chat_request.conversation_id,
            now=now,
            model=chat_request.model,
        )
        replies_in_progress_settle(conversation=conversation, still_running=still_running, now=now)
        model = chat_request.model or model_for_conversation(conversation.model)
        tree = conversation_tree(conversation.pk)
        parent_id = reply_parent(tree, chat_request, shown_leaf=conversation.current_leaf_id)
        shown = tree.path_to(parent_id)
        prompt = prompt_from(conversation.system_prompt, ((t.role, t.content) for t in shown))
        rows = message_rows([], chat_request.message, model, now)
        if chat_request.regenerate_of is None:
            prompt.append({"role": "user", "content": chat_request.message})
        else:
            rows = rows[-1:]  # the reply alone: it answers a message saved before
        messages = statements.insert_chain(
            Message,
            [{"conversation": conversation, **row} for row in rows],
            chain="parent",
            first=parent_id,
        )
        if conversation.current_leaf_id is not None:
            # A version was picked to be shown: the new reply, the newest message, is shown now.
            statements.update_rows(Conversation, {"current_leaf": None}, {"id": conversation.pk})
            conversation.current_leaf_id = None
    assistant_message = messages[-1]
    user_message = messages[0] if len(messages) > 1 else None
    return OpenedReply(conversation, user_message, assistant_message, prompt, model)


@dataclass(frozen=True)
class NewConversation:
    """A conversation a reply starts, before its rows are written: one statement writes the
    conversation and its messages (each following the one before)."""

    conversation: dict[str, Any]
    messages: list[dict[str, Any]]
    prompt: list[ChatMessage]
    model: str

    @classmethod
    def of(
        cls,
        user: User,
        chat_request: ChatRequest,
        default_model: str,
        default_system_prompt: str,
        now: datetime,
    ) -> NewConversation:
        model = chat_request.model or default_model
        conversation = new_conversation_row(
            user=user,
            chat_request=chat_request,
            model=model,
            default_system_prompt=default_system_prompt,
            now=now,
        )
        rows = message_rows(chat_request.history, chat_request.message, model, now)
        prompt = new_conversation_prompt(chat_request, default_system_prompt)
        return cls(conversation, rows, prompt, model)

    def opened(self, saved: tuple[Conversation, list[Message]]) -> OpenedReply:
        """The reply opened, given what the insert saved."""
        conversation, messages = saved
        *_, user_message, assistant_message = messages
        return OpenedReply(conversation, user_message, assistant_message, self.prompt, self.model)


async def reply_aopen_new(
    *,
    user: User,
    chat_request: ChatRequest,
    default_model: str,
    default_system_prompt: str,
    **_: object,
) -> OpenedReply:
    """reply_open for a new conversation on the fast path, on the event loop (``asyncdb``): its
    one statement needs no thread, and a stream holds none while its rows are written."""
    now = timezone.now()
    start = NewConversation.of(user, chat_request, default_model, default_system_prompt, now)
    insert = postgresql.insert_with_children_prepared(
        Conversation, start.conversation, Message, start.messages, chain="parent"
    )
    return start.opened(insert.saved(await asyncdb.fetchall(insert.sql, insert.params)))


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
    user: User,
    chat_request: ChatRequest,
    model: str,
    default_system_prompt: str,
    now: datetime,
) -> dict[str, Any]:
    """A new conversation's row (its last activity is the time it is saved)."""
    return {
        "owner": user,
        "title": conversation_title_from(chat_request.message),
        "system_prompt": system_prompt_for(chat_request, default_system_prompt),
        "model": model,
        "created_at": now,
    }


def conversation_lock_for_reply(
    *, user: User, conversation_id: int, now: datetime, model: str | None = None
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


def message_rows(
    history: list[ChatMessage], message: str, model: str, now: datetime
) -> list[dict[str, Any]]:
    """The rows a reply opens with, all created ``now``: the client's history, the user's
    message, and the reply (streaming, naming the model asked)."""
    rows: list[dict[str, Any]] = [
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


def new_conversation_prompt(
    chat_request: ChatRequest, default_system_prompt: str
) -> list[ChatMessage]:
    """The prompt of the conversation this request starts, before it is saved: made from the
    rows reply_open saves for it, so it is what prompt_for_conversation reads back."""
    rows = message_rows(chat_request.history, chat_request.message, "", timezone.now())
    system_prompt = system_prompt_for(chat_request, default_system_prompt)
    return prompt_from(system_prompt, ((str(row["role"]), row.get("content", "")) for row in rows))


def reply_open_and_release(**kwargs: Any) -> OpenedReply:
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
    user_id: int | None = None,
    model: str = "",
    usage: ReplyUsage | None = None,
) -> bool:
    """Close a streaming reply exactly once; returns False if something else already closed it.
    Given a ``usage`` (and the ``user_id`` and ``model`` it is counted for), it is added to the
    user's usage of that model today, once, with the reply's save.

    The reply, its conversation's last activity and the usage are saved together (on the fast
    path in one statement).
    """
    now = timezone.now()
    addition = None
    if usage is not None and user_id is not None:
        addition = usage_addition(user_id, model, utc_day(now), usage)
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
        Message, result, where, "conversation", {"updated_at": now}, addition=addition
    )
    return _finalised(updated, message_id, status)


def usage_addition(user_id: int, model: str, day: date, usage: ReplyUsage) -> statements.Addition:
    """One reply's usage, added to its user's row for the model and the day."""
    return statements.Addition(
        UsageDay,
        keys={"user": user_id, "day": day, "model": model},
        amounts={
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "replies": 1,
            "estimated_replies": int(usage.estimated),
            "estimated_tokens": usage.estimated_tokens,
        },
    )


def _finalised(updated: int, message_id: int, status: str) -> bool:
    if not updated:
        logger.warning("reply %s was already finalised; status %s not saved", message_id, status)
    return bool(updated)


def message_finalize_and_release(**kwargs: Any) -> bool:
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


async def conversation_arename(*, user: User, conversation_id: int, title: str) -> Conversation:
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


def conversation_show_version(*, user: User, message_id: int) -> tuple[int, list[int]]:
    """Show the version ``message_id`` of its turn, and below it the newest of its
    descendants; the conversation and the ids of the path now shown. NotFound unless the
    caller owns the message."""
    owned = Message.objects.filter(pk=message_id, conversation__owner=user)
    conversation_id = owned.values_list("conversation_id", flat=True).first()
    if conversation_id is None:
        raise NotFound("message_not_found", "No such message.")
    with transaction.atomic():
        # Locked like a new reply's, so the tree read is the one the choice is saved against.
        Conversation.objects.select_for_update().filter(pk=conversation_id).exists()
        tree = conversation_tree(conversation_id)
        leaf = tree.newest_leaf_below(message_id)
        statements.update_rows(Conversation, {"current_leaf": leaf}, {"id": conversation_id})
    return conversation_id, [message.pk for message in tree.path(leaf)]


conversation_ashow_version = sync_to_async(conversation_show_version)
