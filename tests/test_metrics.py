"""GET /metrics through running servers: the values move as replies run and end; refusals and
upstream failures are counted by their code; only allowed networks, or the token, may read it;
two workers' counts are added up whichever answers."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import redis.asyncio
from django.db.backends.postgresql.base import DatabaseWrapper
from prometheus_client.parser import text_string_to_metric_families

from conversations.tokens import api_token_create
from tests.conftest import ROOT, free_port
from tests.helpers import session_client, wait_for
from tests.sse import iter_frames

TOKENS = [f"t{i} " for i in range(20)]
METRICS_TOKEN = "metrics-token-4b1d"

Samples = dict[tuple[str, frozenset], float]


def scrape(url: str, **headers: str) -> Samples:
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(response.text)


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, default: float | None = None, **labels: str) -> float:
    """A sample's value; a series not there yet counts as ``default`` if one is given."""
    key = (name, frozenset(labels.items()))
    if key not in samples and default is not None:
        return default
    return samples[key]


def changes(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, 0.0, **labels)


@pytest.fixture(scope="module")
def metered(start_server, fake_upstream):
    """Metrics on (the default), read from loopback (the default network)."""
    return start_server(
        "metrics",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_RATE_LIMIT="8/m",
        CHAT_STREAMS_PER_USER="1",
        CHAT_STREAM_QUEUE_LENGTH="1",
        CHAT_STREAM_QUEUE_WAIT_SECONDS="0.5",
        CACHE_KEY_PREFIX=f"metrics-{uuid.uuid4().hex}",
    )


@pytest.fixture(scope="module")
def guarded(start_server, fake_upstream):
    """Metrics for 10.0.0.0/8 and the token only; its Redis does not answer."""
    return start_server(
        "metrics-guarded",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_METRICS_ALLOWED="10.0.0.0/8",
        CHAT_METRICS_TOKEN=METRICS_TOKEN,
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )


def bearer(user) -> dict[str, str]:
    _, token = api_token_create(owner=user)
    return {"Authorization": f"Bearer {token}"}


def test_a_reply_shows_while_it_streams_and_is_counted_once_it_ends(
    metered, fake_upstream, make_user
):
    fake_upstream.script("metered reply", tokens=TOKENS, interval=0.05)
    before = scrape(metered.url)
    headers = bearer(make_user("mira"))
    with (
        httpx.Client(base_url=metered.url, headers=headers, timeout=15) as client,
        client.stream("POST", "/api/chat/stream", json={"message": "metered reply"}) as response,
    ):
        frames = iter_frames(response)
        first = next(frame for frame in frames if frame.has_data)
        during = scrape(metered.url)
        rest = [frame for frame in frames if frame.has_data]
    wait_for(
        lambda: (
            value(scrape(metered.url), "chatsite_streams_open")
            == value(before, "chatsite_streams_open")
        )
    )
    after = scrape(metered.url)

    received = [json.loads(frame.data)["token"] for frame in [first, *rest[:-1]]]
    assert received == TOKENS
    assert changes(before, during, "chatsite_streams_open") == 1
    assert changes(before, during, "chatsite_replies_total", status="complete") == 0
    assert changes(before, after, "chatsite_replies_total", status="complete") == 1
    sent = fake_upstream.requests_for("metered reply")[0].token_times
    assert changes(before, after, "chatsite_tokens_relayed_total") == len(sent) == len(TOKENS)
    assert changes(before, after, "chatsite_reply_ttft_seconds_count") == 1
    assert changes(before, after, "chatsite_reply_duration_seconds_count") == 1
    duration = changes(before, after, "chatsite_reply_duration_seconds_sum")
    ttft = changes(before, after, "chatsite_reply_ttft_seconds_sum")
    assert 0 < ttft < duration
    assert duration >= 0.05 * (len(TOKENS) - 1)
    assert changes(before, after, "chatsite_stream_queue_wait_seconds_count") == 1
    # The connections this process holds, read from its pools.
    assert value(after, "chatsite_db_connections", pool="django") >= 1
    assert value(after, "chatsite_db_connections", pool="async") >= 1  # the token lookup's
    if os.environ.get("REDIS_URL"):  # the server's environment is this one's
        assert value(after, "chatsite_redis_connections", pool="client") >= 1
    else:  # no Redis client, no series
        assert ("chatsite_redis_connections", frozenset({("pool", "client")})) not in after


