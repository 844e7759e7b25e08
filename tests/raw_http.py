"""Reading HTTP responses off raw sockets, for tests that send what no HTTP client would."""

from __future__ import annotations


def split_head(head: bytes) -> tuple[str, dict[str, str]]:
    """A response head's status line and its headers (names lower-cased)."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers
