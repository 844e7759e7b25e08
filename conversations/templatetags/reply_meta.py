"""Filters for a reply's details (its timings) as the chat page shows them."""

from __future__ import annotations

from django import template

from conversations.durations import duration_text

register = template.Library()


@register.filter
def milliseconds(value: int | None) -> str:
    """A duration as the admin writes it: ``850 ms``, ``2.3 s``, ``4 min 05 s``."""
    return duration_text(value)
