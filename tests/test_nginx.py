"""The shipped deploy/nginx.conf in front of two workers sharing Redis: Debian's nginx, started
on loopback ports, the real SDK and the fake upstream behind the workers.

Two guards keep frames flowing, and these tests hold while either does: the template turns
buffering off on the stream paths, and the streams send ``X-Accel-Buffering: no`` (for a proxy
configured without it)."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from conversations.models import Message
from conversations.tokens import api_token_create
from tests.conftest import free_port
from tests.helpers import wait_for, wait_for_status
from tests.nginx import Nginx, nginx_binary
from tests.sse import iter_frames


@pytest.fixture(scope="module")
def behind_nginx(start_server, fake_upstream, redis_url, tmp_path_factory):
    binary = nginx_binary()
    if binary is None:
        message = "nginx is not installed: `make test` installs Debian's package (as root)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    shared = {
        "CHAT_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_upstream.base_url,
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": f"nginx-{uuid.uuid4().hex}",
        "CHAT_TRUSTED_PROXIES": "127.0.0.1",
        "CHAT_RATE_LIMIT": "4/m",
    }
    workers = [start_server("nginx-one", **shared), start_server("nginx-two", **shared)]
    nginx = Nginx(binary, tmp_path_factory.mktemp("nginx"), free_port(), [w.port for w in workers])
    yield nginx, workers
    nginx.stop()


def through(nginx: Nginx, *, token: str | None = None, source: str = "127.0.0.1"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(base_url=nginx.url, headers=headers, transport=transport, timeout=15)


def test_frames_reach_the_client_through_nginx_as_they_are_produced(
    behind_nginx, make_user, fake_upstream
):
    nginx, _ = behind_nginx
    fake_upstream.script("through nginx", tokens=[f"n{i} " for i in range(10)], interval=0.3)
    _, token = api_token_create(owner=make_user("nora"))

    with (
        through(nginx, token=token) as client,
        client.stream("GET", "/api/chat/stream", params={"message": "through nginx"}) as response,
    ):
        assert response.status_code == 200
        arrivals = [frame.received_at for frame in iter_frames(response) if frame.has_data]

    upstream = fake_upstream.wait_for_request("through nginx")
    assert len(arrivals) == 11  # ten tokens and [DONE]
    assert arrivals[0] < upstream.token_times[-1] - 2.0, "the tokens were held back until the end"


def test_a_client_that_leaves_through_nginx_closes_the_upstream_and_the_reply_is_saved(
    behind_nginx, make_user, fake_upstream
):
    nginx, _ = behind_nginx
    fake_upstream.script("leave nginx", tokens=[f"l{i} " for i in range(400)], interval=0.05)
    _, token = api_token_create(owner=make_user("leo"))

    with (
        through(nginx, token=token) as client,
        client.stream("GET", "/api/chat/stream", params={"message": "leave nginx"}) as response,
    ):
        message_id = int(response.headers["x-message-id"])
        for count, _frame in enumerate(f for f in iter_frames(response) if f.has_data):
            if count == 2:
                break

    upstream = fake_upstream.wait_for_request("leave nginx")
    wait_for(lambda: upstream.aborted, timeout=10)
    reply = wait_for_status(message_id, timeout=10)
    assert reply.status == Message.Status.CANCELLED
    assert reply.content.startswith("l0 l1 l2 ")
    assert len(upstream.token_times) < 400


def test_requests_spread_over_two_workers_share_one_limit(behind_nginx, make_user):
    nginx, workers = behind_nginx
    _, token = api_token_create(owner=make_user("wanda"))

    with through(nginx, token=token) as client:
        before = len(nginx.upstreams_used())
        statuses = [client.get("/api/conversations").status_code for _ in range(6)]

    assert statuses == [200] * 4 + [429] * 2
    served_by = set(nginx.upstreams_used()[before:])
    assert served_by == {f"127.0.0.1:{worker.port}" for worker in workers}


def test_a_spoofed_forwarded_for_does_not_escape_the_limit_but_nginx_tells_clients_apart(
    behind_nginx, transactional_db
):
    nginx, _ = behind_nginx

    with through(nginx, source="127.0.0.2") as spoofer, through(nginx, source="127.0.0.3") as other:
        spoofed = [
            spoofer.get("/api/conversations", headers={"X-Forwarded-For": f"203.0.113.{n}"})
            for n in range(6)
        ]
        neighbour = other.get("/api/conversations")

    assert [response.status_code for response in spoofed] == [401] * 4 + [429] * 2
    assert neighbour.status_code == 401, "another client shares the spoofer's window"
