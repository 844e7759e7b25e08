"""Every way a stream can fail: the client leaves, the upstream fails, the input is wrong."""

from __future__ import annotations

import io
import itertools
import signal
import socket
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from conversations.models import Conversation, Message
from conversations.services import message_checkpoint
from tests.conftest import UPSTREAM_KEY, free_port
from tests.helpers import (
    conversation_rows_locked,
    create_token,
    interrupt_once_its_producer_is_gone,
    open_stream,
    session_client,
    wait_for,
    wait_for_status,
)
from tests.sse import content_frames, iter_frames, parse_body

LONG_REPLY = [f"w{i} " for i in range(1000)]


def assert_no_errors_logged(log: str) -> None:
    assert "Traceback" not in log
    assert " ERROR " not in log


def test_client_leaving_while_the_rows_are_written_gets_its_reply_saved_as_cancelled(
    server, client, user, fake_upstream
):
    trigger = "leave while the rows are written"
    fake_upstream.script(trigger, first_token_delay=3.0)

    with conversation_rows_locked():
        with pytest.raises(httpx.ReadTimeout):
            client.post(
                "/api/chat/stream",
                json={"message": trigger},
                timeout=httpx.Timeout(15.0, read=1.0),
            )
        upstream = fake_upstream.wait_for_request(trigger)
        # The server has seen the client go while its insert still waits: it gave the reply
        # up, which closed the upstream request.
        wait_for(lambda: upstream.aborted)
        assert not Message.objects.exists()

    reply = wait_for(
        lambda: Message.objects.filter(conversation__owner=user, role="assistant").first()
    )
    reply = wait_for_status(reply.pk)
    assert reply.status == "cancelled"
    assert reply.content == ""
    assert reply.duration_ms is None  # saved by the abandoned-rows path, not by a started reply
    assert [m.content for m in reply.conversation.messages.all()] == [trigger, ""]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_client_disconnect_closes_upstream_and_saves_partial_reply_as_cancelled(
    server, client, fake_upstream, method
):
    trigger = f"leave early {method}"
    fake_upstream.script(trigger, tokens=LONG_REPLY, interval=0.02)
    log_start = len(server.log())

    stream = open_stream(client, trigger, method=method)
    message_id = stream.message_id
    assert len(stream.read_some(5)) == 5
    closed_at = time.monotonic()

    upstream = fake_upstream.wait_for_request(trigger)
    wait_for(lambda: upstream.aborted, timeout=3)
    assert upstream.aborted_at - closed_at < 1.0
    reply = wait_for_status(message_id)
    assert reply.status == "cancelled"
    full_text = "".join(LONG_REPLY)
    assert reply.content.startswith("w0 w1 w2 w3 w4 ")
    assert full_text.startswith(reply.content)
    assert len(reply.content) < len(full_text)
    assert reply.finished_at is not None
    # The reply's own log line is the last thing it writes, after its save.
    wait_for(lambda: f"reply {message_id} cancelled:" in server.log()[log_start:])
    assert_no_errors_logged(server.log()[log_start:])


def test_upstream_cut_mid_stream_sends_error_frame_and_keeps_partial_text(client, fake_upstream):
    fake_upstream.script("cut off", tokens=["one ", "two ", "three ", "four"], cut_after=3)

    with client.stream("POST", "/api/chat/stream", json={"message": "cut off"}) as response:
        frames = content_frames(list(iter_frames(response)))
        message_id = int(response.headers["x-message-id"])

    assert [f.json()["token"] for f in frames[:3]] == ["one ", "two ", "three "]
    error = frames[-1]
    assert error.event == "error"
    assert error.json()["code"] == "upstream_interrupted"
    assert error.json()["message"]
    assert len(frames) == 4
    reply = Message.objects.get(pk=message_id)
    assert reply.status == "error"
    assert reply.content == "one two three "
    assert reply.error_code == "upstream_interrupted"


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (401, "upstream_auth"),
        (403, "upstream_auth"),
        (429, "upstream_rate_limited"),
        (400, "upstream_rejected"),
        (500, "upstream_error"),
        (503, "upstream_error"),
    ],
)
def test_upstream_error_status_becomes_error_frame_without_leaking_details(
    server, client, fake_upstream, status, code
):
    trigger = f"fail with {status}"
    fake_upstream.script(
        trigger,
        status=status,
        error_body={"error": {"message": f"Incorrect API key provided: {UPSTREAM_KEY}"}},
    )
    log_start = len(server.log())

    with client.stream("GET", "/api/chat/stream", params={"message": trigger}) as response:
        assert response.status_code == 200
        frames = content_frames(list(iter_frames(response)))
        message_id = int(response.headers["x-message-id"])

    assert len(frames) == 1
    assert frames[0].event == "error"
    assert frames[0].json()["code"] == code
    body = frames[0].raw
    assert UPSTREAM_KEY not in body and "Incorrect API key" not in body
    assert "Traceback" not in body
    reply = Message.objects.get(pk=message_id)
    assert (reply.status, reply.error_code, reply.content) == ("error", code, "")
    log = server.log()[log_start:]
    assert f"status={status}" in log
    assert "Traceback" not in log


