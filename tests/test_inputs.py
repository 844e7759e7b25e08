"""Input validation in-process (no server, no database): each rule of ``conversations.inputs``
on its own, so that a failure names the rule that broke. The same requests through a running
server are in test_stream_failures.py and test_api.py."""

from __future__ import annotations

import json

import pytest
from django.http import QueryDict
from django.test import RequestFactory

from conversations import inputs
from conversations.errors import ApiError
from conversations.services import ChatRequest


def refused(call, *args, **kwargs) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call(*args, **kwargs)
    return caught.value


@pytest.fixture
def limits(settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 10
    settings.CHAT_MAX_SYSTEM_PROMPT_CHARS = 8
    settings.CHAT_MAX_HISTORY_ITEMS = 2
    settings.CHAT_MAX_HISTORY_ITEM_CHARS = 5
    return settings


def test_a_full_json_request_is_read_into_a_chat_request(limits):
    payload = {
        "message": "hello",
        "conversation_id": 7,
        "system_prompt": "be brief",
        "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
        "model": "m1",
    }

    assert inputs.chat_request_from_json(payload) == ChatRequest(
        message="hello",
        conversation_id=7,
        system_prompt="be brief",
        history=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
        model="m1",
    )


def test_a_bare_message_gets_the_defaults(limits):
    assert inputs.chat_request_from_json({"message": "hello"}) == ChatRequest(message="hello")
    assert inputs.chat_request_from_json({"message": "x", "model": ""}).model is None


def test_the_camel_case_system_prompt_is_accepted(limits):
    assert inputs.chat_request_from_json({"message": "x", "systemPrompt": "s"}).system_prompt == "s"


@pytest.mark.parametrize(
    ("payload", "code", "names"),
    [
        ([], "invalid_request", "JSON object"),
        ({}, "missing_message", "'message'"),
        ({"message": " \n"}, "missing_message", "'message'"),
        ({"message": 1}, "invalid_request", "'message' must be a string"),
        ({"message": "x" * 11}, "message_too_long", "limit of 10"),
        ({"message": "a\x00"}, "invalid_text", "'message'"),
        ({"message": "\ud800"}, "invalid_text", "'message'"),
        ({"message": "x", "system_prompt": 1}, "invalid_request", "'system_prompt'"),
        ({"message": "x", "system_prompt": "s" * 9}, "system_prompt_too_long", "limit of 8"),
        ({"message": "x", "conversation_id": "7"}, "invalid_request", "'conversation_id'"),
        ({"message": "x", "conversation_id": True}, "invalid_request", "'conversation_id'"),
        ({"message": "x", "conversation_id": 0}, "invalid_request", "'conversation_id'"),
        ({"message": "x", "conversation_id": 2**63}, "invalid_request", "'conversation_id'"),
        ({"message": "x", "model": 3}, "invalid_request", "'model'"),
        ({"message": "x", "model": "m" * 201}, "model_too_long", "limit of 200"),
    ],
)
def test_a_json_request_breaking_a_rule_is_refused_naming_it(limits, payload, code, names):
    error = refused(inputs.chat_request_from_json, payload)

    assert (error.status, error.code) == (400, code)
    assert names in error.message


@pytest.mark.parametrize(
    ("history", "code", "names"),
    [
        ("no", "invalid_request", "'history' must be a list"),
        ([{"role": "user", "content": "h"}] * 3, "history_too_long", "limit of 2"),
        (["text"], "invalid_request", "history[0] must be an object"),
        ([{"role": "system", "content": "h"}], "invalid_request", "history[0].role"),
        ([{"role": "user"}], "invalid_request", "history[0].content must be a string"),
        (
            [{"role": "user", "content": "ok"}, {"role": "user", "content": "h" * 6}],
            "history_item_too_long",
            "history[1].content is longer than the limit of 5",
        ),
        ([{"role": "user", "content": "\x00"}], "invalid_text", "history[0].content"),
    ],
)
def test_a_history_breaking_a_rule_is_refused_naming_the_item(limits, history, code, names):
    error = refused(inputs.history_from_json, history)

    assert (error.status, error.code) == (400, code)
    assert names in error.message


def test_history_items_keep_only_role_and_content(limits):
    history = [{"role": "user", "content": "hi", "name": "x", "extra": 1}]

    assert inputs.history_from_json(history) == [{"role": "user", "content": "hi"}]
    assert inputs.history_from_json(None) == []


def test_a_query_string_request_is_read_into_a_chat_request(limits):
    query = QueryDict("message=hello&conversation_id=42&model=m2")

    assert inputs.chat_request_from_query(query) == ChatRequest(
        message="hello", conversation_id=42, model="m2"
    )
    assert inputs.chat_request_from_query(QueryDict("message=x&conversation_id=")) == (
        ChatRequest(message="x")
    )


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", "missing_message"),
        ("message=+", "missing_message"),
        ("message=" + "x" * 11, "message_too_long"),
        ("message=a%00b", "invalid_text"),
        ("message=x&conversation_id=abc", "invalid_request"),
        ("message=x&conversation_id=%C2%B2", "invalid_request"),  # a superscript two
        ("message=x&conversation_id=-1", "invalid_request"),
        ("message=x&conversation_id=9223372036854775808", "invalid_request"),
    ],
)
def test_a_query_string_breaking_a_rule_is_refused(limits, query, code):
    error = refused(inputs.chat_request_from_query, QueryDict(query))

    assert (error.status, error.code) == (400, code)


