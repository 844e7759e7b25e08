"""Saved transcripts for tests that need one without streaming it: each message follows the
one before it (its parent), as the site saves them."""

from __future__ import annotations

from conversations.models import Conversation, Message


def transcript_create(conversation: Conversation, *turns: dict) -> list[Message]:
    """Save ``turns`` (Message fields: role, content, status…) in order, each the child of the
    one before (the first follows the conversation's newest message, if any)."""
    last = conversation.messages.order_by("created_at", "id").last()
    saved = []
    for fields in turns:
        last = Message.objects.create(conversation=conversation, parent=last, **fields)
        saved.append(last)
    return saved


def asked(content: str, **fields) -> dict:
    return {"role": "user", "content": content, **fields}


def answered(content: str, **fields) -> dict:
    return {"role": "assistant", "content": content, **fields}
