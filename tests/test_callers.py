"""Who may call the API and how they are told: credentials, CSRF and origins, caching."""

from __future__ import annotations

import httpx
import pytest

from conversations.models import Conversation
from tests.helpers import create_token, session_client, token_client

STATE_CHANGING = [
    ("POST", "/api/chat/stream"),
    ("DELETE", "/api/conversations/1"),
    ("POST", "/api/messages/1/cancel"),
]


@pytest.mark.parametrize(("method", "path"), STATE_CHANGING)
def test_a_state_changing_call_with_no_credentials_gets_401_not_a_csrf_failure(
    server, method, path
):
    response = httpx.request(method, f"{server.url}{path}", json={"message": "hi"})

    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["error"]["code"] == "not_authenticated"


def test_a_session_call_that_changes_state_still_needs_the_csrf_header(server, client):
    del client.headers["X-CSRFToken"]

    response = client.post("/api/chat/stream", json={"message": "no csrf header"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "csrf_failed"


CROSS_SITE = {
    "an Origin of another site": {"Origin": "http://evil.example"},
    "a Referer of another site": {"Referer": "http://evil.example/page"},
    "nothing to show where it comes from": {},
    "Sec-Fetch-Site same-site": {"Sec-Fetch-Site": "same-site"},
    "Sec-Fetch-Site cross-site": {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
}


@pytest.mark.parametrize("headers", CROSS_SITE.values(), ids=CROSS_SITE.keys())
def test_a_session_get_stream_from_another_site_starts_no_reply(
    server, user, fake_upstream, headers
):
    with session_client(server.url, user) as client:
        del client.headers["Sec-Fetch-Site"]
        response = client.get(
            "/api/chat/stream", params={"message": "cross-site get"}, headers=headers
        )

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "cross_site"
    assert fake_upstream.requests_for("cross-site get") == []
    assert not Conversation.objects.filter(owner=user).exists()


SAME_SITE = {
    "Sec-Fetch-Site same-origin": {"Sec-Fetch-Site": "same-origin"},
    "Sec-Fetch-Site none (the address typed)": {"Sec-Fetch-Site": "none"},
    "an Origin of this site": {"Origin": "{site}"},
    "a Referer of this site": {"Referer": "{site}/c/1/"},
}


@pytest.mark.parametrize("headers", SAME_SITE.values(), ids=SAME_SITE.keys())
def test_a_session_get_stream_from_this_site_streams(server, user, fake_upstream, headers):
    with session_client(server.url, user) as client:
        del client.headers["Sec-Fetch-Site"]
        response = client.get(
            "/api/chat/stream",
            params={"message": "same-site get"},
            headers={name: value.format(site=server.url) for name, value in headers.items()},
        )

    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")


def test_a_token_get_stream_needs_no_origin(server, user, fake_upstream):
    with token_client(server, create_token("alice")) as client:
        response = client.get(
            "/api/chat/stream",
            params={"message": "token get"},
            headers={"Origin": "http://elsewhere.example"},
        )

    assert response.status_code == 200
    assert response.text.endswith("data: [DONE]\n\n")


def test_pages_and_api_answers_are_not_stored_by_caches(server, client):
    page = client.get("/")
    listing = client.get("/api/conversations")
    refused = httpx.get(f"{server.url}/api/conversations")
    static = client.get("/static/conversations/chat.css")

    for response in (page, listing, refused):
        assert response.headers["cache-control"] == "private, no-store", response.url
    for response in (listing, refused):
        assert "Authorization" in response.headers["vary"], response.url
    assert static.status_code == 200
    assert "max-age" in static.headers["cache-control"]
