"""The fresh-machine path: sign in through the real form and stream the offline demo reply."""

from __future__ import annotations

import json
import re
from contextlib import closing

import httpx
import pytest
from django.contrib.auth import get_user_model

from conversations.models import Message
from tests.sse import content_frames, iter_frames


@pytest.fixture(scope="module")
def demo_server(start_server):
    return start_server(
        "demo", CHAT_PROVIDER="demo", CHAT_MODEL="demo", CHAT_DEMO_TOKENS_PER_SECOND="400"
    )


def sign_in(base_url: str, username: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=base_url, timeout=15)
    page = client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post(
        "/accounts/login/",
        data={"username": username, "password": password, "csrfmiddlewaretoken": token},
    )
    assert response.status_code == 302, response.text
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


def test_signed_in_user_streams_the_labelled_offline_demo_reply(demo_server, transactional_db):
    get_user_model().objects.create_user("erin", password="a long enough passphrase")

    client = sign_in(demo_server.url, "erin", "a long enough passphrase")
    with (
        closing(client),
        client.stream("POST", "/api/chat/stream", json={"message": "Bonjour ☕"}) as response,
    ):
        frames = content_frames(list(iter_frames(response)))
        message_id = int(response.headers["x-message-id"])

    tokens = [json.loads(f.data)["token"] for f in frames[:-1]]
    text = "".join(tokens)
    assert len(tokens) > 50
    assert "offline demo model" in text
    assert "CHAT_PROVIDER=openai" in text and "OPENAI_BASE_URL" in text
    assert "**" in text and "```" in text
    assert "Bonjour ☕" in text and "你好" in text and "👋" in text
    assert json.loads(frames[-1].data)["done"] is True
    reply = Message.objects.get(pk=message_id)
    assert (reply.status, reply.content, reply.model) == ("complete", text, "demo")


def test_wrong_password_does_not_sign_in(demo_server, transactional_db):
    get_user_model().objects.create_user("frank", password="the right passphrase")
    with httpx.Client(base_url=demo_server.url) as client:
        page = client.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        response = client.post(
            "/accounts/login/",
            data={"username": "frank", "password": "wrong", "csrfmiddlewaretoken": token},
        )
        api = client.get("/api/chat/stream", params={"message": "hi"})

    assert response.status_code == 200
    assert "didn't match" in response.text
    assert api.status_code == 401
