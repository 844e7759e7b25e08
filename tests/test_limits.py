"""Rate limits and concurrent-stream limits, through running servers (one, and two on Redis)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import httpx
import pytest
import redis
import redis.asyncio

from conversations.errors import Busy
from conversations.limits import Rate, RedisStreamSlots
from conversations.models import Message
from tests.conftest import free_port
from tests.helpers import (
    OpenStream,
    client_from,
    in_one_window,
    open_stream,
    session_client,
    wait_for,
)
from tests.loops import run_in_new_loop

SLOW_REPLY = {"tokens": [f"s{i} " for i in range(2000)], "interval": 0.02}


@pytest.fixture(scope="module")
def limited_server(start_server, fake_upstream):
    return start_server(
        "limited",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_RATE_LIMIT="5/m",
        CACHE_KEY_PREFIX=f"limited-{uuid.uuid4().hex}",
    )


@pytest.fixture(scope="module")
def slots_server(start_server, fake_upstream):
    return start_server(
        "slots",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_STREAMS_PER_USER="2",
        CHAT_STREAM_QUEUE_LENGTH="2",
        CHAT_STREAM_QUEUE_WAIT_SECONDS="3",
    )


@pytest.fixture(scope="module")
def proxied_server(start_server, fake_upstream):
    return start_server(
        "proxied",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        CHAT_RATE_LIMIT="3/m",
        CHAT_TRUSTED_PROXIES="127.0.0.1",
        CACHE_KEY_PREFIX=f"proxied-{uuid.uuid4().hex}",
    )


@pytest.mark.parametrize(
    ("text", "limit", "period"),
    [("100/m", 100, 60), ("5/s", 5, 1), ("10/5m", 10, 300), ("9/h", 9, 3600), ("2/d", 2, 86400)],
)
def test_rate_limit_setting_reads_count_and_window(text, limit, period):
    assert Rate.parse(text) == Rate(limit, period)


def test_fixed_window_limit_answers_429_with_retry_after_per_user(
    limited_server, make_user, transactional_db
):
    def attempt(n: int) -> list[httpx.Response]:
        alice, bob = make_user(f"alice{n}"), make_user(f"bob{n}")
        with session_client(limited_server.url, alice) as client:
            answers = [client.get("/api/conversations") for _ in range(6)]
        with session_client(limited_server.url, bob) as other:
            return [*answers, other.get("/api/conversations")]

    *answers, limited, bobs = in_one_window(attempt)

    assert [answer.status_code for answer in answers] == [200] * 5
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert bobs.status_code == 200
    # The IETF RateLimit header fields let a client see the limit coming.
    assert [answer.headers["ratelimit-limit"] for answer in answers] == ["5"] * 5
    assert [answer.headers["ratelimit-remaining"] for answer in answers] == [
        "4",
        "3",
        "2",
        "1",
        "0",
    ]
    assert all(1 <= int(answer.headers["ratelimit-reset"]) <= 60 for answer in answers)
    assert (limited.headers["ratelimit-limit"], limited.headers["ratelimit-remaining"]) == (
        "5",
        "0",
    )
    assert limited.headers["ratelimit-reset"] == limited.headers["retry-after"]


def test_spoofed_forwarded_for_does_not_escape_the_anonymous_limit(
    limited_server, transactional_db
):
    def attempt(n: int) -> list[httpx.Response]:
        # A client address of this attempt's own: its anonymous window starts empty.
        with client_from(limited_server.url, f"127.0.0.{30 + n}") as client:
            return [
                client.get("/api/conversations", headers={"X-Forwarded-For": f"203.0.113.{i}"})
                for i in range(7)
            ]

    statuses = [response.status_code for response in in_one_window(attempt)]

    assert statuses[:5] == [401] * 5
    assert statuses[5:] == [429, 429]


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_window(
    proxied_server, transactional_db
):
    def anonymous(ip: str) -> httpx.Response:
        return httpx.get(f"{proxied_server.url}/api/conversations", headers={"X-Forwarded-For": ip})

    def attempt(n: int) -> list[httpx.Response]:
        first, second = f"198.51.100.{2 * n + 1}", f"198.51.100.{2 * n + 2}"
        return [*(anonymous(first) for _ in range(4)), anonymous(second)]

    statuses = [response.status_code for response in in_one_window(attempt)]

    assert statuses[:4] == [401, 401, 401, 429]
    assert statuses[4] == 401


def slot_keys(prefix: str, user) -> tuple[str, str]:
    """The Redis sorted sets of ``user``'s stream slots and of their queue (RedisStreamSlots)."""
    owner = f"{prefix}:streams:user:{user.pk}"
    return f"{owner}:slots", f"{owner}:queue"


@pytest.fixture(scope="module")
def queue_server(start_server, fake_upstream, redis_url):
    """Two slots per user and a queue of two, in Redis, where a test sees who waits."""
    prefix = f"queue-{uuid.uuid4().hex}"
    server = start_server(
        "queue",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        REDIS_URL=redis_url,
        CACHE_KEY_PREFIX=prefix,
        CHAT_STREAMS_PER_USER="2",
        CHAT_STREAM_QUEUE_LENGTH="2",
        CHAT_STREAM_QUEUE_WAIT_SECONDS="3",
    )
    with redis.Redis.from_url(redis_url) as client:
        yield server, prefix, client