def test_unreachable_upstream_is_reported_as_an_error_frame(start_server, make_user):
    closed_port = free_port()
    server = start_server(
        "unreachable",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=f"http://127.0.0.1:{closed_port}/v1",
    )
    with session_client(server.url, make_user("carol")) as client:
        response = client.post("/api/chat/stream", json={"message": "anyone there?"})

    frames = content_frames(list(parse_body(response.content)))
    assert frames[-1].event == "error"
    assert frames[-1].json()["code"] == "upstream_unavailable"
    reply = Message.objects.get(pk=response.headers["x-message-id"])
    assert reply.status == "error"


def test_upstream_that_stops_answering_times_out_with_an_error_frame(
    start_server, make_user, fake_upstream
):
    server = start_server(
        "short-upstream-timeout",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        OPENAI_TIMEOUT_SECONDS="0.5",
    )
    fake_upstream.script("stalls", tokens=["first ", "never"], interval=3)
    with session_client(server.url, make_user("gina")) as client:
        response = client.post("/api/chat/stream", json={"message": "stalls"})

    frames = content_frames(parse_body(response.content))
    assert frames[0].json()["token"] == "first "
    assert frames[-1].event == "error"
    assert frames[-1].json()["code"] == "upstream_timeout"
    reply = Message.objects.get(pk=response.headers["x-message-id"])
    assert (reply.status, reply.content, reply.error_code) == (
        "error",
        "first ",
        "upstream_timeout",
    )


def test_reply_over_the_time_limit_is_stopped_and_saved(start_server, make_user, fake_upstream):
    server = start_server(
        "time-limit",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_STREAM_MAX_SECONDS="1",
    )
    fake_upstream.script("never ending", tokens=LONG_REPLY, interval=0.05)
    with session_client(server.url, make_user("dave")) as client:
        started = time.monotonic()
        response = client.post("/api/chat/stream", json={"message": "never ending"})
        elapsed = time.monotonic() - started

    frames = content_frames(list(parse_body(response.content)))
    assert frames[-1].event == "error"
    assert frames[-1].json()["code"] == "stream_timeout"
    assert 2 <= len(frames) < 100
    assert elapsed < 5
    reply = Message.objects.get(pk=response.headers["x-message-id"])
    assert reply.status == "error"
    assert reply.content.startswith("w0 w1 ")
    assert wait_for(lambda: fake_upstream.requests_for("never ending")[-1].aborted)


def test_reply_over_the_size_limit_is_stopped_and_saved_with_its_text(
    start_server, make_user, fake_upstream
):
    server = start_server(
        "size-limit",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_MAX_REPLY_CHARS="50",
    )
    fake_upstream.script("too long", tokens=LONG_REPLY, interval=0.01)
    with session_client(server.url, make_user("dora")) as client:
        response = client.post("/api/chat/stream", json={"message": "too long"})

    frames = content_frames(list(parse_body(response.content)))
    received = "".join(frame.json()["token"] for frame in frames[:-1])
    assert received == "".join(LONG_REPLY)[:50]
    assert frames[-1].event == "error"
    assert frames[-1].json()["code"] == "reply_too_long"
    assert "50 characters" in frames[-1].json()["message"]
    assert wait_for(lambda: fake_upstream.requests_for("too long")[-1].aborted)
    reply = wait_for_status(int(response.headers["x-message-id"]))
    assert (reply.status, reply.error_code, reply.content) == ("error", "reply_too_long", received)


def resident_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])


