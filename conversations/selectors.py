"""Read queries for the pages and the API."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, timedelta

from django.contrib.auth.models import User
from django.contrib.postgres.search import SearchQuery
from django.db import connection
from django.db.models import Count, Q, QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone

from .errors import NotFound
from .models import SEARCH_CONFIG, Conversation, Message, content_vector, title_vector
from .versions import Tree, Version, path_with_versions

SIDEBAR_LENGTH = 100
MAX_SEARCH_TERMS = 8
SEARCH_TERM = re.compile(r"\w+")
SNIPPET_CHARS = 120


def conversation_list_for_user(user: User) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=user).only("id", "title", "updated_at")


def conversation_get_for_user(user: User, conversation_id: int) -> Conversation:
    """The caller's conversation, or Http404 (also for someone else's)."""
    return get_object_or_404(Conversation, pk=conversation_id, owner=user)


def message_get_for_user(user: User, conversation_id: int, message_id: int) -> Message:
    return get_object_or_404(
        Message, pk=message_id, conversation_id=conversation_id, conversation__owner=user
    )


def conversation_shown_path(conversation: Conversation) -> list[tuple[Message, Version]]:
    """The messages the page shows, root to leaf, each with its place among its versions."""
    return path_with_versions(list(conversation.messages.all()), conversation.current_leaf_id)


def message_version(message: Message) -> Version:
    """Where ``message`` stands among its versions (the messages with its parent)."""
    siblings = Message.objects.filter(
        conversation_id=message.conversation_id, parent_id=message.parent_id
    ).order_by("created_at", "id")
    return Tree(siblings.only("id", "parent_id")).version(message)


def conversation_api_list_for_user(user: User) -> QuerySet[Conversation]:
    return (
        Conversation.objects.filter(owner=user)
        .annotate(message_count=Count("messages"))
        .order_by("-updated_at", "-id")
    )


async def conversation_aget_owned(user: User, conversation_id: int) -> Conversation:
    """The caller's conversation, or NotFound (also for someone else's)."""
    conversation = await Conversation.objects.filter(pk=conversation_id, owner=user).afirst()
    if conversation is None:
        raise NotFound("conversation_not_found", "No such conversation.")
    return conversation


async def message_aget_owned(user: User, message_id: int) -> Message:
    message = await Message.objects.filter(pk=message_id, conversation__owner=user).afirst()
    if message is None:
        raise NotFound("message_not_found", "No such message.")
    return message


@dataclass(frozen=True)
class ConversationPage:
    results: list[Conversation]
    total: int
    has_next: bool
    snippets: dict[int, str] | None = None
    """For a search: a piece of each result's first matching message, by conversation id."""


async def conversation_apage_for_user(
    user: User, *, query: str | None, page: int, page_size: int
) -> ConversationPage:
    """One page of the user's conversations, newest first; with a search ``query``, only
    those that match it, with snippets."""
    terms = search_terms(query) if query is not None else None
    if terms is None:
        conversations = conversation_api_list_for_user(user)
    else:
        conversations = conversation_search_for_user(user, terms)
    total = await conversations.acount()
    offset = (page - 1) * page_size
    results = [c async for c in conversations[offset : offset + page_size]]
    snippets = None
    if terms is not None:
        snippets = await conversation_asearch_snippets([c.pk for c in results], terms)
    return ConversationPage(results, total, offset + len(results) < total, snippets)


def search_terms(query: str) -> list[str]:
    """The words of a search, lower-cased, at most MAX_SEARCH_TERMS (punctuation is dropped:
    it never reaches the text search query's syntax)."""
    return SEARCH_TERM.findall(query.lower())[:MAX_SEARCH_TERMS]


def prefix_query(terms: list[str]) -> SearchQuery:
    """Every term, each as a prefix (``'ter':*``): results come while a word is typed."""
    raw = " & ".join(f"'{term}':*" for term in terms)
    return SearchQuery(raw, search_type="raw", config=SEARCH_CONFIG)


