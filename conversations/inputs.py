"""Turning request bodies and query strings into a validated ChatRequest, or an ApiError."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, QueryDict
from django.http.request import RawPostDataException

from .diagnostics import (
    DEFAULT_COUNT,
    DEFAULT_INTERVAL_MS,
    MAX_COUNT,
    MAX_IDLE_SECONDS,
    MAX_INTERVAL_MS,
    MIN_COUNT,
    MIN_INTERVAL_MS,
    DiagnosticPlan,
)
from .errors import ApiError
from .services import MAX_TITLE_LENGTH, ChatRequest
from .storable import is_storable

HISTORY_ROLES = {"user", "assistant"}

MAX_ID = 2**63 - 1
"""The largest id a database row can have (a signed 64-bit integer)."""
MAX_PAGE = 1_000_000
MAX_POSITION = 10_000_000
ASCII_INTEGER = re.compile(r"[0-9]{1,19}")
MAX_JSON_DEPTH = 3
"""The request body's deepest nesting: an object holding ``history``, a list of objects."""


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message)


def check_length(value: str, limit: int, field: str) -> None:
    if len(value) > limit:
        raise bad_request(
            f"'{field}' is longer than the limit of {limit} characters.", f"{field}_too_long"
        )


def check_storable(value: str, field: str) -> None:
    """Refuse text no database column can store, naming the field (rather than replacing it:
    a client that sent it should know)."""
    if not is_storable(value):
        raise bad_request(
            f"'{field}' contains a NUL character or an unpaired surrogate, which cannot be stored.",
            "invalid_text",
        )


def positive_integer(raw: str, field: str, *, maximum: int = MAX_ID) -> int:
    """A decimal integer from 1 to ``maximum`` written in ASCII digits (``isdigit`` accepts
    other digits too, such as ``²``, which ``int`` refuses), or a 400 naming the field."""
    if ASCII_INTEGER.fullmatch(raw) is None or not 1 <= int(raw) <= maximum:
        raise bad_request(f"'{field}' must be an integer from 1 to {maximum}.")
    return int(raw)


MAX_MODEL_CHARS = 200
"""The longest model name (the column's length)."""


