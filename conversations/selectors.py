"""Read queries for the pages and the API."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

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
