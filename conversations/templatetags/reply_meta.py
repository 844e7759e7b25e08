"""Filters for a reply's details (its timings and size) as the page shows them."""

from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def milliseconds(value: int | None) -> str:
    """A duration for people: ``320 ms`` under a second, ``2.4 s`` under a minute, ``3 min
    5 s`` beyond."""
    if value is None:
        return ""
    if value < 1000:
        return f"{value} ms"
    seconds = value / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"
