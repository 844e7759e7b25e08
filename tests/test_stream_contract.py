"""The exact HTTP contract of the two stream endpoints, seen from a client over real HTTP."""

from __future__ import annotations

import json

from conversations.models import Conversation
from tests.sse import content_frames, iter_frames

TRICKY_TOKENS = ["Hi", ' "quoted"', " back\\slash", "\nnew\r\nlines\n", " é ü 你好", " 🎉👩‍💻", ""]


def without_pings(body: bytes) -> bytes:
    return body.replace(b": ping\n\n", b"")


def test_post_stream_has_sse_headers_and_exact_json_frames(client, fake_upstream):
    fake_upstream.script("contract-post", tokens=TRICKY_TOKENS)

    response = client.post("/api/chat/stream", json={"message": "contract-post"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    conversation_id = int(response.headers["x-conversation-id"])
    message_id = int(response.headers["x-message-id"])
    expected = b"".join(
        b"data: " + json.dumps({"token": t, "done": False}, ensure_ascii=False).encode() + b"\n\n"
        for t in TRICKY_TOKENS
        if t
    )
    done = {
        "token": "",
        "done": True,
        "conversation_id": conversation_id,
        "message_id": message_id,
        "status": "complete",
    }
    expected += b"data: " + json.dumps(done).encode() + b"\n\n"
    assert without_pings(response.content) == expected


def test_post_frames_parse_one_json_object_per_data_piece(client, fake_upstream):
    """The reference client splits on blank lines and JSON-parses each ``data: `` piece."""
    fake_upstream.script("reference-client", tokens=TRICKY_TOKENS)

    body = client.post("/api/chat/stream", json={"message": "reference-client"}).text

    pieces = [p for p in body.split("\n\n") if p.startswith("data: ")]
    parsed = [json.loads(p[len("data: ") :]) for p in pieces]
    assert "".join(p["token"] for p in parsed) == "".join(TRICKY_TOKENS)
    assert [p["done"] for p in parsed] == [False] * (len(parsed) - 1) + [True]


def test_get_stream_sends_json_string_frames_with_ids_then_done(client, fake_upstream):
    fake_upstream.script("contract-get", tokens=TRICKY_TOKENS)

    response = client.get("/api/chat/stream", params={"message": "contract-get"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["x-conversation-id"].isdigit()
    message_id = int(response.headers["x-message-id"])
    sent = [t for t in TRICKY_TOKENS if t]
    # retry: first; each id names the reply and how many of its frames the client then has.
    expected = b"retry: 2000\n\n" + b"".join(
        b"id: %d-%d\ndata: %s\n\n" % (message_id, n, json.dumps(t, ensure_ascii=False).encode())
        for n, t in enumerate(sent, start=1)
    )
    expected += b"id: %d-%d\ndata: [DONE]\n\n" % (message_id, len(sent) + 1)
    assert without_pings(response.content) == expected


def test_get_with_last_event_id_does_not_start_a_new_reply(client, fake_upstream, user):
    response = client.get(
        "/api/chat/stream", params={"message": "reconnect-me"}, headers={"Last-Event-ID": "4"}
    )

    assert response.status_code == 204
    assert response.content == b""
    assert fake_upstream.requests_for("reconnect-me") == []
    assert not Conversation.objects.filter(owner=user).exists()


def test_frames_reach_the_client_as_they_are_produced(client, fake_upstream):
    fake_upstream.script("paced", tokens=[f"t{i} " for i in range(6)], interval=0.3)

    with client.stream("POST", "/api/chat/stream", json={"message": "paced"}) as response:
        frames = content_frames(list(iter_frames(response)))

    upstream = fake_upstream.requests_for("paced")[-1]
    first_token_frame = frames[0]
    assert first_token_frame.json()["token"] == "t0 "
    assert first_token_frame.received_at < upstream.token_times[-1] - 1.0
    for frame, sent_at in zip(frames, upstream.token_times, strict=False):
        assert frame.received_at - sent_at < 0.25


def test_keepalive_comment_is_sent_while_the_upstream_is_slow(client, fake_upstream):
    fake_upstream.script("slow-start", tokens=["late"], first_token_delay=2.6)

    with client.stream("GET", "/api/chat/stream", params={"message": "slow-start"}) as response:
        frames = list(iter_frames(response))

    first_data = next(i for i, f in enumerate(frames) if f.has_data)
    pings = [f for f in frames[:first_data] if f.raw == ": ping"]
    assert len(pings) >= 2
    assert json.loads(frames[first_data].data) == "late"
