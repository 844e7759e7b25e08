"""Conversations as plain data, for staff exports."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from .models import Conversation, Message
from .serializers import isoformat_or_none, message_detail


def message_export(message: Message) -> dict:
    """The API's message shape, flattened: metrics and error fields side by side."""
    exported = message_detail(message)
    exported.pop("error")
    metrics = exported.pop("metrics")
    return {
        **exported,
        **metrics,
        "error_code": message.error_code,
        "attach_count": message.attach_count,
        "error_message": message.error_message,
    }


def conversations_export(conversations: QuerySet[Conversation]) -> list[dict]:
    """Every conversation with every message in order, in three queries however many."""
    ordered = Message.objects.order_by("created_at", "id")
    queryset = (
        conversations.select_related("owner")
        .prefetch_related(Prefetch("messages", queryset=ordered))
        .order_by("id")
    )
    return [
        {
            "id": conversation.pk,
            "title": conversation.title,
            "owner": conversation.owner.get_username(),
            "model": conversation.model,
            "system_prompt": conversation.system_prompt,
            "created_at": isoformat_or_none(conversation.created_at),
            "updated_at": isoformat_or_none(conversation.updated_at),
            "messages": [message_export(m) for m in conversation.messages.all()],
        }
        for conversation in queryset
    ]