def test_clients_that_never_read_cost_the_server_no_more_than_the_capped_reply(
    server, user, fake_upstream
):
    """Three clients open a stream and never read it while the model sends 20 MB each: each
    reply stops at CHAT_MAX_REPLY_CHARS (200,000), and the server holds no queue of frames."""
    token = create_token("alice")
    for n in range(3):
        fake_upstream.script(f"flood {n}", tokens=["z" * 2000] * 10_000)
    before = resident_kb(server.process.pid)
    port = int(server.url.rsplit(":", 1)[1])
    stalled = []
    for n in range(3):
        connection = socket.socket()
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        connection.connect(("127.0.0.1", port))
        connection.sendall(
            f"GET /api/chat/stream?message=flood+{n} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        stalled.append(connection)

    replies = [
        wait_for(lambda n=n: Message.objects.filter(
            role="assistant", conversation__title=f"flood {n}", status="error"
        ).first(), timeout=30)
        for n in range(3)
    ]  # fmt: skip
    grown_kb = resident_kb(server.process.pid) - before
    for connection in stalled:
        connection.close()

    for n, reply in enumerate(replies):
        assert (reply.error_code, len(reply.content)) == ("reply_too_long", 200_000)
        assert fake_upstream.requests_for(f"flood {n}")[-1].aborted
    assert grown_kb < 30_000, f"the server grew by {grown_kb} KB"


@contextmanager
def final_saves_refused(marker: str):
    """The database refuses to close any reply whose text contains ``marker``."""
    condition = f"NEW.status <> 'streaming' AND NEW.content LIKE '%{marker}%'"
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION refuse_final_save() RETURNS trigger LANGUAGE plpgsql "
                "AS $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER refuse_final_save BEFORE UPDATE ON conversations_message "
                f"FOR EACH ROW WHEN ({condition}) EXECUTE FUNCTION refuse_final_save()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER refuse_final_save BEFORE UPDATE ON conversations_message "
                f"WHEN {condition} BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute("DROP TRIGGER refuse_final_save ON conversations_message")
                cursor.execute("DROP FUNCTION refuse_final_save()")
            else:
                cursor.execute("DROP TRIGGER refuse_final_save")


def test_reply_that_cannot_be_saved_ends_with_an_error_frame(
    start_server, make_user, fake_upstream
):
    server = start_server(
        "unsaveable", CHAT_PROVIDER="openai", OPENAI_BASE_URL=fake_upstream.base_url
    )
    fake_upstream.script("unsaveable", tokens=["this ", "reply ", "is lost"])

    with (
        final_saves_refused("is lost"),
        session_client(server.url, make_user("frank")) as client,
        client.stream("POST", "/api/chat/stream", json={"message": "unsaveable"}) as response,
    ):
        frames = content_frames(list(iter_frames(response)))
        message_id = int(response.headers["x-message-id"])

    assert [f.json()["token"] for f in frames[:-1]] == ["this ", "reply ", "is lost"]
    assert frames[-1].event == "error"
    assert frames[-1].json() == {"code": "save_failed", "message": "The reply could not be saved."}
    assert f"reply {message_id} could not be saved" in server.log()
    assert Message.objects.get(pk=message_id).status == "streaming"
    Message.objects.filter(pk=message_id).update(status="error")


def test_reply_in_flight_when_the_server_is_stopped_is_saved_as_interrupted(
    start_server, make_user, fake_upstream
):
    server = start_server("stopped", CHAT_PROVIDER="openai", OPENAI_BASE_URL=fake_upstream.base_url)
    fake_upstream.script("stop the server", tokens=LONG_REPLY, interval=0.05)

    with session_client(server.url, make_user("erin")) as client:
        stream = open_stream(client, "stop the server")
        message_id = stream.message_id
        next(stream.data_frames())
        # Ctrl-C twice: the second one stops uvicorn without waiting for open streams.
        server.process.send_signal(signal.SIGINT)
        assert wait_for(lambda: "Waiting for connections to close" in server.log())
        server.process.send_signal(signal.SIGINT)
        server.process.wait(10)
        stream.close()

    reply = wait_for_status(message_id)
    assert reply.status == "interrupted"
    assert reply.error_code == "interrupted"
    assert reply.content.startswith("w0 ")
    assert "".join(LONG_REPLY).startswith(reply.content)


def test_reply_of_a_killed_server_keeps_the_text_of_its_last_checkpoint(
    start_server, make_user, fake_upstream
):
    server = start_server(
        "killed",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_CHECKPOINT_SECONDS="0.2",
    )
    fake_upstream.script("kill the server", tokens=LONG_REPLY, interval=0.02)

    with session_client(server.url, make_user("finn")) as client:
        stream = open_stream(client, "kill the server")
        message_id = stream.message_id
        tokens = (frame.json()["token"] for frame in stream.data_frames())
        received = "".join(itertools.islice(tokens, 30))
        assert wait_for(lambda: Message.objects.get(pk=message_id).content.startswith(received))
        server.process.kill()
        server.process.wait(10)
        stream.close()

    saved = Message.objects.get(pk=message_id)
    assert saved.status == "streaming"
    assert saved.content.startswith(received)
    assert "".join(LONG_REPLY).startswith(saved.content)
    interrupted = interrupt_once_its_producer_is_gone(message_id)
    assert interrupted.content == saved.content


def test_a_reply_whose_producer_is_alive_is_never_marked_stale_whatever_its_age(
    start_server, make_user, fake_upstream, redis_url
):
    server = start_server(
        "long-lived", CHAT_PROVIDER="openai", OPENAI_BASE_URL=fake_upstream.base_url
    )
    tokens = [f"v{i} " for i in range(60)]
    fake_upstream.script("still alive", tokens=tokens, interval=0.05)

    with session_client(server.url, make_user("gail")) as client:
        stream = open_stream(client, "still alive")
        message_id = stream.message_id
        next(stream.data_frames())
        Message.objects.filter(pk=message_id).update(created_at=timezone.now() - timedelta(days=1))
        out = io.StringIO()
        call_command("interrupt_stale_replies", older_than=0, stdout=out)
        assert Message.objects.get(pk=message_id).status == "streaming"
        assert out.getvalue().strip() == "0 stale replies marked interrupted."
        received = [frame.json() for frame in stream.data_frames()]
        stream.close()

    assert (received[-1]["done"], received[-1]["status"]) == (True, "complete")
    reply = wait_for_status(message_id)
    assert (reply.status, reply.content) == ("complete", "".join(tokens))


def test_a_checkpoint_never_overwrites_a_finished_reply(make_user):
    conversation = Conversation.objects.create(owner=make_user("gail"))
    streaming, finished = (
        Message.objects.create(
            conversation=conversation, role="assistant", status=status, content="old"
        )
        for status in (Message.Status.STREAMING, Message.Status.COMPLETE)
    )

    for reply in (streaming, finished):
        message_checkpoint(message_id=reply.pk, content="old and new")

    streaming.refresh_from_db()
    finished.refresh_from_db()
    assert (streaming.content, streaming.status) == ("old and new", "streaming")
    assert (finished.content, finished.status) == ("old", "complete")


BAD_POSTS = [
    ("malformed json", b"{not json", "application/json", 400, "malformed_json"),
    ("not an object", b"[1, 2]", "application/json", 400, "invalid_request"),
    ("missing message", b'{"history": []}', "application/json", 400, "missing_message"),
    ("empty message", b'{"message": "   "}', "application/json", 400, "missing_message"),
    ("message not a string", b'{"message": 42}', "application/json", 400, "invalid_request"),
    (
        "history not a list",
        b'{"message": "x", "history": "no"}',
        "application/json",
        400,
        "invalid_request",
    ),
    (
        "history system role",
        b'{"message": "x", "history": [{"role": "system", "content": "y"}]}',
        "application/json",
        400,
        "invalid_request",
    ),
    (
        "history content not text",
        b'{"message": "x", "history": [{"role": "user", "content": 1}]}',
        "application/json",
        400,
        "invalid_request",
    ),
    (
        "system prompt not text",
        b'{"message": "x", "system_prompt": ["y"]}',
        "application/json",
        400,
        "invalid_request",
    ),
    (
        "conversation id text",
        b'{"message": "x", "conversation_id": "7"}',
        "application/json",
        400,
        "invalid_request",
    ),
    (
        "conversation id bool",
        b'{"message": "x", "conversation_id": true}',
        "application/json",
        400,
        "invalid_request",
    ),
    (
        "unknown conversation",
        b'{"message": "x", "conversation_id": 999999}',
        "application/json",
        404,
        "conversation_not_found",
    ),
    ("message with NUL", b'{"message": "a\\u0000b"}', "application/json", 400, "invalid_text"),
    (
        "message with a lone surrogate",
        b'{"message": "a\\ud800b"}',
        "application/json",
        400,
        "invalid_text",
    ),
    (
        "system prompt with a lone surrogate",
        b'{"message": "x", "system_prompt": "\\udfff"}',
        "application/json",
        400,
        "invalid_text",
    ),
    (
        "history content with NUL",
        b'{"message": "x", "history": [{"role": "user", "content": "\\u0000"}]}',
        "application/json",
        400,
        "invalid_text",
    ),
    (
        "conversation id past 64 bits",
        b'{"message": "x", "conversation_id": 9223372036854775808}',
        "application/json",
        400,
        "invalid_request",
    ),
    (
        "conversation id of 200,000 digits",
        b'{"message": "x", "conversation_id": 1' + b"0" * 200_000 + b"}",
        "application/json",
        400,
        "malformed_json",
    ),
    (
        "nested 1,000 deep",
        b'{"message": "x", "history": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        "application/json",
        400,
        "too_deep",
    ),
    (
        "nested deeper than the fields need",
        b'{"message": "x", "extra": [[[1]]]}',
        "application/json",
        400,
        "too_deep",
    ),
    ("not json", b"message=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("no content type", b'{"message": "x"}', "", 415, "unsupported_media_type"),
    (
        "body too large",
        b'{"message": "' + b"x" * 300_000 + b'"}',
        "application/json",
        413,
        "body_too_large",
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [case[1:] for case in BAD_POSTS],
    ids=[case[0] for case in BAD_POSTS],
)
def test_bad_post_gets_status_and_json_error(
    server, client, user, body, content_type, status, code
):
    headers = {"Content-Type": content_type} if content_type else {}

    response = client.post("/api/chat/stream", content=body, headers=headers)

    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert not Conversation.objects.filter(owner=user).exists()
    assert "Traceback" not in server.log()


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({}, 400, "missing_message"),
        ({"message": ""}, 400, "missing_message"),
        ({"message": "x", "conversation_id": "abc"}, 400, "invalid_request"),
        ({"message": "x", "conversation_id": "424242"}, 404, "conversation_not_found"),
        ({"message": "x", "conversation_id": "\u00b2"}, 400, "invalid_request"),
        ({"message": "x", "conversation_id": "9223372036854775808"}, 400, "invalid_request"),
        ({"message": "x", "conversation_id": "1" + "0" * 5_000}, 400, "invalid_request"),
        ({"message": "a\x00b"}, 400, "invalid_text"),
    ],
    ids=[
        "no message",
        "empty message",
        "conversation id text",
        "unknown conversation",
        "conversation id a superscript digit",
        "conversation id past 64 bits",
        "conversation id of 5,000 digits",
        "message with NUL",
    ],
)
def test_bad_get_gets_status_and_json_error(server, client, params, status, code):
    response = client.get("/api/chat/stream", params=params)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert "Traceback" not in server.log()


@pytest.mark.parametrize(
    "path",
    [
        "/api/conversations?page=9223372036854775807",
        "/api/conversations?page=\u00b2",
        "/api/conversations?page_size=\u00b2",
        "/api/conversations?page=0",
    ],
)
def test_bad_page_gets_400_naming_it(server, client, path):
    response = client.get(path)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert "'page" in response.json()["error"]["message"]
    assert "Traceback" not in server.log()


@pytest.mark.parametrize(
    "path",
    [
        "/api/conversations/9223372036854775808",
        "/api/conversations/" + "9" * 200,
        "/api/messages/99999999999999999999/cancel",
    ],
)
def test_an_id_past_what_a_row_can_have_is_not_found(server, client, path):
    response = client.request("DELETE" if "cancel" not in path else "POST", path)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_wrong_method_gets_405_json(client, method):
    response = client.request(method, "/api/chat/stream")

    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_anonymous_caller_gets_401_json(server, fake_upstream):
    response = httpx.get(f"{server.url}/api/chat/stream?message=hi")

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "not_authenticated"
    assert fake_upstream.requests_for("hi") == []


def test_session_post_without_csrf_token_is_refused(server, client):
    response = client.post(
        "/api/chat/stream", json={"message": "no csrf"}, headers={"X-CSRFToken": "wrong" * 8}
    )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"


def test_unknown_api_path_gets_json_404(server):
    response = httpx.get(f"{server.url}/api/nope")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
