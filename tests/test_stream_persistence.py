"""What a reply leaves in the database, and what the upstream is sent as the prompt."""

from __future__ import annotations

from conversations.models import Conversation, Message
from tests.helpers import wait_for_status
from tests.sse import iter_frames, parse_body


def test_reply_and_its_metrics_are_saved(client, fake_upstream, user):
    fake_upstream.script("save me", tokens=["Saved", " reply ", "✓"], usage=(21, 3))

    response = client.post("/api/chat/stream", json={"message": "save me"})

    conversation = Conversation.objects.get(pk=response.headers["x-conversation-id"])
    assert conversation.owner == user
    assert conversation.title == "save me"
    assert conversation.model == "fake-model"
    user_message, reply = conversation.messages.all()
    assert (user_message.role, user_message.content, user_message.status) == (
        "user",
        "save me",
        "complete",
    )
    reply = wait_for_status(int(response.headers["x-message-id"]))
    assert reply.role == "assistant"
    assert reply.status == "complete"
    assert reply.content == "Saved reply ✓"
    assert reply.model == "fake-model"
    assert reply.finish_reason == "stop"
    assert (reply.prompt_tokens, reply.completion_tokens) == (21, 3)
    assert reply.ttft_ms is not None and reply.duration_ms is not None
    assert 0 <= reply.ttft_ms <= reply.duration_ms
    assert reply.finished_at is not None
    assert reply.error_code == ""
    conversation.refresh_from_db()
    assert conversation.created_at == user_message.created_at == reply.created_at
    assert conversation.updated_at == reply.finished_at


def test_user_message_is_saved_before_the_upstream_is_called(client, fake_upstream):
    fake_upstream.script("saved first", tokens=["ok"], first_token_delay=1.0)

    with client.stream("POST", "/api/chat/stream", json={"message": "saved first"}) as response:
        fake_upstream.wait_for_request("saved first")
        conversation_id = response.headers["x-conversation-id"]
        roles = list(
            Message.objects.filter(conversation_id=conversation_id).values_list("role", "status")
        )
        assert roles == [("user", "complete"), ("assistant", "streaming")]
        list(iter_frames(response))


def test_new_conversation_sends_system_prompt_then_client_history_then_message(
    client, fake_upstream
):
    history = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer: «ünïcode» 🙂"},
    ]

    response = client.post(
        "/api/chat/stream",
        json={"message": "with history", "systemPrompt": "Be terse.", "history": history},
    )

    request = fake_upstream.requests_for("with history")[-1]
    assert request.headers["content-type"] == "application/json"
    sent = request.body
    assert sent["messages"] == [
        {"role": "system", "content": "Be terse."},
        *history,
        {"role": "user", "content": "with history"},
    ]
    assert sent["model"] == "fake-model"
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    conversation = Conversation.objects.get(pk=response.headers["x-conversation-id"])
    assert conversation.system_prompt == "Be terse."
    assert list(conversation.messages.values_list("role", "content")) == [
        ("user", "first question"),
        ("assistant", "first answer: «ünïcode» 🙂"),
        ("user", "with history"),
        ("assistant", "Hello, world!"),
    ]


def test_follow_up_is_prompted_from_the_saved_transcript(client, fake_upstream):
    fake_upstream.script("turn one", tokens=["answer ", "one"])
    first = client.post("/api/chat/stream", json={"message": "turn one"})
    conversation_id = int(first.headers["x-conversation-id"])
    wait_for_status(int(first.headers["x-message-id"]))

    second = client.get(
        "/api/chat/stream", params={"message": "turn two", "conversation_id": conversation_id}
    )
    third = client.post(
        "/api/chat/stream",
        json={
            "message": "turn three",
            "conversation_id": conversation_id,
            "history": [{"role": "user", "content": "ignored: the server's transcript rules"}],
        },
    )

    assert second.headers["x-conversation-id"] == str(conversation_id)
    assert third.headers["x-conversation-id"] == str(conversation_id)
    sent = fake_upstream.requests_for("turn three")[-1].body["messages"]
    assert sent == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "turn one"},
        {"role": "assistant", "content": "answer one"},
        {"role": "user", "content": "turn two"},
        {"role": "assistant", "content": "Hello, world!"},
        {"role": "user", "content": "turn three"},
    ]
    assert Message.objects.filter(conversation_id=conversation_id).count() == 6


def test_nobody_can_stream_into_another_users_conversation(client_for, make_user, fake_upstream):
    alice, bob = make_user("alice"), make_user("bob")
    first = client_for(alice).post("/api/chat/stream", json={"message": "alice's secret"})
    conversation_id = int(first.headers["x-conversation-id"])
    bob_client = client_for(bob)

    post = bob_client.post(
        "/api/chat/stream", json={"message": "bob intrudes", "conversation_id": conversation_id}
    )
    get = bob_client.get(
        "/api/chat/stream", params={"message": "bob intrudes", "conversation_id": conversation_id}
    )

    for response in (post, get):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "conversation_not_found"
    assert fake_upstream.requests_for("bob intrudes") == []
    assert Message.objects.filter(conversation_id=conversation_id).count() == 2


def test_model_text_the_database_cannot_store_is_replaced_and_the_reply_saved(
    client, fake_upstream
):
    """NUL (PostgreSQL refuses it) and lone surrogates (no UTF-8 column takes them) become
    U+FFFD before the client sees them, so what it is sent is what is saved."""
    fake_upstream.script("unsavable", tokens=["a\x00b", " \ud800x", " \udfff", " ok"])

    response = client.post("/api/chat/stream", json={"message": "unsavable"})

    frames = [frame.json() for frame in parse_body(response.content) if frame.has_data]
    tokens = [frame["token"] for frame in frames[:-1]]
    assert tokens == ["a\ufffdb", " \ufffdx", " \ufffd", " ok"]
    assert (frames[-1]["done"], frames[-1]["status"]) == (True, "complete")
    reply = wait_for_status(int(response.headers["x-message-id"]))
    assert (reply.status, reply.content) == ("complete", "".join(tokens))
