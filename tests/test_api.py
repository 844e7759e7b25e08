"""REST clients: API tokens, the conversation endpoints, stopping a reply, and input limits."""

from __future__ import annotations

import uuid

import httpx
import pytest

from conversations.models import ApiToken, Conversation, Message
from tests.fake_upstream import DEFAULT_TOKENS
from tests.helpers import (
    create_token,
    interrupt_once_its_producer_is_gone,
    open_stream,
    read_in_background,
    reply_streaming_in,
    token_client,
    wait_for,
)
from tests.sse import content_frames, parse_body


def test_token_from_the_command_streams_without_csrf_and_only_its_hash_is_stored(
    server, user, fake_upstream
):
    token = create_token("alice")

    with token_client(server, token) as client:
        response = client.post("/api/chat/stream", json={"message": "token stream"})

    assert response.status_code == 200
    conversation_id = int(response.headers["x-conversation-id"])
    message_id = int(response.headers["x-message-id"])
    assert [frame.json() for frame in content_frames(parse_body(response.content))] == [
        *({"token": token, "done": False} for token in DEFAULT_TOKENS),
        {
            "token": "",
            "done": True,
            "conversation_id": conversation_id,
            "message_id": message_id,
            "status": "complete",
        },
    ]
    stored = ApiToken.objects.get(owner=user)
    assert stored.name == "cli"
    assert token.startswith(stored.prefix)
    assert token not in (stored.digest, stored.prefix, stored.name)
    assert wait_for(lambda: ApiToken.objects.get(pk=stored.pk).last_used_at)
    conversation = Conversation.objects.get(pk=conversation_id)
    assert conversation.owner == user


