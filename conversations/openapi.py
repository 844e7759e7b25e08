"""The OpenAPI 3.1 description of every ``/api/`` endpoint (served at /api/openapi.json).

A test compares its paths and methods with the URL configuration, so it cannot drift silently.
"""

from __future__ import annotations

from django.conf import settings

from .diagnostics import (
    DEFAULT_COUNT,
    DEFAULT_INTERVAL_MS,
    MAX_COUNT,
    MAX_IDLE_SECONDS,
    MAX_INTERVAL_MS,
    MIN_COUNT,
    MIN_INTERVAL_MS,
)


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _bounded(name: str, description: str, default: int, minimum: int, maximum: int) -> dict:
    schema = {"type": "integer", "minimum": minimum, "maximum": maximum, "default": default}
    return {"name": name, "in": "query", "description": description, "schema": schema}


COMMON_ERRORS = {
    "401": _error("Missing, bad or revoked credentials (with `WWW-Authenticate: Bearer`)."),
    "429": _error("Over the rate limit (`Retry-After` gives the seconds to wait)."),
    "503": _error(
        "Redis is unreachable, so the limits cannot be checked (`limits_unavailable`), or the "
        "database is (`database_unavailable`); `Retry-After`."
    ),
}
STOP_UNAVAILABLE = _error(
    "Redis is unreachable: the limits cannot be checked (`limits_unavailable`), or a reply in "
    "another server process cannot be asked to stop (`stop_unavailable`); or the database is "
    "(`database_unavailable`); `Retry-After`."
)

SSE_DESCRIPTION = (
    "Server-Sent Events. Token frames, then a final frame (on POST it says how the reply "
    "ended: `status` is `complete` or `cancelled`); `: ping` comments every "
    "CHAT_KEEPALIVE_SECONDS while idle. A failure after the stream started ends it with "
    '`event: error` and `data: {"code": "...", "message": "..."}`. Headers: '
    "`Cache-Control: no-cache`, `X-Accel-Buffering: no`, `X-Conversation-Id`, `X-Message-Id`."
)

STREAM_ERRORS = {
    "400": _error("Malformed JSON, a missing or empty message, wrong types, a field over "
                  "its limit (the code names it, e.g. `message_too_long`), text with NUL or an "
                  "unpaired surrogate (`invalid_text`), JSON nested deeper than its fields "
                  "(`too_deep`), or a `model` not on offer (`model_not_allowed`; `allowed` "
                  "lists those on offer)."),
    "403": _error("CSRF check failed (session requests), or a GET stream opened with the "
                  "session that does not show it comes from this site (`cross_site`)."),
    "404": _error("Unknown conversation, or someone else's; a `regenerate_of` that is not a "
                  "reply of it, or an `edit_of` that is not a message of the caller's in it "
                  "(`message_not_found`)."),
    "405": _error("Method not allowed."),
    **COMMON_ERRORS,
    "429": _error("Over the rate limit; too many concurrent streams (`too_many_streams`): "
                  "the queue was full or no slot freed in time; or the caller's daily token "
                  "quota is used up (`quota_exceeded`, with `quota`, `used` and `resets_at`, "
                  "the next midnight UTC; the model was not called and nothing was saved). "
                  "`Retry-After` is set."),
}  # fmt: skip


MODEL_DESCRIPTION = (
    "The model to answer with, one of those on offer (`CHAT_MODELS`, else the upstream's "
    "list; else 400 `model_not_allowed`). Saved on the conversation: later messages without "
    "one go on with it. Default: the conversation's model, or for a new one `CHAT_MODEL`."
)


def _stream_response(example: str) -> dict:
    return {
        "description": SSE_DESCRIPTION,
        "headers": {
            "X-Conversation-Id": {"schema": {"type": "integer"}},
            "X-Message-Id": {"schema": {"type": "integer"}},
        },
        "content": {"text/event-stream": {"schema": {"type": "string"}, "example": example}},
    }


