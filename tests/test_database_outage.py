"""PostgreSQL unreachable: every caller gets a prompt 503 with Retry-After, and operators one
log line per outage instead of a traceback per request."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import free_port


@pytest.fixture(scope="module")
def server_without_database(start_server, fake_upstream):
    """A server whose PostgreSQL does not answer (nothing listens on its port)."""
    return start_server(
        "no-database",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/chat",
        DATABASE_POOL_TIMEOUT="1",
    )


API_CALLS = [
    ("GET", "/api/conversations", "Bearer cst_some-token"),
    ("POST", "/api/chat/stream", "Bearer cst_some-token"),
    ("POST", "/api/messages/1/cancel", "Bearer cst_some-token"),
    ("GET", "/api/conversations", None),  # a session: reading it needs the database
]


@pytest.mark.parametrize(("method", "path", "authorization"), API_CALLS)
def test_an_api_call_gets_a_prompt_503_database_unavailable(
    server_without_database, method, path, authorization
):
    headers = {"Authorization": authorization} if authorization else {}
    cookies = {} if authorization else {"sessionid": "a-session-the-database-holds"}
    started = time.monotonic()

    response = httpx.request(
        method,
        f"{server_without_database.url}{path}",
        json={"message": "hi"},
        headers={**headers, "Sec-Fetch-Site": "same-origin", "X-CSRFToken": "x" * 32},
        cookies={**cookies, "csrftoken": "x" * 32},
        timeout=30,
    )

    assert time.monotonic() - started < 10  # the pool's default wait was 30 s
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response.headers["retry-after"] == "5"


def test_a_page_gets_a_plain_503_page(server_without_database):
    with httpx.Client(base_url=server_without_database.url, timeout=30) as client:
        form = client.get("/accounts/login/")  # needs no database
        token = client.cookies["csrftoken"]
        signing_in = client.post(
            "/accounts/login/",
            data={"username": "erin", "password": "secret", "csrfmiddlewaretoken": token},
        )
        client.cookies.set("sessionid", "a-session-the-database-holds")
        home = client.get("/")

    assert form.status_code == 200
    for response in (signing_in, home):
        assert response.status_code == 503
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["retry-after"] == "5"
        assert "cannot reach its database" in response.text


def test_an_outage_is_logged_once_without_tracebacks(server_without_database):
    for _ in range(3):
        httpx.get(
            f"{server_without_database.url}/api/conversations",
            headers={"Authorization": "Bearer cst_some-token"},
            timeout=30,
        )

    log = server_without_database.log()
    assert log.count("the database is unavailable") == 1
    assert "could not open the database pool before serving (PoolTimeout)" in log  # at startup
    assert "Traceback" not in log
    assert " ERROR " in log