def model_from(raw: object) -> str | None:
    """The ``model`` a request names: None when absent or empty, else a string of at most
    MAX_MODEL_CHARS characters (whether it is on offer is the reply's to check)."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise bad_request("'model' must be a string.")
    check_length(raw, MAX_MODEL_CHARS, "model")
    check_storable(raw, "model")
    return raw


def chat_request_from_query(query: QueryDict) -> ChatRequest:
    message = query.get("message", "")
    if not message.strip():
        raise bad_request("The 'message' query parameter is required.", "missing_message")
    check_length(message, settings.CHAT_MAX_MESSAGE_CHARS, "message")
    check_storable(message, "message")
    raw_id = query.get("conversation_id")
    conversation_id = None
    if raw_id:  # neither absent nor empty
        conversation_id = positive_integer(raw_id, "conversation_id")
    return ChatRequest(
        message=message, conversation_id=conversation_id, model=model_from(query.get("model"))
    )


def json_body(request: HttpRequest, *, max_bytes: int) -> object:
    content_type = request.content_type or ""
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "Send the body as application/json.")
    try:
        body = request.body
    except (RequestDataTooBig, RawPostDataException):
        body = None
    if body is None or len(body) > max_bytes:
        raise ApiError(413, "body_too_large", f"The request body is larger than {max_bytes} bytes.")
    try:
        payload = json.loads(body)
    except RecursionError:
        payload = None
    except ValueError:  # not UTF-8, not JSON, or an integer of more than 4,300 digits
        raise bad_request("The body is not valid JSON.", "malformed_json") from None
    if payload is None or too_deep(payload, MAX_JSON_DEPTH):
        raise bad_request(
            f"The body nests deeper than the {MAX_JSON_DEPTH} levels its fields need.", "too_deep"
        )
    return payload


def too_deep(value: object, depth: int) -> bool:
    """Whether ``value`` has lists or objects nested more than ``depth`` levels."""
    children: Iterable[object]
    if isinstance(value, dict):
        children = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    if depth == 0:
        return True
    return any(too_deep(child, depth - 1) for child in children)


def chat_request_from_json(payload: object) -> ChatRequest:
    if not isinstance(payload, Mapping):
        raise bad_request("The body must be a JSON object.")
    regenerate_of = id_from_json(payload, "regenerate_of")
    edit_of = id_from_json(payload, "edit_of")
    if regenerate_of is not None and edit_of is not None:
        raise bad_request("Send 'regenerate_of' or 'edit_of', not both.")
    message = payload.get("message")
    if regenerate_of is not None:
        if message is not None:
            raise bad_request("A regenerated reply answers the saved message: send no 'message'.")
        message = ""
    elif message is None or (isinstance(message, str) and not message.strip()):
        raise bad_request("'message' is required and must not be empty.", "missing_message")
    if not isinstance(message, str):
        raise bad_request("'message' must be a string.")
    check_length(message, settings.CHAT_MAX_MESSAGE_CHARS, "message")
    check_storable(message, "message")
    system_prompt = payload.get("system_prompt", payload.get("systemPrompt"))
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise bad_request("'system_prompt' must be a string.")
    if system_prompt is not None:
        check_length(system_prompt, settings.CHAT_MAX_SYSTEM_PROMPT_CHARS, "system_prompt")
        check_storable(system_prompt, "system_prompt")
    conversation_id = id_from_json(payload, "conversation_id")
    if conversation_id is None and (regenerate_of or edit_of):
        field = "regenerate_of" if regenerate_of else "edit_of"
        raise bad_request(f"'{field}' needs the 'conversation_id' the message belongs to.")
    return ChatRequest(
        message=message,
        conversation_id=conversation_id,
        system_prompt=system_prompt,
        history=history_from_json(payload.get("history")),
        model=model_from(payload.get("model")),
        regenerate_of=regenerate_of,
        edit_of=edit_of,
    )


def id_from_json(payload: Mapping, name: str) -> int | None:
    """A row id field of a JSON body: absent or null, else an integer from 1 to MAX_ID."""
    value = payload.get(name)
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID
    ):
        raise bad_request(f"'{name}' must be an integer from 1 to {MAX_ID}.")
    return value


def history_from_json(history: object) -> list:
    if history is None:
        return []
    if not isinstance(history, list):
        raise bad_request("'history' must be a list of {role, content} objects.")
    if len(history) > settings.CHAT_MAX_HISTORY_ITEMS:
        raise bad_request(
            f"'history' has more than the limit of {settings.CHAT_MAX_HISTORY_ITEMS} items.",
            "history_too_long",
        )
    items = []
    for index, item in enumerate(history):
        if not isinstance(item, Mapping):
            raise bad_request(f"history[{index}] must be an object with 'role' and 'content'.")
        role, content = item.get("role"), item.get("content")
        if role not in HISTORY_ROLES:
            raise bad_request(f"history[{index}].role must be 'user' or 'assistant'.")
        if not isinstance(content, str):
            raise bad_request(f"history[{index}].content must be a string.")
        if len(content) > settings.CHAT_MAX_HISTORY_ITEM_CHARS:
            raise bad_request(
                f"history[{index}].content is longer than the limit of "
                f"{settings.CHAT_MAX_HISTORY_ITEM_CHARS} characters.",
                "history_item_too_long",
            )
        check_storable(content, f"history[{index}].content")
        items.append({"role": role, "content": content})
    return items


MAX_IDEMPOTENCY_KEY = 255


def idempotency_key_from(request: HttpRequest) -> str | None:
    """The ``Idempotency-Key`` header (an opaque string of up to 255 characters), if sent."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        raise bad_request(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters.",
            "invalid_idempotency_key",
        )
    return key