def openapi_document() -> dict:
    limits = {
        "message": settings.CHAT_MAX_MESSAGE_CHARS,
        "system_prompt": settings.CHAT_MAX_SYSTEM_PROMPT_CHARS,
        "history_items": settings.CHAT_MAX_HISTORY_ITEMS,
        "history_item": settings.CHAT_MAX_HISTORY_ITEM_CHARS,
        "body_bytes": settings.CHAT_MAX_BODY_BYTES,
    }
    conversation_id = {
        "name": "conversation_id", "in": "path", "required": True, "schema": {"type": "integer"},
    }  # fmt: skip
    message_id = {**conversation_id, "name": "message_id"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chatsite API",
            "version": "1",
            "description": (
                "Streams language-model replies over SSE and keeps every exchange. "
                "Authenticate with `Authorization: Bearer <token>` (exempt from CSRF) or a "
                "browser session (unsafe methods need `X-CSRFToken`). Rate limit: "
                f"{settings.CHAT_RATE_LIMIT} per user (per IP when anonymous); at most "
                f"{settings.CHAT_STREAMS_PER_USER} concurrent streams per user. Every answer "
                "carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (seconds), "
                "and `Cache-Control: private, no-store` (the streams: `no-cache`)."
            ),
        },
        "security": [{"bearer": []}, {"session": []}],
        "paths": {
            "/api/chat/stream": {
                "get": {
                    "summary": "Stream a reply (EventSource, curl)",
                    "parameters": [
                        {
                            "name": "message",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string", "maxLength": limits["message"]},
                        },
                        {
                            "name": "conversation_id",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "integer"},
                        },
                        {
                            "name": "model",
                            "in": "query",
                            "required": False,
                            "description": MODEL_DESCRIPTION,
                            "schema": {"type": "string", "maxLength": 200},
                        },
                        {
                            "name": "Last-Event-ID",
                            "in": "header",
                            "required": False,
                            "description": "An EventSource reconnecting: the id of the last "
                            "frame it has (`<message id>-<n>`); the stream resumes with the "
                            "next frame. Never starts a reply.",
                            "schema": {"type": "string"},
                        },
                    ],  # fmt: skip
                    "responses": {
                        "200": _stream_response(
                            'retry: 2000\n\nid: 42-1\ndata: "Hello"\n\nid: 42-2\ndata: [DONE]\n\n'
                        ),
                        "204": {
                            "description": "A `Last-Event-ID` with nothing to resume: not an "
                            "id of the caller's reply this server keeps, or its last frame."
                        },
                        **STREAM_ERRORS,
                    },
                },
                "post": {
                    "summary": "Stream a reply (fetch clients)",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "schema": {"type": "string", "maxLength": 255},
                            "description": "Sent again with the same body within 24 h, the "
                            "request gets the reply the first one started, from its start, "
                            "instead of a second generation.",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("ChatRequest")}},
                    },
                    "responses": {
                        "200": _stream_response(
                            'data: {"token": "Hello", "done": false}\n\n'
                            'data: {"token": "", "done": true, "conversation_id": 1, '
                            '"message_id": 2, "status": "complete"}\n\n'
                        ),
                        **STREAM_ERRORS,
                        "409": _error(
                            "The conversation's last reply is still being written "
                            "(`reply_in_progress`; `message_id` names it, to attach to)."
                        ),
                        "413": _error(f"Body larger than {limits['body_bytes']} bytes."),
                        "422": _error(
                            "The Idempotency-Key was used with another body "
                            "(`idempotency_key_reused`)."
                        ),
                        "415": _error("Body is not application/json."),
                    },
                },
            },
            "/api/conversations": {
                "get": {
                    "summary": "The caller's conversations, newest first, or those matching `q`",
                    "parameters": [
                        {"name": "page", "in": "query", "schema": {"type": "integer"}},
                        {
                            "name": "q",
                            "in": "query",
                            "schema": {"type": "string", "maxLength": 200},
                            "description": "Search: conversations whose title, or one of "
                            "whose messages, has every word of `q` (each word as a prefix, "
                            "case-insensitive). Each result then has a `snippet` of the first "
                            "message that matches (null for a match by title only).",
                        },
                        {
                            "name": "page_size",
                            "in": "query",
                            "schema": {"type": "integer", "maximum": 100, "default": 20},
                        },
                    ],  # fmt: skip
                    "responses": {
                        "200": {
                            "description": "One page.",
                            "content": {"application/json": {"schema": _ref("ConversationPage")}},
                        },
                        "400": _error(
                            "Bad page parameters, a `q` over 200 characters (`q_too_long`) or "
                            "with NUL or an unpaired surrogate (`invalid_text`)."
                        ),
                        **COMMON_ERRORS,
                    },
                }
            },
            "/api/conversations/{conversation_id}": {
                "parameters": [conversation_id],
                "get": {
                    "summary": "One conversation with its messages",
                    "responses": {
                        "200": {
                            "description": "The conversation.",
                            "content": {"application/json": {"schema": _ref("ConversationDetail")}},
                        },
                        "404": _error("Unknown conversation, or someone else's."),
                        **COMMON_ERRORS,
                    },
                },
                "patch": {
                    "summary": "Rename a conversation",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["title"],
                                    "properties": {
                                        "title": {
                                            "type": "string",
                                            "minLength": 1,
                                            "maxLength": 200,
                                            "description": "Whitespace runs (line breaks "
                                            "too) become one space; leading and trailing "
                                            "space is dropped.",
                                        }
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The renamed conversation.",
                            "content": {
                                "application/json": {"schema": _ref("ConversationSummary")}
                            },
                        },
                        "400": _error(
                            "Malformed JSON, a missing or blank title (`missing_title`), one "
                            "over 200 characters (`title_too_long`), or text with NUL or an "
                            "unpaired surrogate (`invalid_text`)."
                        ),
                        "403": _error("CSRF check failed (session requests)."),
                        "404": _error("Unknown conversation, or someone else's."),
                        "413": _error(f"Body larger than {limits['body_bytes']} bytes."),
                        "415": _error("Body is not application/json."),
                        **COMMON_ERRORS,
                    },
                },
                "delete": {
                    "summary": "Delete a conversation (stopping its running replies)",
                    "responses": {
                        "204": {"description": "Deleted."},
                        "403": _error("CSRF check failed (session requests)."),
                        "404": _error("Unknown conversation, or someone else's."),
                        **COMMON_ERRORS,
                        "503": STOP_UNAVAILABLE,
                    },
                },
            },
            "/api/models": {
                "get": {
                    "summary": "The models on offer: `model` may name any of them",
                    "responses": {
                        "200": {
                            "description": "The default (`CHAT_MODEL`) and every model on "
                            "offer, the default first.",
                            "content": {"application/json": {"schema": _ref("ModelList")}},
                        },
                        **COMMON_ERRORS,
                    },
                }
            },
            "/api/usage": {
                "get": {
                    "summary": "The caller's token usage per UTC day and model, and the quota",
                    "description": "Tokens as the upstream counted them; where it did not, "
                    "estimated (`estimated_tokens` says how many): the completion as the number "
                    "of text deltas, the prompt as its characters / 4. Only the caller's own.",
                    "parameters": [
                        {
                            "name": "days",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 90,
                                "default": 7,
                            },
                            "description": "How many days, today included (newest first).",
                        }
                    ],  # fmt: skip
                    "responses": {
                        "200": {
                            "description": "The usage and the quota.",
                            "content": {"application/json": {"schema": _ref("Usage")}},
                        },
                        "400": _error("`days` is not an integer from 1 to 90."),
                        **COMMON_ERRORS,
                    },
                }
            },
            "/api/diagnostics/stream": {
                "get": {
                    "summary": "Timed frames to tell whether a proxy buffers, compresses or "
                    "cuts streams (staff only; `manage.py check_streaming` reads it)",
                    "parameters": [
                        _bounded(
                            "count", "Tick frames to send.", DEFAULT_COUNT, MIN_COUNT, MAX_COUNT
                        ),
                        _bounded(
                            "interval_ms",
                            "Milliseconds between ticks.",
                            DEFAULT_INTERVAL_MS,
                            MIN_INTERVAL_MS,
                            MAX_INTERVAL_MS,
                        ),
                        _bounded(
                            "idle_seconds",
                            "After the ticks, an `idle` frame and this "
                            "long without a byte, then `end` (0: no silence).",
                            0,
                            0,
                            MAX_IDLE_SECONDS,
                        ),
                    ],  # fmt: skip
                    "responses": {
                        "200": {
                            "description": "Server-Sent Events, sent and framed as the reply "
                            "streams are (same headers): `count` frames `event: tick` "
                            "(`id: <seq>`; data `seq`, `count`, `interval_ms`, `sent_ms`: "
                            "milliseconds since the first tick left, `sent_at`: the same "
                            "moment as ISO time, `keepalive_seconds`), then, with "
                            "`idle_seconds`, `event: idle` and that long of silence, then "
                            "`event: end`.",
                            "content": {
                                "text/event-stream": {
                                    "schema": {"type": "string"},
                                    "example": 'event: tick\nid: 1\ndata: {"seq": 1, '
                                    '"count": 10, "interval_ms": 200, "sent_ms": 0.0, '
                                    '"sent_at": "2025-01-01T12:00:00.000+00:00", '
                                    '"keepalive_seconds": 15.0}\n\n'
                                    '...\n\nevent: end\ndata: {"count": 10}\n\n',
                                }
                            },
                        },
                        "400": _error("A parameter out of its bounds (the message gives them)."),
                        "403": _error(
                            "The caller is not staff (`staff_only`), or the stream "
                            "was opened with the session from another site "
                            "(`cross_site`)."
                        ),
                        **COMMON_ERRORS,
                    },  # fmt: skip
                }
            },
            "/api/messages/{message_id}/cancel": {
                "parameters": [message_id],
                "post": {
                    "summary": "Stop a reply that is still streaming (partial text kept)",
                    "responses": {
                        "200": {
                            "description": "The reply's status after the request.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "id": {"type": "integer"},
                                            "status": _ref("MessageStatus"),
                                        },
                                    }
                                }
                            },
                        },
                        "403": _error("CSRF check failed (session requests)."),
                        "404": _error("Unknown message, or someone else's."),
                        "409": _error(
                            "No server process stopped the reply within "
                            "`CHAT_STOP_WAIT_SECONDS`: the one producing it has stopped running."
                        ),
                        **COMMON_ERRORS,
                        "503": STOP_UNAVAILABLE,
                    },
                },
            },
            "/api/messages/{message_id}/show": {
                "parameters": [message_id],
                "post": {
                    "summary": "Show this version of its turn (and below it the newest replies)",
                    "responses": {
                        "200": {
                            "description": "The path now shown, first to last.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "conversation_id": {"type": "integer"},
                                            "current_path": {
                                                "type": "array",
                                                "items": {"type": "integer"},
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        "403": _error("CSRF check failed (session requests)."),
                        "404": _error("Unknown message, or someone else's."),
                        **COMMON_ERRORS,
                    },
                },
            },
            "/api/messages/{message_id}/stream": {
                "parameters": [message_id],
                "get": {
                    "summary": "Attach to a reply: its frames after the first `after`, live",
                    "parameters": [
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "default": 0},
                            "description": "How many token frames of this reply the client "
                            "has; the stream starts with the next.",
                        }
                    ],
                    "responses": {
                        "200": _stream_response(
                            'data: {"token": " world", "done": false}\n\n'
                            'data: {"token": "", "done": true, "conversation_id": 1, '
                            '"message_id": 2, "status": "complete"}\n\n'
                        ),
                        "400": _error("`after` is not a count, or past the reply's frames."),
                        "404": _error("Unknown reply, or someone else's."),
                        "409": _error(
                            "The reply is being written by another server process "
                            "(`reply_elsewhere`; `Retry-After`)."
                        ),
                        **COMMON_ERRORS,
                    },
                },
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "sessionid"},
            },
            "schemas": _schemas(limits),
        },
    }


