"""JSON shapes of the REST API (documented in openapi.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .models import Conversation, Message
from .usage import DayUsage, UsageSummary, UsageTotals, iso_utc
from .versions import Tree


def isoformat_or_none(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def conversation_summary(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": conversation.pk,
        "title": conversation.title,
        "model": conversation.model,
        "created_at": isoformat_or_none(conversation.created_at),
        "updated_at": isoformat_or_none(conversation.updated_at),
        "message_count": getattr(conversation, "message_count", None),
    }


def message_detail(message: Message) -> dict[str, Any]:
    return {
        "id": message.pk,
        "parent_id": message.parent_id,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "model": message.model,
        "created_at": isoformat_or_none(message.created_at),
        "finished_at": isoformat_or_none(message.finished_at),
        "metrics": {
            "ttft_ms": message.ttft_ms,
            "duration_ms": message.duration_ms,
            "prompt_tokens": message.prompt_tokens,
            "completion_tokens": message.completion_tokens,
            "finish_reason": message.finish_reason,
        },
        "error": (
            {"code": message.error_code, "message": message.error_message}
            if message.error_code
            else None
        ),
    }


def conversation_detail(conversation: Conversation, messages: list[Message]) -> dict[str, Any]:
    """The conversation with every message, each version included (``parent_id`` links them),
    and the ids of the path shown, root to leaf."""
    path = Tree(messages).path(conversation.current_leaf_id)
    return {
        **conversation_summary(conversation),
        "system_prompt": conversation.system_prompt,
        "message_count": len(messages),
        "messages": [message_detail(message) for message in messages],
        "current_path": [message.pk for message in path],
    }


def usage_totals(totals: UsageTotals) -> dict:
    return {
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "total_tokens": totals.total_tokens,
        "replies": totals.replies,
        "estimated_tokens": totals.estimated_tokens,
    }


def day_usage(day: DayUsage) -> dict:
    return {
        "day": day.day.isoformat(),
        **usage_totals(day.totals),
        "models": [{"model": name, **usage_totals(t)} for name, t in sorted(day.models.items())],
    }


def usage_summary(summary: UsageSummary) -> dict:
    standing = summary.standing
    days = [day_usage(day) for day in summary.days]
    return {
        "today": days[0],
        "quota": {
            "daily_tokens": standing.quota,
            "source": standing.source,
            "used": standing.used,
            "remaining": standing.remaining,
            "exceeded": standing.exceeded,
            "resets_at": iso_utc(standing.resets_at),
        },
        "days": days,
    }
