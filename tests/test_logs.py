"""Operators' logs through a running server: request ids, and LOG_FORMAT=json with one object
per line, a line per finished reply and per failed request, and no message text or secret."""

from __future__ import annotations

import json
import re

import httpx
import pytest

from conversations.models import Message
from conversations.tokens import api_token_create
from tests.helpers import wait_for, wait_for_status


@pytest.fixture(scope="module")
def json_logging(start_server, fake_upstream):
    return start_server(
        "json-logs",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        LOG_FORMAT="json",
        CHAT_TRUSTED_PROXIES="127.0.0.1",
        CHAT_MODELS="fake-model,other-model",
    )


def log_lines(server) -> list[dict]:
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def test_a_finished_reply_is_one_json_line_with_its_figures_and_the_request_id(
    json_logging, make_user, fake_upstream
):
    fake_upstream.script("secret plans", tokens=["classified ", "words"], usage=(9, 2))
    user = make_user("olga")
    _, token = api_token_create(owner=user)

    response = httpx.get(
        f"{json_logging.url}/api/chat/stream",
        params={"message": "secret plans", "model": "other-model"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=15,
    )
    message_id = int(response.headers["x-message-id"])
    wait_for_status(message_id)
    lines = wait_for(
        lambda: [line for line in log_lines(json_logging) if line.get("message_id") == message_id]
    )

    [reply] = lines
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert reply["request_id"] == response.headers["x-request-id"]
    assert reply["status"] == Message.Status.COMPLETE
    assert reply["user_id"] == user.pk
    assert reply["conversation_id"] == int(response.headers["x-conversation-id"])
    assert reply["model"] == "other-model"  # the model picked, not the default
    assert reply["tokens"] == 2 and reply["tokens_estimated"] is False
    assert reply["end_reason"] == "stop"
    assert isinstance(reply["ttft_ms"], int) and isinstance(reply["duration_ms"], int)
    log = json_logging.log()
    for secret in ("secret plans", "classified", token):
        assert secret not in log


def test_a_failed_request_is_one_json_line_with_the_proxys_request_id(json_logging):
    response = httpx.get(
        f"{json_logging.url}/api/conversations/123456789",
        headers={"Authorization": "Bearer cst_unknown", "X-Request-Id": "edge-42.a_b"},
        timeout=15,
    )

    assert response.status_code == 401
    assert response.headers["x-request-id"] == "edge-42.a_b"
    [failed] = wait_for(
        lambda: [line for line in log_lines(json_logging) if line.get("status_code") == 401]
    )
    assert failed["request_id"] == "edge-42.a_b"
    assert failed["status_code"] == 401
    assert failed["path"] == "/api/conversations/123456789"
    assert failed["level"] == "WARNING"


def test_every_line_of_a_json_log_is_a_json_object(json_logging):
    httpx.get(f"{json_logging.url}/healthz", timeout=15)

    lines = [line for line in json_logging.log().splitlines() if line.strip()]

    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def test_a_request_id_from_a_client_that_is_no_trusted_proxy_is_replaced(server):
    response = httpx.get(f"{server.url}/healthz", headers={"X-Request-Id": "spoofed"})

    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
