"""Replies outlive their connection: a client that leaves can come back (Last-Event-ID on the
GET stream, ``GET /api/messages/<id>/stream?after=n``) within the detach grace, and a reply
nobody comes back for is stopped after it. One process here; every test goes through a
running server, the real SDK and the fake upstream."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from conversations.models import Message
from tests.helpers import open_stream, session_client, wait_for, wait_for_status
from tests.sse import content_frames, iter_frames, parse_body

TOKENS = [f"r{i} " for i in range(40)]


@pytest.fixture(scope="module")
def resumable(start_server, fake_upstream):
    """A server whose replies wait 3 s for a client to come back."""
    return start_server(
        "resumable",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_DETACH_GRACE_SECONDS="3",
    )


def test_an_event_source_that_loses_its_connection_resumes_with_no_gap_or_duplicate(
    resumable, make_user, fake_upstream
):
    fake_upstream.script("resume get", tokens=TOKENS, interval=0.03)
    with session_client(resumable.url, make_user("rita")) as client:
        first = open_stream(client, "resume get", method="GET")
        seen = first.read_some(5)
        rest = client.get("/api/chat/stream", headers={"Last-Event-ID": seen[-1].get("id")})

    message_id = int(first.headers["x-message-id"])
    assert [frame.get("id") for frame in seen] == [f"{message_id}-{n}" for n in range(1, 6)]
    assert rest.status_code == 200
    assert rest.headers["x-message-id"] == str(message_id)
    resumed = content_frames(parse_body(rest.content))
    assert resumed[0].get("id") == f"{message_id}-6"
    assert resumed[-1].data == "[DONE]"
    text = "".join(json.loads(frame.data) for frame in seen + resumed[:-1])
    assert text == "".join(TOKENS)
    assert len(fake_upstream.requests_for("resume get")) == 1
    reply = wait_for_status(message_id)
    assert (reply.status, reply.content, reply.attach_count) == ("complete", text, 1)


def test_a_fetch_client_attaches_after_the_frames_it_counted(resumable, make_user, fake_upstream):
    fake_upstream.script("attach post", tokens=TOKENS, interval=0.03)
    with session_client(resumable.url, make_user("sam")) as client:
        first = open_stream(client, "attach post")
        seen = first.read_some(7)
        message_id = int(first.headers["x-message-id"])
        rest = client.get(f"/api/messages/{message_id}/stream", params={"after": 7})

    resumed = content_frames(parse_body(rest.content))
    tokens = [frame.json()["token"] for frame in seen + resumed[:-1]]
    assert tokens == TOKENS
    final = resumed[-1].json()
    assert (final["done"], final["status"], final["message_id"]) == (True, "complete", message_id)
    assert len(fake_upstream.requests_for("attach post")) == 1


def test_a_second_client_watches_the_same_reply_from_its_start(resumable, make_user, fake_upstream):
    fake_upstream.script("two tabs", tokens=TOKENS, interval=0.02)
    with (
        session_client(resumable.url, make_user("tess")) as client,
        client.stream("POST", "/api/chat/stream", json={"message": "two tabs"}) as first,
    ):
        message_id = int(first.headers["x-message-id"])
        second = client.get(f"/api/messages/{message_id}/stream")
        first_frames = content_frames(list(iter_frames(first)))

    second_frames = content_frames(parse_body(second.content))
    assert [f.json()["token"] for f in first_frames[:-1]] == TOKENS
    assert [f.json()["token"] for f in second_frames[:-1]] == TOKENS
    assert first_frames[-1].json() == second_frames[-1].json()


def test_a_reply_nobody_comes_back_for_is_stopped_after_the_grace(
    resumable, make_user, fake_upstream
):
    fake_upstream.script("abandoned", tokens=[f"a{i} " for i in range(1000)], interval=0.02)
    with session_client(resumable.url, make_user("uma")) as client:
        response = open_stream(client, "abandoned")
        response.read_some(3)
        left_at = time.monotonic()

    upstream = fake_upstream.wait_for_request("abandoned")
    assert wait_for(lambda: upstream.aborted, timeout=10)
    assert 2.5 <= upstream.aborted_at - left_at < 6  # the grace is 3 s
    reply = wait_for_status(int(response.headers["x-message-id"]))
    assert (reply.status, reply.error_code) == ("cancelled", "client_left")
    assert reply.content.startswith("a0 a1 a2 ")


def test_with_no_grace_a_reply_whose_client_left_stops_at_once(server, client, fake_upstream):
    """The shared server runs with CHAT_DETACH_GRACE_SECONDS=0 (tests/environment.py)."""
    fake_upstream.script("no grace", tokens=[f"n{i} " for i in range(1000)], interval=0.02)
    response = open_stream(client, "no grace")
    response.read_some(3)
    left_at = time.monotonic()

    upstream = fake_upstream.wait_for_request("no grace")
    assert wait_for(lambda: upstream.aborted, timeout=3)
    assert upstream.aborted_at - left_at < 1
    reply = wait_for_status(int(response.headers["x-message-id"]))
    assert (reply.status, reply.error_code) == ("cancelled", "client_left")


def test_a_stop_ends_a_reply_at_once_even_with_a_grace(resumable, make_user, fake_upstream):
    fake_upstream.script("stop now", tokens=[f"s{i} " for i in range(1000)], interval=0.02)
    with session_client(resumable.url, make_user("vic")) as client:
        response = open_stream(client, "stop now")
        response.read_some(3)
        message_id = int(response.headers["x-message-id"])
        stopped = client.post(f"/api/messages/{message_id}/cancel")

    assert stopped.json() == {"id": message_id, "status": "cancelled"}
    assert fake_upstream.requests_for("stop now")[-1].aborted
    assert Message.objects.get(pk=message_id).error_code == "stopped"


def test_a_finished_reply_attached_to_sends_what_is_left_then_its_end(
    resumable, make_user, fake_upstream
):
    fake_upstream.script("finished", tokens=["f1 ", "f2 ", "f3"])
    with session_client(resumable.url, make_user("wes")) as client:
        done = client.post("/api/chat/stream", json={"message": "finished"})
        message_id = int(done.headers["x-message-id"])
        wait_for_status(message_id)
        rest = client.get(f"/api/messages/{message_id}/stream", params={"after": 1})
        end = client.get(f"/api/messages/{message_id}/stream", params={"after": 3})
        past = client.get(f"/api/messages/{message_id}/stream", params={"after": 4})

    frames = content_frames(parse_body(rest.content))
    assert [frame.json()["token"] for frame in frames[:-1]] == ["f2 ", "f3"]
    assert frames[-1].json()["status"] == "complete"
    assert [frame.json()["done"] for frame in content_frames(parse_body(end.content))] == [True]
    assert past.status_code == 400


def test_a_reply_whose_frames_are_no_longer_kept_is_sent_as_saved(
    start_server, make_user, fake_upstream
):
    server = start_server(
        "forgetful",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_REPLY_RETENTION_SECONDS="0",
    )
    fake_upstream.script("forgotten", tokens=["g1 ", "g2"])
    with session_client(server.url, make_user("xia")) as client:
        done = client.get("/api/chat/stream", params={"message": "forgotten"})
        message_id = int(done.headers["x-message-id"])
        wait_for_status(message_id)
        whole = client.get(f"/api/messages/{message_id}/stream")
        reconnect = client.get("/api/chat/stream", headers={"Last-Event-ID": f"{message_id}-1"})

    frames = content_frames(parse_body(whole.content))
    assert [frame.json()["token"] for frame in frames[:-1]] == ["g1 g2"]
    assert frames[-1].json()["status"] == "complete"
    assert reconnect.status_code == 204


def test_resume_ids_that_are_not_the_callers_or_not_ids_get_204_and_no_reply(
    resumable, make_user, fake_upstream
):
    fake_upstream.script("someone else's", tokens=TOKENS, interval=0.02)
    owner = make_user("yan")
    with (
        session_client(resumable.url, owner) as client,
        client.stream("GET", "/api/chat/stream", params={"message": "someone else's"}) as r,
    ):
        message_id = int(r.headers["x-message-id"])
        finished = content_frames(list(iter_frames(r)))
    with session_client(resumable.url, make_user("zed")) as other:
        answers = [
            other.get("/api/chat/stream", headers={"Last-Event-ID": last_event_id})
            for last_event_id in (f"{message_id}-3", "garbage", "12-x", "", "99999999-1")
        ]
        attach = other.get(f"/api/messages/{message_id}/stream")
    with session_client(resumable.url, owner) as client:
        after_done = client.get(
            "/api/chat/stream", headers={"Last-Event-ID": finished[-1].get("id")}
        )

    assert [answer.status_code for answer in answers] == [204] * 5
    assert attach.status_code == 404
    assert after_done.status_code == 204
    assert Message.objects.filter(role="assistant").count() == 1


def test_a_second_message_while_a_reply_streams_is_409_naming_the_reply(
    resumable, make_user, fake_upstream
):
    fake_upstream.script("busy", tokens=TOKENS, interval=0.03)
    with (
        session_client(resumable.url, make_user("ada")) as client,
        client.stream("POST", "/api/chat/stream", json={"message": "busy"}) as first,
    ):
        conversation_id = int(first.headers["x-conversation-id"])
        message_id = int(first.headers["x-message-id"])
        second = client.post(
            "/api/chat/stream",
            json={"message": "and another", "conversation_id": conversation_id},
        )
        list(iter_frames(first))

    assert second.status_code == 409
    error = second.json()["error"]
    assert (error["code"], error["message_id"]) == ("reply_in_progress", message_id)
    assert fake_upstream.requests_for("and another") == []


def test_a_post_sent_again_with_its_idempotency_key_gets_the_same_reply_not_a_second(
    resumable, make_user, fake_upstream
):
    fake_upstream.script("only once", tokens=TOKENS, interval=0.02)
    key = {"Idempotency-Key": f"send-{uuid.uuid4()}"}
    with (
        session_client(resumable.url, make_user("bea")) as client,
        client.stream("POST", "/api/chat/stream", json={"message": "only once"}, headers=key) as a,
    ):
        retried_while_streaming = client.post(
            "/api/chat/stream", json={"message": "only once"}, headers=key
        )
        first = content_frames(list(iter_frames(a)))
        retried_after_the_end = client.post(
            "/api/chat/stream", json={"message": "only once"}, headers=key
        )

    for retried in (retried_while_streaming, retried_after_the_end):
        assert retried.status_code == 200
        assert retried.headers["x-message-id"] == a.headers["x-message-id"]
        assert [f.json() for f in content_frames(parse_body(retried.content))] == [
            f.json() for f in first
        ]
    assert [f.json()["token"] for f in first[:-1]] == TOKENS
    assert len(fake_upstream.requests_for("only once")) == 1


def test_an_idempotency_key_sent_with_another_body_is_422(resumable, make_user, fake_upstream):
    key = {"Idempotency-Key": f"reused-{uuid.uuid4()}"}
    with session_client(resumable.url, make_user("cal")) as client:
        first = client.post("/api/chat/stream", json={"message": "first body"}, headers=key)
        other = client.post("/api/chat/stream", json={"message": "other body"}, headers=key)
    with session_client(resumable.url, make_user("dee")) as someone_else:
        theirs = someone_else.post("/api/chat/stream", json={"message": "other body"}, headers=key)

    assert first.status_code == 200
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(fake_upstream.requests_for("other body")) == 1  # the other user's
    assert theirs.status_code == 200


@pytest.fixture
def two_workers(start_server, fake_upstream, redis_url):
    """Two server processes sharing Redis, as two uvicorn workers would; replies wait 2 s for
    a client to come back."""
    shared = {
        "CHAT_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_upstream.base_url,
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": f"workers-{uuid.uuid4().hex}",
        "CHAT_DETACH_GRACE_SECONDS": "2",
    }
    return start_server("worker-one", **shared), start_server("worker-two", **shared)


def test_a_reply_started_through_one_worker_is_attached_to_through_the_other(
    two_workers, make_user, fake_upstream
):
    one, two = two_workers
    user = make_user("olga")
    fake_upstream.script("across workers", tokens=TOKENS, interval=0.03)
    with session_client(one.url, user) as first_client:
        first = open_stream(first_client, "across workers")
        seen = first.read_some(5)
    message_id = int(first.headers["x-message-id"])
    with session_client(two.url, user) as second_client:
        rest = second_client.get(f"/api/messages/{message_id}/stream", params={"after": 5})

    resumed = content_frames(parse_body(rest.content))
    assert [f.json()["token"] for f in seen + resumed[:-1]] == TOKENS
    assert resumed[-1].json()["status"] == "complete"
    assert len(fake_upstream.requests_for("across workers")) == 1


def test_the_grace_counts_a_client_attached_through_another_worker(
    two_workers, make_user, fake_upstream
):
    one, two = two_workers
    user = make_user("pia")
    tokens = [f"k{i} " for i in range(120)]  # 4.8 s: longer than the 2 s grace
    fake_upstream.script("watched elsewhere", tokens=tokens, interval=0.04)
    with session_client(one.url, user) as first_client:
        first = open_stream(first_client, "watched elsewhere")
        message_id = int(first.headers["x-message-id"])
        with (
            session_client(two.url, user) as second_client,
            second_client.stream("GET", f"/api/messages/{message_id}/stream") as watcher,
        ):
            first.read_some(3)  # the client of the first worker leaves
            watched = content_frames(list(iter_frames(watcher)))

    assert [f.json()["token"] for f in watched[:-1]] == tokens
    assert watched[-1].json()["status"] == "complete"
    reply = wait_for_status(message_id)
    assert (reply.status, reply.content) == ("complete", "".join(tokens))


def test_an_event_source_resumes_through_the_other_worker_even_after_the_end(
    two_workers, make_user, fake_upstream
):
    one, two = two_workers
    user = make_user("quin")
    fake_upstream.script("resume elsewhere", tokens=TOKENS, interval=0.03)
    with session_client(one.url, user) as first_client:
        first = open_stream(first_client, "resume elsewhere", method="GET")
        seen = first.read_some(5)
    message_id = int(first.headers["x-message-id"])
    with session_client(two.url, user) as second_client:
        live = second_client.get("/api/chat/stream", headers={"Last-Event-ID": f"{message_id}-5"})
        wait_for_status(message_id)
        after_end = second_client.get(
            "/api/chat/stream", headers={"Last-Event-ID": f"{message_id}-30"}
        )
        after_done = second_client.get(
            "/api/chat/stream", headers={"Last-Event-ID": f"{message_id}-{len(TOKENS) + 1}"}
        )

    resumed = content_frames(parse_body(live.content))
    text = "".join(json.loads(f.data) for f in seen + resumed[:-1])
    assert text == "".join(TOKENS)
    assert resumed[0].get("id") == f"{message_id}-6"
    assert resumed[-1].data == "[DONE]"
    tail = content_frames(parse_body(after_end.content))
    assert "".join(json.loads(f.data) for f in tail[:-1]) == "".join(TOKENS[30:])
    assert tail[0].get("id") == f"{message_id}-31"
    assert after_done.status_code == 204
    assert len(fake_upstream.requests_for("resume elsewhere")) == 1


def test_a_client_attached_through_another_worker_gets_a_clear_end_when_the_producer_dies(
    two_workers, make_user, fake_upstream
):
    one, two = two_workers
    user = make_user("rex")
    fake_upstream.script("producer dies", tokens=[f"d{i} " for i in range(500)], interval=0.03)
    with session_client(one.url, user) as first_client:
        first = open_stream(first_client, "producer dies")
        message_id = int(first.headers["x-message-id"])
        with (
            session_client(two.url, user) as second_client,
            second_client.stream("GET", f"/api/messages/{message_id}/stream") as watcher,
        ):
            frames = iter_frames(watcher)
            received = [next(f for f in frames if f.has_data) for _ in range(5)]
            one.process.kill()
            killed_at = time.monotonic()
            rest = content_frames(list(frames))
            ended_at = time.monotonic()

    assert ended_at - killed_at < 5
    assert rest[-1].event == "error"
    assert rest[-1].json()["code"] == "interrupted"
    text = "".join(f.json()["token"] for f in received + rest[:-1])
    assert text.startswith("d0 d1 d2 d3 d4 ")
    assert Message.objects.get(pk=message_id).status == "interrupted"
