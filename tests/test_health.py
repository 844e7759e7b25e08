"""/healthz and /readyz through a running server: no auth, no cookies, no limit; /readyz names
what is down, in plain words, within its timeout."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import free_port
from tests.test_database_outage import server_without_database  # noqa: F401 - a fixture


@pytest.fixture(scope="module")
def server_without_redis(start_server, fake_upstream):
    """A server whose Redis does not answer (nothing listens on its port)."""
    return start_server(
        "no-redis",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
        CHAT_READY_TIMEOUT_SECONDS="1",
    )


def test_health_answers_without_auth_cookies_or_a_limit(start_server, fake_upstream, redis_url):
    limited = start_server(
        "health-limited",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        REDIS_URL=redis_url,
        CHAT_RATE_LIMIT="2/m",
    )
    with httpx.Client(base_url=limited.url, timeout=10) as client:
        answers = [client.get(path) for _ in range(5) for path in ("/healthz", "/readyz")]

    assert [response.status_code for response in answers] == [200] * 10
    assert answers[0].json() == {"status": "ok"}
    assert answers[1].json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
    for response in answers:
        assert "set-cookie" not in response.headers
        assert "ratelimit-limit" not in response.headers


def test_readyz_names_the_database_when_it_is_down_and_healthz_still_answers(
    server_without_database,  # noqa: F811 - the fixture imported above
):
    started = time.monotonic()
    ready = httpx.get(f"{server_without_database.url}/readyz", timeout=30)
    waited = time.monotonic() - started
    alive = httpx.get(f"{server_without_database.url}/healthz", timeout=30)

    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert ready.json()["checks"]["database"] in {"timeout", "unreachable"}
    assert ready.headers["retry-after"] == "5"
    assert waited < 10
    assert alive.status_code == 200


def test_readyz_names_redis_when_it_is_down(server_without_redis, transactional_db):
    ready = httpx.get(f"{server_without_redis.url}/readyz", timeout=30)

    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "ok", "redis": "unreachable"}
    assert "127.0.0.1" not in ready.text
    assert "not ready: database ok, redis unreachable" in server_without_redis.log()