def test_streams_over_the_limit_queue_in_order_then_get_429_when_the_queue_is_full(
    queue_server, make_user, fake_upstream, transactional_db
):
    server, prefix, redis_sync = queue_server
    fake_upstream.script("slow stream", **SLOW_REPLY)
    user = make_user("carol")
    _, queue = slot_keys(prefix, user)
    clients = [session_client(server.url, user) for _ in range(5)]
    holders = [open_stream(clients[0], "slow stream"), open_stream(clients[1], "slow stream")]
    assert [h.status_code for h in holders] == [200, 200]
    started: dict[str, OpenStream] = {}

    def wait_in_queue(name: str, client: httpx.Client) -> threading.Thread:
        waiting = redis_sync.zcard(queue)
        thread = threading.Thread(
            target=lambda: started.__setitem__(name, open_stream(client, "slow stream"))
        )
        thread.start()
        wait_for(lambda: redis_sync.zcard(queue) == waiting + 1)
        return thread

    first = wait_in_queue("first", clients[2])
    second = wait_in_queue("second", clients[3])
    refused = clients[4].post("/api/chat/stream", json={"message": "slow stream"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_streams"
    assert int(refused.headers["retry-after"]) >= 1
    assert started == {}

    holders[0].close()
    first.join(5)
    assert started["first"].status_code == 200
    assert "second" not in started
    holders[1].close()
    second.join(5)
    assert started["second"].status_code == 200
    for response in started.values():
        response.close()
    for client in clients:
        client.close()
    assert wait_for(lambda: not Message.objects.filter(status="streaming").exists())


def test_a_stream_holds_the_one_slot_taken_as_it_was_counted_and_others_give_theirs_back(
    queue_server, make_user, fake_upstream, transactional_db
):
    """A request that will start a reply takes a free slot in the round trip that counts it:
    the reply holds that one slot, and a request that starts none after all gives it back."""
    server, prefix, redis_sync = queue_server
    fake_upstream.script("held open", **SLOW_REPLY)
    user = make_user("gus")
    slots, queue = slot_keys(prefix, user)
    with session_client(server.url, user) as client:
        stream = open_stream(client, "held open")
        assert redis_sync.zcard(slots) == 1
        answers = [
            client.post("/api/chat/stream", json={"message": ""}),
            client.post("/api/chat/stream", json={"message": "hi", "conversation_id": 10**9}),
            client.get("/api/chat/stream", params={"message": "hi", "model": "not-offered"}),
        ]
        assert [answer.status_code for answer in answers] == [400, 404, 400]
        assert (redis_sync.zcard(slots), redis_sync.zcard(queue)) == (1, 0)
        stream.close()
    assert wait_for(lambda: redis_sync.zcard(slots) == 0)


def test_a_request_over_its_rate_limit_takes_no_slot_in_the_round_trip_that_counts_it(
    redis_url,
):
    async def count_three_times() -> tuple[list[tuple[int, bool]], int]:
        client = redis.asyncio.Redis.from_url(redis_url)
        prefix = f"counted-{uuid.uuid4().hex}"
        slots = RedisStreamSlots(
            client=client, prefix=prefix, limit=5, queue_length=0, wait_seconds=0.1, ttl=60
        )
        counted = []
        for _ in range(3):
            count, slot = await slots.try_acquire_counting(
                "user:1", counter=f"{prefix}:requests:user:1:0", limit=2, ttl=60
            )
            counted.append((count, slot is not None))
        held = await client.zcard(f"{prefix}:streams:user:1:slots")
        await client.aclose()
        return counted, held

    counted, held = run_in_new_loop(count_three_times())
    assert counted == [(1, True), (2, True), (3, False)]
    assert held == 2


def test_a_queued_stream_gives_up_with_429_when_no_slot_frees_in_time(
    slots_server, make_user, fake_upstream, transactional_db
):
    fake_upstream.script("hold the slot", **SLOW_REPLY)
    user = make_user("dora")
    holders = [session_client(slots_server.url, user) for _ in range(2)]
    held = [open_stream(client, "hold the slot") for client in holders]

    with session_client(slots_server.url, user) as late:
        started = time.monotonic()
        response = late.post("/api/chat/stream", json={"message": "hold the slot"})
        waited = time.monotonic() - started

    assert response.status_code == 429
    assert 2.5 <= waited < 6
    for stream, client in zip(held, holders, strict=True):
        stream.close()
        client.close()


def test_slots_are_given_back_when_streams_end_fail_or_disconnect(
    slots_server, make_user, fake_upstream, transactional_db
):
    fake_upstream.script("quick one", tokens=["ok"])
    fake_upstream.script("failing one", status=500)
    fake_upstream.script("left early", **SLOW_REPLY)
    user = make_user("erin")
    with session_client(slots_server.url, user) as client:
        for message in ("quick one", "failing one", "quick one", "failing one"):
            client.post("/api/chat/stream", json={"message": message}).raise_for_status()
        for _ in range(3):
            stream = open_stream(client, "left early")
            next(stream.frames)
            stream.close()
        wait_for(lambda: not Message.objects.filter(status="streaming").exists())
        both = [open_stream(client, "quick one") for _ in range(2)]

    assert [r.status_code for r in both] == [200, 200]


def test_two_server_processes_share_stream_slots_through_redis(
    start_server, fake_upstream, redis_url, make_user, transactional_db
):
    shared = {
        "CHAT_PROVIDER": "openai",
        "OPENAI_BASE_URL": fake_upstream.base_url,
        "REDIS_URL": redis_url,
        "CHAT_STREAMS_PER_USER": "2",
        "CHAT_STREAM_QUEUE_LENGTH": "0",
        "CACHE_KEY_PREFIX": f"shared-{uuid.uuid4().hex}",
    }
    one = start_server("redis-one", **shared)
    two = start_server("redis-two", **shared)
    fake_upstream.script("shared slot", **SLOW_REPLY)
    user = make_user("frida")
    clients = [session_client(server.url, user) for server in (one, two, one, two)]

    first = open_stream(clients[0], "shared slot")
    second = open_stream(clients[1], "shared slot")
    third = clients[2].post("/api/chat/stream", json={"message": "shared slot"})
    fourth = clients[3].post("/api/chat/stream", json={"message": "shared slot"})
    assert (first.status_code, second.status_code) == (200, 200)
    assert (third.status_code, fourth.status_code) == (429, 429)

    first.close()
    wait_for(lambda: fake_upstream.requests_for("shared slot")[0].aborted)
    with redis.Redis.from_url(redis_url) as redis_sync:
        wait_for(lambda: redis_sync.zcard(slot_keys(shared["CACHE_KEY_PREFIX"], user)[0]) == 1)
    after = open_stream(clients[3], "shared slot")
    assert after.status_code == 200
    for response in (second, after):
        response.close()
    for client in clients:
        client.close()


def test_two_server_processes_count_requests_in_one_window_through_redis(
    start_server, redis_url, make_user, transactional_db
):
    shared = {
        "REDIS_URL": redis_url,
        "CHAT_RATE_LIMIT": "3/m",
        "CACHE_KEY_PREFIX": f"counted-{uuid.uuid4().hex}",
    }
    one = start_server("counted-one", **shared)
    two = start_server("counted-two", **shared)

    def attempt(n: int) -> list[httpx.Response]:
        user = make_user(f"gus{n}")
        with session_client(one.url, user) as first, session_client(two.url, user) as second:
            return [
                first.get("/api/conversations"),
                second.get("/api/conversations"),
                first.get("/api/conversations"),
                second.get("/api/conversations"),
            ]

    statuses = [response.status_code for response in in_one_window(attempt)]

    assert statuses == [200, 200, 200, 429]


def test_a_slot_held_by_a_worker_that_died_expires(redis_url):
    """A worker killed mid-stream never gives its slot back; Redis forgets it after the ttl."""

    async def hold_then_try_again() -> tuple[int | None, str]:
        client = redis.asyncio.Redis.from_url(redis_url)
        slots = RedisStreamSlots(
            client=client,
            prefix=f"expiry-{uuid.uuid4().hex}",
            limit=1,
            queue_length=0,
            wait_seconds=0.1,
            ttl=1.0,
        )
        held_at = time.monotonic()
        await slots.acquire("user:1")  # never released, as by a worker that died
        refused = None
        try:
            await slots.acquire("user:1")
        except Busy as busy:
            refused = busy.code
        while True:  # polled until Redis lets the slot go
            try:
                after_ttl = await slots.acquire("user:1")
                break
            except Busy:
                assert time.monotonic() - held_at < 5, "the dead worker's slot never expired"
                await asyncio.sleep(0.05)
        waited = time.monotonic() - held_at
        await after_ttl.release()
        await client.aclose()
        return refused, after_ttl.owner, waited

    refused, owner, waited = run_in_new_loop(hold_then_try_again())
    assert (refused, owner) == ("too_many_streams", "user:1")
    assert waited >= 0.95  # the ttl, not sooner


def test_limits_that_cannot_reach_redis_refuse_with_503_not_500(
    start_server, make_user, fake_upstream, transactional_db
):
    server = start_server(
        "redis-gone",
        CHAT_PROVIDER="openai",
        OPENAI_BASE_URL=fake_upstream.base_url,
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )

    with session_client(server.url, make_user("hal")) as client:
        listing = client.get("/api/conversations")
        stream = client.post("/api/chat/stream", json={"message": "no redis"})

    for response in (listing, stream):
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "limits_unavailable"
        assert response.headers["retry-after"] == "5"
    assert fake_upstream.requests_for("no redis") == []
    assert "the limits cannot be checked: Redis failed" in server.log()
    assert "Connection refused" in server.log()
