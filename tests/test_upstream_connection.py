"""The connection to the model service is reused between replies and never waited on needlessly."""

from __future__ import annotations

import time

from conversations.models import Message
from tests.helpers import wait_for_status


def test_replies_in_a_row_reuse_one_upstream_connection(client, fake_upstream):
    fake_upstream.script("reuse me")
    client.get("/api/chat/stream", params={"message": "reuse me"})  # the pool's first connection
    before = fake_upstream.connections

    for _ in range(3):
        response = client.get("/api/chat/stream", params={"message": "reuse me"})
        assert response.content.endswith(b"data: [DONE]\n\n")

    assert fake_upstream.connections == before


def test_reply_ends_at_done_even_if_the_upstream_keeps_the_body_open(client, fake_upstream):
    fake_upstream.script("linger", tokens=["all ", "here"], linger_after_done=10)
    started = time.monotonic()

    response = client.get("/api/chat/stream", params={"message": "linger"})

    assert time.monotonic() - started < 5
    assert response.content.endswith(b"data: [DONE]\n\n")
    message = wait_for_status(int(response.headers["x-message-id"]))
    assert (message.status, message.content) == (Message.Status.COMPLETE, "all here")


def test_a_cookie_the_upstream_sets_is_not_sent_with_later_replies(client, fake_upstream):
    """One upstream client serves every user, so it keeps no cookies."""
    fake_upstream.script("set a cookie", set_cookie="session=for-one-user; Path=/")
    fake_upstream.script("after the cookie")

    for message in ("set a cookie", "after the cookie"):
        response = client.get("/api/chat/stream", params={"message": message})
        assert response.content.endswith(b"data: [DONE]\n\n")

    later = fake_upstream.wait_for_request("after the cookie")
    assert "cookie" not in later.headers