def test_a_fresh_worker_opens_its_connections_before_its_first_request(start_server):
    """Its first API request waits for no connection to open (the resume bench's slowest
    reconnect was a fresh worker's first)."""
    fresh = start_server("fresh", CACHE_KEY_PREFIX=f"fresh-{uuid.uuid4().hex}")

    first = scrape(fresh.url)

    if os.environ.get("CHAT_FAST_PATH", "1") == "1":  # the token lookup's pool
        assert value(first, "chatsite_db_connections", pool="async") >= 1
    if os.environ.get("REDIS_URL"):
        assert value(first, "chatsite_redis_connections", pool="client") >= 1


def test_an_upstream_failure_is_counted_by_its_code(metered, fake_upstream, make_user):
    fake_upstream.script("metered failure", status=429)
    before = scrape(metered.url)
    with session_client(metered.url, make_user("uma")) as client:
        body = client.get("/api/chat/stream", params={"message": "metered failure"}).text
    after = scrape(metered.url)

    assert "upstream_rate_limited" in body
    errors = "chatsite_upstream_errors_total"
    assert changes(before, after, errors, code="upstream_rate_limited") == 1
    assert changes(before, after, "chatsite_replies_total", status="error") == 1
    assert changes(before, after, "chatsite_reply_ttft_seconds_count") == 0  # no first token
    assert changes(before, after, "chatsite_reply_duration_seconds_count") == 1


def test_refusals_are_counted_by_reason_and_the_stream_queue_wait_is_measured(
    metered, fake_upstream, make_user
):
    fake_upstream.script("metered hold", tokens=TOKENS, interval=0.1)
    before = scrape(metered.url)
    with session_client(metered.url, make_user("quinn")) as client:
        with client.stream("GET", "/api/chat/stream", params={"message": "metered hold"}) as held:
            frames = iter_frames(held)
            next(frame for frame in frames if frame.has_data)
            queued = client.get("/api/chat/stream", params={"message": "metered hold"})
            held_rest = [frame.data for frame in frames if frame.has_data]  # to its end
        limited = []
        while not limited or limited[-1].status_code != 429:
            limited.append(client.get("/api/conversations"))
            assert len(limited) < 20
    after = scrape(metered.url)

    assert held_rest[-1] == "[DONE]"
    assert queued.status_code == 429 and queued.json()["error"]["code"] == "too_many_streams"
    assert limited[-1].json()["error"]["code"] == "rate_limited"
    refused = "chatsite_requests_refused_total"
    assert changes(before, after, refused, status="429", reason="too_many_streams") == 1
    assert changes(before, after, refused, status="429", reason="rate_limited") == 1
    assert changes(before, after, "chatsite_stream_queue_wait_seconds_count") == 2
    assert changes(before, after, "chatsite_stream_queue_wait_seconds_sum") >= 0.5
    waited_long = "chatsite_stream_queue_wait_seconds_bucket"
    assert changes(before, after, waited_long, le="0.1") == 1  # the held one, at once


def test_clients_attaching_and_resuming_are_counted_by_kind(metered, fake_upstream, make_user):
    fake_upstream.script("metered attach", tokens=TOKENS, interval=0.05)
    before = scrape(metered.url)
    with session_client(metered.url, make_user("ada")) as client:
        with client.stream("POST", "/api/chat/stream", json={"message": "metered attach"}) as first:
            frames = iter_frames(first)  # kept: dropping it would close the stream
            next(frame for frame in frames if frame.has_data)
            message_id = int(first.headers["x-message-id"])
            watched = client.get(f"/api/messages/{message_id}/stream")
        resumed = client.get("/api/chat/stream", headers={"Last-Event-ID": f"{message_id}-2"})
    after = scrape(metered.url)

    assert watched.status_code == 200 and resumed.status_code == 200
    attaches = "chatsite_reply_attaches_total"
    assert changes(before, after, attaches, kind="attach", source="here") == 1
    assert changes(before, after, attaches, kind="resume", source="here") == 1


def test_metrics_need_no_session_count_against_no_limit_and_are_not_logged(metered):
    log_start = len(metered.log())
    answers = [httpx.get(f"{metered.url}/metrics", timeout=10) for _ in range(12)]

    assert [answer.status_code for answer in answers] == [200] * 12  # CHAT_RATE_LIMIT is 8/m
    for answer in answers:
        assert "set-cookie" not in answer.headers
        assert "ratelimit-limit" not in answer.headers
    assert "/metrics" not in metered.log()[log_start:]


