"""Read queries for the pages and the API."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet
from django.shortcuts import get_object_or_404

from .errors import NotFound
from .models import Conversation, Message

SIDEBAR_LENGTH = 100


def conversation_list_for_user(user: AbstractBaseUser) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=user).only("id", "title", "updated_at")


def conversation_get_for_user(user: AbstractBaseUser, conversation_id: int) -> Conversation:
    """The caller's conversation, or Http404 (also for someone else's)."""
    return get_object_or_404(Conversation, pk=conversation_id, owner=user)


def message_get_for_user(user: AbstractBaseUser, conversation_id: int, message_id: int) -> Message:
    return get_object_or_404(
        Message, pk=message_id, conversation_id=conversation_id, conversation__owner=user
    )


def conversation_api_list_for_user(user: AbstractBaseUser) -> QuerySet[Conversation]:
    return (
        Conversation.objects.filter(owner=user)
        .annotate(message_count=Count("messages"))
        .order_by("-updated_at", "-id")
    )


async def conversation_aget_owned(user: AbstractBaseUser, conversation_id: int) -> Conversation:
    """The caller's conversation, or NotFound (also for someone else's)."""
    conversation = await Conversation.objects.filter(pk=conversation_id, owner=user).afirst()
    if conversation is None:
        raise NotFound("conversation_not_found", "No such conversation.")
    return conversation


async def message_aget_owned(user: AbstractBaseUser, message_id: int) -> Message:
    message = await Message.objects.filter(pk=message_id, conversation__owner=user).afirst()
    if message is None:
        raise NotFound("message_not_found", "No such message.")
    return message
