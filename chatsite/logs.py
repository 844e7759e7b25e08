"""Logs for operators: each request's id (sent back as ``X-Request-Id``, and on every line
logged while it is handled, including by the replies it starts), and ``LOG_FORMAT=json``, one
JSON object per line.

A request id from a trusted proxy (``CHAT_TRUSTED_PROXIES``) is kept if it is a plain token
(letters, digits, ``.``, ``_``, ``-``; at most 128); otherwise the site makes one. Log lines
carry ids, statuses, sizes and times, never message text or credentials.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid
from datetime import UTC, datetime

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
PLAIN_TOKEN = re.compile(r"[A-Za-z0-9._-]{1,128}")

FIELDS = (
    "request_id",
    "method",
    "path",
    "status_code",
    "conversation_id",
    "message_id",
    "user_id",
    "model",
    "status",
    "end_reason",
    "ttft_ms",
    "duration_ms",
    "tokens",
    "tokens_estimated",
)
"""What a line may carry besides its time, level, logger and message (given with ``extra``)."""


def request_id_for(incoming: str | None, *, from_trusted_proxy: bool) -> str:
    if incoming and from_trusted_proxy and PLAIN_TOKEN.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (empty outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request = getattr(record, "request", None)
        if request is not None and hasattr(request, "method"):
            line["method"], line["path"] = request.method, request.path
        for name in FIELDS:
            value = getattr(record, name, None)
            if value not in (None, ""):
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class ClientErrorsWithoutTracebacks(logging.Filter):
    """For the ``django.request`` logger: a 4xx that Django reached through an exception
    (``PermissionDenied``, ``Http404``, a bad request) is the client's doing, not a fault of the
    site's: one warning line, without the exception's traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if record.exc_info and isinstance(status, int) and status < 500:
            record.exc_info = None
            record.exc_text = None
        return True