def test_a_request_forwarded_by_an_untrusted_proxy_is_not_from_loopback(metered):
    forwarded = httpx.get(f"{metered.url}/metrics", headers={"X-Forwarded-For": "127.0.0.1"})

    assert forwarded.status_code == 403
    assert forwarded.json()["error"]["code"] == "forbidden"


def test_outside_the_allowed_networks_only_the_token_reads_metrics(guarded):
    refused = httpx.get(f"{guarded.url}/metrics", timeout=10)
    wrong = httpx.get(
        f"{guarded.url}/metrics", headers={"Authorization": "Bearer not-it"}, timeout=10
    )
    samples = scrape(guarded.url, Authorization=f"Bearer {METRICS_TOKEN}")

    assert (refused.status_code, wrong.status_code) == (403, 403)
    assert refused.json()["error"]["code"] == "forbidden"
    assert "chatsite_replies_total" not in refused.text
    assert "chatsite_streams_open" in {name for name, _ in samples}


def test_a_service_out_of_reach_is_counted_as_a_503(guarded, make_user):
    before = scrape(guarded.url, Authorization=f"Bearer {METRICS_TOKEN}")
    with session_client(guarded.url, make_user("nora")) as client:
        unavailable = client.get("/api/conversations")
    after = scrape(guarded.url, Authorization=f"Bearer {METRICS_TOKEN}")

    assert unavailable.status_code == 503
    refused = "chatsite_requests_refused_total"
    assert changes(before, after, refused, status="503", reason="limits_unavailable") == 1


def test_metrics_off_records_nothing_and_answer_404(start_server, fake_upstream, make_user):
    off = start_server(
        "metrics-off",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_METRICS="0",
    )
    with session_client(off.url, make_user("otto")) as client:
        reply = client.get("/api/chat/stream", params={"message": "Hello"})
    answer = httpx.get(f"{off.url}/metrics", timeout=10)

    assert reply.status_code == 200 and "[DONE]" in reply.text
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "not_found"


def test_two_workers_add_up_whichever_answers_and_their_directory_goes_with_them(
    server_env, redis_url, fake_upstream, make_user, tmp_path
):
    fake_upstream.script("two workers", tokens=TOKENS[:5])
    port = free_port()
    env = {
        **server_env,
        "CHAT_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_upstream.base_url,
        "REDIS_URL": redis_url,
        "CACHE_KEY_PREFIX": f"metrics-workers-{uuid.uuid4().hex}",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log_path = tmp_path / "workers.log"
    command = [sys.executable, "-m", "chatsite.serve", "chatsite.asgi:application"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port), "--workers", "2", "--no-access-log"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: log_path.read_text().count("Application startup complete") == 2, 60)
        directory = Path(re.search(r"keep their metrics in (\S+)", log_path.read_text())[1])
        assert directory.is_dir()
        with session_client(url, make_user("wendy")) as client:
            bodies = [
                client.get("/api/chat/stream", params={"message": "two workers"}).text
                for _ in range(6)
            ]
        assert all("[DONE]" in body for body in bodies)
        # Each scrape on a new connection: both workers answer some, and each adds all up.
        answered: dict[str, Samples] = {}

        def both_answered() -> bool:
            samples = scrape(url)
            pids = {dict(labels)["pid"] for name, labels in samples if "db_connections" in name}
            assert len(pids) == 1  # the answering worker's own connections
            answered[pids.pop()] = samples
            return len(answered) == 2

        wait_for(both_answered, 30)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)

    for samples in answered.values():
        assert value(samples, "chatsite_replies_total", status="complete") == 6
        assert value(samples, "chatsite_tokens_relayed_total") == 6 * 5
        assert value(samples, "chatsite_reply_duration_seconds_count") == 6
        assert value(samples, "chatsite_streams_open") == 0
    assert process.returncode == 0, log_path.read_text()
    assert not directory.exists()


def test_private_attributes_the_connection_gauges_read_are_there():
    """chatsite.metrics reads these when scraped; if a Django or redis-py upgrade moved them,
    the gauges would quietly go missing."""
    pool = redis.asyncio.ConnectionPool()

    assert isinstance(DatabaseWrapper._connection_pools, dict)
    assert isinstance(pool._available_connections, list)
    assert len(pool._in_use_connections) == 0