def conversation_search_for_user(user: User, terms: list[str]) -> QuerySet[Conversation]:
    """The user's conversations whose title, or one of whose messages, has every term (as a
    word prefix), newest first. On PostgreSQL by full-text search on the GIN indexes
    ``conversation_title_search`` and ``message_content_search``; elsewhere by ``icontains``.

    The message index covers every user's messages: a word prefix found in most messages of
    the site costs a scan of that many index entries (about 0.3 s for 500,000 messages)."""
    conversations = conversation_api_list_for_user(user)
    if not terms:
        return conversations.none()
    if connection.vendor == "postgresql":
        query = prefix_query(terms)
        titled = (
            Conversation.objects.filter(owner=user)
            .annotate(document=title_vector())
            .filter(document=query)
            .values("pk")
        )
        mentioned = (
            Message.objects.filter(conversation__owner=user)
            .annotate(document=content_vector())
            .filter(document=query)
            .values("conversation_id")
        )
        return conversations.filter(Q(pk__in=titled) | Q(pk__in=mentioned))
    in_title = Q()
    in_message = Message.objects.all()
    for term in terms:
        in_title &= Q(title__icontains=term)
        in_message = in_message.filter(content__icontains=term)
    return conversations.filter(in_title | Q(pk__in=in_message.values("conversation_id")))


async def conversation_asearch_snippets(
    conversation_ids: list[int], terms: list[str]
) -> dict[int, str]:
    """For each conversation, a short piece of its first message that has every term, around
    the first of them (none for a conversation found by its title alone)."""
    if not conversation_ids or not terms:
        return {}
    messages = Message.objects.filter(conversation_id__in=conversation_ids)
    if connection.vendor == "postgresql":
        messages = (
            messages.annotate(document=content_vector())
            .filter(document=prefix_query(terms))
            .order_by("conversation_id", "created_at", "id")
            .distinct("conversation_id")
        )
    else:
        for term in terms:
            messages = messages.filter(content__icontains=term)
        messages = messages.order_by("conversation_id", "created_at", "id")
    snippets: dict[int, str] = {}
    async for conversation_id, content in messages.values_list("conversation_id", "content"):
        snippets.setdefault(conversation_id, snippet_around(content, terms))
    return snippets


def snippet_around(text: str, terms: list[str], width: int = SNIPPET_CHARS) -> str:
    """About ``width`` characters of ``text`` on one line, from shortly before the first
    place a term occurs, cut at word boundaries, with an ellipsis where text was left out."""
    lowered = text.lower()
    found = [index for term in terms if (index := lowered.find(term)) >= 0]
    start = max(0, min(found) - width // 4) if found else 0
    if start:
        space = text.find(" ", start, start + width // 4)
        start = space + 1 if space >= 0 else start
    end = min(len(text), start + width)
    if end < len(text):
        space = text.rfind(" ", start + width // 2, end)
        end = space if space >= 0 else end
    piece = " ".join(text[start:end].split())
    return ("…" if start else "") + piece + ("…" if end < len(text) else "")


DATE_GROUPS = ("Today", "Yesterday", "Previous 7 days", "Older")


def conversation_date_groups(
    conversations: list[Conversation], *, today: date | None = None
) -> list[tuple[str, list[Conversation]]]:
    """The sidebar's conversations under headings by last activity (in the server's
    TIME_ZONE), newest first; empty groups are left out."""
    today = today or timezone.localdate()
    grouped: dict[str, list[Conversation]] = {label: [] for label in DATE_GROUPS}
    for conversation in conversations:
        day = timezone.localdate(conversation.updated_at)
        if day >= today:
            label = "Today"
        elif day == today - timedelta(days=1):
            label = "Yesterday"
        elif day >= today - timedelta(days=7):
            label = "Previous 7 days"
        else:
            label = "Older"
        grouped[label].append(conversation)
    return [(label, items) for label, items in grouped.items() if items]