@pytest.mark.parametrize(
    ("raw", "maximum", "expected"),
    [("1", 10, 1), ("10", 10, 10), ("0010", 10, 10)],
)
def test_positive_integers_in_ascii_digits_up_to_the_maximum(raw, maximum, expected):
    assert inputs.positive_integer(raw, "n", maximum=maximum) == expected


@pytest.mark.parametrize("raw", ["0", "11", "", "1.5", "+1", " 1", "²", "١", "1" * 20])
def test_anything_else_is_not_a_positive_integer(raw):
    error = refused(inputs.positive_integer, raw, "n", maximum=10)

    assert error.code == "invalid_request"
    assert error.message == "'n' must be an integer from 1 to 10."


@pytest.mark.parametrize(
    ("value", "depth", "expected"),
    [
        ("text", 0, False),
        ({}, 0, True),
        ({"a": 1}, 1, False),
        ({"a": [1]}, 1, True),
        ({"history": [{"role": "user"}]}, 3, False),
        ({"history": [{"role": ["user"]}]}, 3, True),
        ([[[[]]]], 3, True),
    ],
)
def test_nesting_is_measured_in_lists_and_objects(value, depth, expected):
    assert inputs.too_deep(value, depth) is expected


def json_request(body: bytes, content_type: str = "application/json"):
    return RequestFactory().post("/api/chat/stream", data=body, content_type=content_type)


def test_a_json_body_is_parsed():
    assert inputs.json_body(json_request(b'{"message": "x"}'), max_bytes=100) == {"message": "x"}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{}", "text/plain", 415, "unsupported_media_type"),
        (b'{"message": "' + b"x" * 100 + b'"}', "application/json", 413, "body_too_large"),
        (b"{not json", "application/json", 400, "malformed_json"),
        (b"\xff", "application/json", 400, "malformed_json"),
        (b"[" * 5 + b"]" * 5, "application/json", 400, "too_deep"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "too_deep"),
    ],
    ids=["not json", "too large", "malformed", "not utf-8", "too deep", "deeper than python"],
)
def test_a_body_that_cannot_be_read_is_refused(body, content_type, status, code):
    max_bytes = 100 if code == "body_too_large" else len(body)

    error = refused(inputs.json_body, json_request(body, content_type), max_bytes=max_bytes)

    assert (error.status, error.code) == (status, code)


def test_a_body_at_the_size_limit_is_read():
    body = json.dumps({"message": "x" * 50}).encode()

    assert inputs.json_body(json_request(body), max_bytes=len(body)) == {"message": "x" * 50}


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("12-3", (12, 3)),
        ("12-0", (12, 0)),
        ("12", None),
        ("x-3", None),
        ("12-", None),
        ("0-3", None),
        ("12-10000001", None),
        ("9223372036854775808-1", None),
    ],
)
def test_last_event_id_names_a_message_and_a_position_or_nothing(header, expected):
    request = RequestFactory().get("/api/chat/stream", headers={"Last-Event-ID": header})

    assert inputs.last_event_id_from(request) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", (1, 20)),
        ("page=3", (3, 20)),
        ("page_size=5", (1, 5)),
        ("page=2&page_size=500", (2, 100)),
    ],
)
def test_pagination_has_defaults_and_a_largest_page(query, expected):
    assert inputs.pagination_from_query(QueryDict(query)) == expected


@pytest.mark.parametrize("query", ["page=0", "page=1000001", "page_size=0", "page=x"])
def test_a_page_out_of_range_is_refused_naming_it(query):
    error = refused(inputs.pagination_from_query, QueryDict(query))

    assert error.code == "invalid_request"
    assert f"'{query.split('=')[0]}'" in error.message


def test_a_search_is_none_when_blank_and_refused_when_too_long():
    assert inputs.search_query_from(QueryDict("q=+")) is None
    assert inputs.search_query_from(QueryDict("q=rain")) == "rain"
    assert refused(inputs.search_query_from, QueryDict("q=" + "x" * 201)).code == "q_too_long"


@pytest.mark.parametrize(
    ("payload", "expected"),
    [({"title": "  Trip \n to   Japan "}, "Trip to Japan"), ({"title": "t" * 200}, "t" * 200)],
)
def test_a_title_is_put_on_one_line(payload, expected):
    assert inputs.conversation_title_from_json(payload) == expected


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ([], "invalid_request"),
        ({}, "missing_title"),
        ({"title": " "}, "missing_title"),
        ({"title": 5}, "invalid_request"),
        ({"title": "t" * 201}, "title_too_long"),
        ({"title": "a\x00"}, "invalid_text"),
    ],
)
def test_a_title_breaking_a_rule_is_refused(payload, code):
    assert refused(inputs.conversation_title_from_json, payload).code == code


@pytest.mark.parametrize(("header", "expected"), [(None, None), ("k", "k"), ("k" * 255, "k" * 255)])
def test_an_idempotency_key_is_optional_and_up_to_255_characters(header, expected):
    headers = {} if header is None else {"Idempotency-Key": header}
    request = RequestFactory().post("/api/chat/stream", headers=headers)

    assert inputs.idempotency_key_from(request) == expected


@pytest.mark.parametrize("header", ["", "k" * 256])
def test_an_empty_or_longer_idempotency_key_is_refused(header):
    request = RequestFactory().post("/api/chat/stream", headers={"Idempotency-Key": header})

    assert refused(inputs.idempotency_key_from, request).code == "invalid_idempotency_key"