def last_event_id_from(request: HttpRequest) -> tuple[int, int] | None:
    """The (message id, position) a GET stream's ``Last-Event-ID`` names, as QueryFramer
    writes it (``<message id>-<n>``); None if it is not one of those."""
    message_id, _, position = request.headers.get("Last-Event-ID", "").partition("-")
    if ASCII_INTEGER.fullmatch(message_id) is None or ASCII_INTEGER.fullmatch(position) is None:
        return None
    if not (1 <= int(message_id) <= MAX_ID and int(position) <= MAX_POSITION):
        return None
    return int(message_id), int(position)


def bounded_integer_from_query(
    query: QueryDict, name: str, *, default: int, minimum: int, maximum: int
) -> int:
    """An integer from ``minimum`` to ``maximum`` in ASCII digits (``default`` when absent),
    or a 400 naming the parameter and its bounds."""
    raw = query.get(name, "")
    if raw == "":
        return default
    if ASCII_INTEGER.fullmatch(raw) is None or not minimum <= int(raw) <= maximum:
        raise bad_request(f"'{name}' must be an integer from {minimum} to {maximum}.")
    return int(raw)


def diagnostic_plan_from_query(query: QueryDict) -> DiagnosticPlan:
    """What a diagnostics stream is to send: ``count`` ticks ``interval_ms`` apart, then
    ``idle_seconds`` of silence (0: none), each within its bounds."""
    return DiagnosticPlan(
        count=bounded_integer_from_query(
            query, "count", default=DEFAULT_COUNT, minimum=MIN_COUNT, maximum=MAX_COUNT
        ),
        interval_ms=bounded_integer_from_query(
            query,
            "interval_ms",
            default=DEFAULT_INTERVAL_MS,
            minimum=MIN_INTERVAL_MS,
            maximum=MAX_INTERVAL_MS,
        ),
        idle_seconds=bounded_integer_from_query(
            query, "idle_seconds", default=0, minimum=0, maximum=MAX_IDLE_SECONDS
        ),
    )


def position_from_query(query: QueryDict, name: str) -> int:
    """A count of frames a client has (0 when absent), or a 400 naming the parameter."""
    raw = query.get(name, "")
    if raw in ("", "0"):
        return 0
    return positive_integer(raw, name, maximum=MAX_POSITION)


def pagination_from_query(query: QueryDict, *, max_page_size: int = 100) -> tuple[int, int]:
    page = query.get("page", "")
    page_size = query.get("page_size", "")
    return (
        positive_integer(page, "page", maximum=MAX_PAGE) if page else 1,
        min(positive_integer(page_size, "page_size"), max_page_size) if page_size else 20,
    )


def usage_days_from_query(query: QueryDict, *, maximum: int, default: int = 7) -> int:
    """How many days of usage to report (today included), or a 400 naming ``days``."""
    days = query.get("days", "")
    return positive_integer(days, "days", maximum=maximum) if days else default


MAX_SEARCH_CHARS = 200


def search_query_from(query: QueryDict) -> str | None:
    """The ``q`` search parameter, or None when absent or blank; a 400 naming it when too
    long or not storable text."""
    raw = query.get("q", "")
    if not raw.strip():
        return None
    check_length(raw, MAX_SEARCH_CHARS, "q")
    check_storable(raw, "q")
    return raw


def conversation_title_from_json(payload: object) -> str:
    """The ``title`` of a rename, on one line: required, not blank, at most MAX_TITLE_LENGTH
    characters, storable text."""
    if not isinstance(payload, Mapping):
        raise bad_request("The body must be a JSON object.")
    title = payload.get("title")
    if title is None or (isinstance(title, str) and not title.strip()):
        raise bad_request("'title' is required and must not be blank.", "missing_title")
    if not isinstance(title, str):
        raise bad_request("'title' must be a string.")
    title = " ".join(title.split())
    check_length(title, MAX_TITLE_LENGTH, "title")
    check_storable(title, "title")
    return title