def test_revoked_unknown_or_malformed_tokens_get_401_with_a_bearer_challenge(server, user):
    token = create_token("alice")
    ApiToken.objects.filter(owner=user).update(revoked_at="2026-01-01T00:00:00Z")

    for header in (f"Bearer {token}", "Bearer cst_not-a-real-token", "Bearer", "Basic abc"):
        response = httpx.get(f"{server.url}/api/conversations", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"]["code"] == "invalid_token"


def test_a_deactivated_owners_token_gets_401(server, user):
    token = create_token("alice")
    with token_client(server, token) as client:
        assert client.get("/api/conversations").status_code == 200
        user.is_active = False
        user.save(update_fields=["is_active"])

        response = client.get("/api/conversations")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


def test_a_bad_token_never_falls_back_to_the_session(server, client):
    response = client.get("/api/conversations", headers={"Authorization": "Bearer wrong"})

    assert response.status_code == 401


def test_session_requests_that_change_state_still_need_csrf(server, client, user):
    conversation = Conversation.objects.create(owner=user, title="keep me")

    response = client.delete(
        f"/api/conversations/{conversation.pk}", headers={"X-CSRFToken": "x" * 32}
    )

    assert response.status_code == 403
    assert Conversation.objects.filter(pk=conversation.pk).exists()


def test_conversation_list_is_the_callers_own_newest_first_and_paginated(server, user, make_user):
    other = make_user("mallory")
    Conversation.objects.create(owner=other, title="not yours")
    for index in range(25):
        Conversation.objects.create(owner=user, title=f"c{index}")
    token = create_token("alice")

    with token_client(server, token) as client:
        first = client.get("/api/conversations").json()
        second = client.get("/api/conversations", params={"page": 2}).json()
        bad = client.get("/api/conversations", params={"page": "zero"})

    assert first["total"] == 25 and first["has_next"] is True
    assert [c["title"] for c in first["results"]] == [f"c{i}" for i in range(24, 4, -1)]
    assert [c["title"] for c in second["results"]] == [f"c{i}" for i in range(4, -1, -1)]
    assert second["has_next"] is False
    assert first["results"][0]["message_count"] == 0
    assert bad.status_code == 400


def test_conversation_detail_has_every_message_with_status_and_metrics(
    server, client, fake_upstream
):
    fake_upstream.script("detail please", tokens=["a", "b"], usage=(5, 2))
    started = client.post("/api/chat/stream", json={"message": "detail please"})
    conversation_id = started.headers["x-conversation-id"]

    detail = client.get(f"/api/conversations/{conversation_id}").json()

    assert detail["id"] == int(conversation_id)
    assert detail["system_prompt"] == "You are a helpful assistant."
    user_message, reply = detail["messages"]
    assert (user_message["role"], user_message["content"]) == ("user", "detail please")
    assert reply["id"] == int(started.headers["x-message-id"])
    assert (reply["role"], reply["content"], reply["status"]) == ("assistant", "ab", "complete")
    assert reply["metrics"]["prompt_tokens"] == 5
    assert reply["metrics"]["completion_tokens"] == 2
    assert reply["metrics"]["finish_reason"] == "stop"
    assert reply["metrics"]["ttft_ms"] is not None
    assert reply["error"] is None


def test_nobody_can_read_delete_or_cancel_another_users_conversation(server, client_for, make_user):
    alice, bob = make_user("alice"), make_user("bob")
    conversation = Conversation.objects.create(owner=alice, title="private")
    message = Message.objects.create(
        conversation=conversation, role="assistant", status="streaming"
    )
    bob_client = client_for(bob)

    assert bob_client.get(f"/api/conversations/{conversation.pk}").status_code == 404
    assert bob_client.delete(f"/api/conversations/{conversation.pk}").status_code == 404
    assert bob_client.post(f"/api/messages/{message.pk}/cancel").status_code == 404
    assert [c["id"] for c in bob_client.get("/api/conversations").json()["results"]] == []
    assert Conversation.objects.filter(pk=conversation.pk).exists()
    assert Message.objects.get(pk=message.pk).status == "streaming"
    Message.objects.filter(pk=message.pk).update(status="interrupted")


def test_owner_deletes_a_conversation_with_its_messages(server, client, user):
    conversation = Conversation.objects.create(owner=user, title="bye")
    Message.objects.create(conversation=conversation, role="user", content="x")

    response = client.delete(f"/api/conversations/{conversation.pk}")

    assert response.status_code == 204
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()
    assert client.get(f"/api/conversations/{conversation.pk}").status_code == 404


def test_cancel_stops_a_reply_streaming_to_another_request(server, client, user, fake_upstream):
    fake_upstream.script(
        "stop from elsewhere", tokens=[f"t{i} " for i in range(500)], interval=0.02
    )
    token = create_token("alice")

    stream = read_in_background(open_stream(client, "stop from elsewhere"), client)
    message_id = stream.stream.message_id
    wait_for(lambda: len(stream.frames) >= 5)
    with token_client(server, token) as api:
        cancelled = api.post(f"/api/messages/{message_id}/cancel")
    stream.reader.join(5)
    stream.stream.close()

    assert cancelled.status_code == 200
    assert cancelled.json() == {"id": message_id, "status": "cancelled"}
    data = content_frames(stream.frames)
    assert (data[-1].json()["done"], data[-1].json()["status"]) == (True, "cancelled")
    assert len(data) < 500
    assert wait_for(lambda: fake_upstream.requests_for("stop from elsewhere")[-1].aborted)
    saved = Message.objects.get(pk=message_id)
    assert saved.status == "cancelled"
    assert saved.content.startswith("t0 t1 t2 t3 ")
    again = client.post(f"/api/messages/{message_id}/cancel")
    assert again.json() == {"id": message_id, "status": "cancelled"}


@pytest.fixture
def two_processes(start_server, fake_upstream, redis_url):
    """Two server processes sharing Redis, as two uvicorn workers would."""
    shared = {
        "CHAT_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_upstream.base_url,
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": f"pair-{uuid.uuid4().hex}",
        "CHAT_STOP_WAIT_SECONDS": "1.5",
    }
    return start_server("pair-one", **shared), start_server("pair-two", **shared)


def test_cancel_reaches_a_reply_streaming_in_another_server_process(
    two_processes, user, fake_upstream
):
    one, two = two_processes
    token = create_token("alice")
    stream = reply_streaming_in(one, fake_upstream, token, "stop across")
    message_id = int(stream.response.headers["x-message-id"])

    with token_client(two, token) as api:
        cancelled = api.post(f"/api/messages/{message_id}/cancel")
    stream.finish()

    assert cancelled.status_code == 200
    assert cancelled.json() == {"id": message_id, "status": "cancelled"}
    final = content_frames(stream.frames)[-1].json()
    assert (final["done"], final["status"]) == (True, "cancelled")
    assert wait_for(lambda: fake_upstream.requests_for("stop across")[-1].aborted)
    saved = Message.objects.get(pk=message_id)
    assert saved.status == "cancelled"
    assert saved.content.startswith("w0 w1 w2 w3 ")


def test_deleting_a_conversation_stops_its_reply_in_another_server_process(
    two_processes, user, fake_upstream
):
    one, two = two_processes
    token = create_token("alice")
    stream = reply_streaming_in(one, fake_upstream, token, "delete across")
    conversation_id = int(stream.response.headers["x-conversation-id"])

    with token_client(two, token) as api:
        deleted = api.delete(f"/api/conversations/{conversation_id}")
    stream.finish()

    assert deleted.status_code == 204
    assert not stream.reader.is_alive()
    assert wait_for(lambda: fake_upstream.requests_for("delete across")[-1].aborted)
    assert not Conversation.objects.filter(pk=conversation_id).exists()


def test_cancel_answers_409_when_the_process_holding_the_reply_is_gone(
    two_processes, user, fake_upstream
):
    one, two = two_processes
    token = create_token("alice")
    stream = reply_streaming_in(one, fake_upstream, token, "orphaned")
    message_id = int(stream.response.headers["x-message-id"])
    one.process.kill()
    stream.finish()
    assert isinstance(stream.frames[-1], httpx.TransportError)

    with token_client(two, token) as api:
        refused = api.post(f"/api/messages/{message_id}/cancel")

    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "not_cancellable_here"
    assert Message.objects.get(pk=message_id).status == "streaming"
    interrupt_once_its_producer_is_gone(message_id)


LIMIT_CASES = [
    ({"message": "x" * 32_001}, "message_too_long"),
    ({"message": "x", "system_prompt": "s" * 8_001}, "system_prompt_too_long"),
    ({"message": "x", "history": [{"role": "user", "content": "h"}] * 101}, "history_too_long"),
    (
        {"message": "x", "history": [{"role": "user", "content": "h" * 32_001}]},
        "history_item_too_long",
    ),
]


@pytest.mark.parametrize(("body", "code"), LIMIT_CASES, ids=[c for _, c in LIMIT_CASES])
def test_input_over_a_limit_is_refused_with_the_limit_named(server, client, user, body, code):
    response = client.post("/api/chat/stream", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == code
    assert "limit of" in response.json()["error"]["message"]
    assert not Conversation.objects.filter(owner=user).exists()


def test_get_message_over_the_limit_is_refused(server, client):
    response = client.get("/api/chat/stream", params={"message": "x" * 32_001})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "message_too_long"