def _schemas(limits: dict) -> dict:
    text = {"type": "string"}
    nullable_int = {"type": ["integer", "null"]}
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": text, "message": text},
                }
            },
        },
        "StreamError": {
            "description": "The data of an `event: error` frame.",
            "type": "object",
            "properties": {"code": text, "message": text},
        },
        "ChatRequest": {
            "type": "object",
            "description": "`message` is required unless `regenerate_of` is given (then it must "
            "be absent).",
            "properties": {
                "message": {"type": "string", "minLength": 1, "maxLength": limits["message"]},
                "system_prompt": {"type": "string", "maxLength": limits["system_prompt"]},
                "systemPrompt": {"type": "string", "description": "Alias of system_prompt."},
                "history": {
                    "type": "array",
                    "maxItems": limits["history_items"],
                    "items": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"enum": ["user", "assistant"]},
                            "content": {"type": "string", "maxLength": limits["history_item"]},
                        },
                    },
                },
                "conversation_id": {"type": "integer", "minimum": 1},
                "model": {"type": "string", "maxLength": 200, "description": MODEL_DESCRIPTION},
                "regenerate_of": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "A reply of the conversation to answer again: the new reply "
                    "is a version of it (same parent), the prompt is the path up to the message "
                    "it answers. Needs `conversation_id`; no `message`.",
                },
                "edit_of": {
                    "type": "integer",
                    "minimum": 1,
                    "description": "A message of the caller's in the conversation that "
                    "`message` replaces as a new version (same parent); the prompt is the path "
                    "up to it, then `message`. Needs `conversation_id`.",
                },
            },
        },
        "ModelList": {
            "type": "object",
            "properties": {
                "default": text,
                "models": {"type": "array", "items": text},
            },
        },
        "MessageStatus": {
            "enum": ["streaming", "complete", "cancelled", "error", "interrupted"],
        },
        "Message": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "parent_id": {
                    "type": ["integer", "null"],
                    "description": "The message this one follows (null for a first message); "
                    "messages with the same parent are versions of one turn.",
                },
                "role": {"enum": ["user", "assistant"]},
                "content": text,
                "status": _ref("MessageStatus"),
                "model": text,
                "created_at": {"type": "string", "format": "date-time"},
                "finished_at": {"type": ["string", "null"], "format": "date-time"},
                "metrics": {
                    "type": "object",
                    "properties": {
                        "ttft_ms": nullable_int,
                        "duration_ms": nullable_int,
                        "prompt_tokens": nullable_int,
                        "completion_tokens": nullable_int,
                        "finish_reason": text,
                    },
                },
                "error": {"oneOf": [{"type": "null"}, _ref("StreamError")]},
            },
        },
        "ConversationSummary": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "title": text,
                "model": text,
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "message_count": {"type": "integer"},
                "snippet": {
                    "type": ["string", "null"],
                    "description": "Search results only: a piece of the first message that "
                    "matches.",
                },
            },
        },
        "ConversationDetail": {
            "allOf": [
                _ref("ConversationSummary"),
                {
                    "type": "object",
                    "properties": {
                        "system_prompt": text,
                        "messages": {
                            "type": "array",
                            "items": _ref("Message"),
                            "description": "Every message, every version, in the order written.",
                        },
                        "current_path": {
                            "type": "array",
                            "items": {"type": "integer"},
                            "description": "The ids of the messages shown, first to last: the "
                            "path the next message follows.",
                        },
                    },
                },
            ]
        },
        "UsageTotals": {
            "type": "object",
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "completion_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
                "replies": {"type": "integer"},
                "estimated_tokens": {
                    "type": "integer",
                    "description": "How many of the tokens are estimates: the upstream did "
                    "not report them.",
                },
            },
        },
        "UsageDay": {
            "allOf": [
                _ref("UsageTotals"),
                {
                    "type": "object",
                    "properties": {
                        "day": {"type": "string", "format": "date"},
                        "models": {
                            "type": "array",
                            "items": {
                                "allOf": [
                                    _ref("UsageTotals"),
                                    {"type": "object", "properties": {"model": text}},
                                ]
                            },
                        },
                    },
                },
            ]
        },
        "Usage": {
            "type": "object",
            "properties": {
                "today": _ref("UsageDay"),
                "quota": {
                    "type": "object",
                    "properties": {
                        "daily_tokens": {
                            "type": ["integer", "null"],
                            "description": "Tokens (prompt and completion) per UTC day; "
                            "null: no limit.",
                        },
                        "source": {
                            "enum": ["site", "user", None],
                            "description": "`site`: CHAT_DAILY_TOKEN_QUOTA; `user`: the "
                            "caller's own.",
                        },
                        "used": {"type": "integer"},
                        "remaining": nullable_int,
                        "exceeded": {
                            "type": "boolean",
                            "description": "New replies get 429 `quota_exceeded` until reset.",
                        },
                        "resets_at": {"type": "string", "format": "date-time"},
                    },
                },
                "days": {"type": "array", "items": _ref("UsageDay")},
            },
        },
        "ConversationPage": {
            "type": "object",
            "properties": {
                "results": {"type": "array", "items": _ref("ConversationSummary")},
                "page": {"type": "integer"},
                "page_size": {"type": "integer"},
                "total": {"type": "integer"},
                "has_next": {"type": "boolean"},
            },
        },
    }
