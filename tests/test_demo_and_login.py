"""The fresh-machine path: sign in through the real form and stream the offline demo reply."""

from __future__ import annotations

import json
from contextlib import closing

import httpx
import pytest
from django.contrib.auth import get_user_model

from conversations.models import Message
from tests.helpers import sign_in, signed_in_client
from tests.sse import content_frames, iter_frames


@pytest.fixture(scope="module")
def demo_server(start_server):
    return start_server(
        "demo", CHAT_PROVIDER="demo", CHAT_MODEL="demo", CHAT_DEMO_TOKENS_PER_SECOND="400"
    )


def test_signed_in_user_streams_the_labelled_offline_demo_reply(demo_server, transactional_db):
    get_user_model().objects.create_user("erin", password="a long enough passphrase")

    client = signed_in_client(demo_server.url, "erin", "a long enough passphrase")
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
        response = sign_in(client, "frank", "wrong")
        api = client.get("/api/chat/stream", params={"message": "hi"})

    assert response.status_code == 200
    assert "didn't match" in response.text
    assert api.status_code == 401
