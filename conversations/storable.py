"""What text a database column can store: not NUL (PostgreSQL refuses it) and not an unpaired
surrogate (which is not UTF-8, so no database here takes it). JSON can carry both (``\\u0000``,
``\\ud800``), from a client or from the model."""

from __future__ import annotations

import re

UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def is_storable(text: str) -> bool:
    return UNSTORABLE.search(text) is None


def storable(text: str) -> str:
    """``text`` with what cannot be stored replaced by U+FFFD."""
    if UNSTORABLE.search(text) is None:
        return text
    return UNSTORABLE.sub("\ufffd", text)
