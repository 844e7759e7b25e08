"""Durations in words, as the chat page and the admin show them."""

from __future__ import annotations


def duration_text(milliseconds: int | None) -> str:
    """``850 ms``, ``2.3 s``, ``4 min 05 s``; ``–`` when unknown."""
    if milliseconds is None:
        return "–"
    if milliseconds < 1000:
        return f"{milliseconds} ms"
    if milliseconds < 60_000:
        return f"{milliseconds / 1000:.1f} s"
    minutes, seconds = divmod(round(milliseconds / 1000), 60)
    return f"{minutes} min {seconds:02d} s"
