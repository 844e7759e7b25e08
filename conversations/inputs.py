"""Turning request bodies and query strings into a validated ChatRequest, or an ApiError."""

from __future__ import annotations

import json
from collections.abc import Mapping

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, QueryDict
from django.http.request import RawPostDataException

from .errors import ApiError
from .services import ChatRequest

HISTORY_ROLES = {"user", "assistant"}


def bad_request(message: str, code: str = "invalid_request") -> ApiError:
    return ApiError(400, code, message)


def check_length(value: str, limit: int, field: str) -> None:
    if len(value) > limit:
        raise bad_request(
            f"'{field}' is longer than the limit of {limit} characters.", f"{field}_too_long"
        )


def chat_request_from_query(query: QueryDict) -> ChatRequest:
    message = query.get("message", "")
    if not message.strip():
        raise bad_request("The 'message' query parameter is required.", "missing_message")
    check_length(message, settings.CHAT_MAX_MESSAGE_CHARS, "message")
    raw_id = query.get("conversation_id")
    conversation_id = None
    if raw_id not in (None, ""):
        if not raw_id.isdigit():
            raise bad_request("'conversation_id' must be a positive integer.")
        conversation_id = int(raw_id)
    return ChatRequest(message=message, conversation_id=conversation_id)


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
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad_request("The body is not valid JSON.", "malformed_json") from None


def chat_request_from_json(payload: object) -> ChatRequest:
    if not isinstance(payload, Mapping):
        raise bad_request("The body must be a JSON object.")
    message = payload.get("message")
    if message is None or (isinstance(message, str) and not message.strip()):
        raise bad_request("'message' is required and must not be empty.", "missing_message")
    if not isinstance(message, str):
        raise bad_request("'message' must be a string.")
    check_length(message, settings.CHAT_MAX_MESSAGE_CHARS, "message")
    system_prompt = payload.get("system_prompt", payload.get("systemPrompt"))
    if system_prompt is not None and not isinstance(system_prompt, str):
        raise bad_request("'system_prompt' must be a string.")
    if system_prompt is not None:
        check_length(system_prompt, settings.CHAT_MAX_SYSTEM_PROMPT_CHARS, "system_prompt")
    conversation_id = payload.get("conversation_id")
    if conversation_id is not None and (
        isinstance(conversation_id, bool)
        or not isinstance(conversation_id, int)
        or conversation_id < 1
    ):
        raise bad_request("'conversation_id' must be a positive integer.")
    return ChatRequest(
        message=message,
        conversation_id=conversation_id,
        system_prompt=system_prompt,
        history=history_from_json(payload.get("history")),
    )


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
        items.append({"role": role, "content": content})
    return items


def pagination_from_query(query: QueryDict, *, max_page_size: int = 100) -> tuple[int, int]:
    def positive(name: str, default: int) -> int:
        raw = query.get(name, "")
        if raw == "":
            return default
        if not raw.isdigit() or int(raw) < 1:
            raise bad_request(f"'{name}' must be a positive integer.")
        return int(raw)

    return positive("page", 1), min(positive("page_size", 20), max_page_size)
