"""Replies read in another process cost Redis round trips per process, not per reader or per
token: the reading side's ``FramesHub`` (one blocking XREAD for all of its readers) and the
producing side's ``EntriesBatch`` (the mirrors' entries of one loop round in one pipeline).

In-process against the real Redis; the end-to-end behaviour (two server processes, exact
frames) is in ``tests/test_resume.py``."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from conversations import redis_client
from conversations.replies import remote
from tests.helpers import await_for
from tests.loops import run_in_new_loop


@pytest.fixture
def shared_redis(settings, redis_url):
    """The process's Redis client on ``redis_url``, under a key prefix of this test's own."""
    settings.REDIS_URL = redis_url
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": f"hub-{uuid.uuid4().hex}"},
    }
    redis_client.redis_client.cache_clear()
    yield
    redis_client.redis_client.cache_clear()


def tokens_of(entries) -> list[str]:
    return [fields[b"t"].decode() for _, fields in entries]


def test_readers_of_several_replies_share_one_read_and_each_gets_what_follows_its_start(
    shared_redis, monkeypatch
):
    reads: list[int] = []

    async def scenario() -> dict[str, list[str]]:
        client = redis_client.redis_client()
        real_xread = client.xread

        async def counted_xread(streams, **kwargs):
            reads.append(len(streams))
            return await real_xread(streams, **kwargs)

        monkeypatch.setattr(client, "xread", counted_xread)
        one, two = remote.frames_key(1), remote.frames_key(2)
        first = await client.xadd(one, {"t": "one-1"})
        hub = remote.frames_hub()
        readers = {
            "one from the start": hub.subscribe(one, "0-0"),
            "one after its first entry": hub.subscribe(one, first.decode()),
            "two from the start": hub.subscribe(two, "0-0"),
        }
        await client.xadd(one, {"t": "one-2"})
        await client.xadd(two, {"t": "two-1"})
        got: dict[str, list[str]] = {name: [] for name in readers}
        deadline = time.monotonic() + 5
        while sum(map(len, got.values())) < 5 and time.monotonic() < deadline:
            for name, reader in readers.items():
                got[name] += tokens_of(await reader.next_entries(0.05))
        for reader in readers.values():
            reader.close()
        return got

    got = run_in_new_loop(scenario())

    assert got == {
        "one from the start": ["one-1", "one-2"],
        "one after its first entry": ["one-2"],
        "two from the start": ["two-1"],
    }
    # Each read asks for both replies at once (and the hub's wake stream), never one per reader.
    assert max(reads) == 3


def test_a_reader_that_joins_while_the_hub_waits_is_read_at_once(shared_redis, monkeypatch):
    """The hub's pending read (blocking for 5 s here) is cut short when a reader joins, so the
    newcomer's entries come at once, not when the read would have timed out."""
    monkeypatch.setattr(remote, "READ_BLOCK_MS", 5000)

    async def scenario() -> float:
        client = redis_client.redis_client()
        real_xread = client.xread
        reading: list[list] = []

        async def recorded_xread(streams, **kwargs):
            reading.append(list(streams))
            return await real_xread(streams, **kwargs)

        monkeypatch.setattr(client, "xread", recorded_xread)
        hub = remote.frames_hub()
        waiting = hub.subscribe(remote.frames_key(10), "0-0")
        # The hub's read, for the first reply's stream alone, is on its way (and blocks).
        await await_for(lambda: reading)
        assert remote.frames_key(11) not in reading[0]
        started = time.monotonic()
        joining = hub.subscribe(remote.frames_key(11), "0-0")
        await client.xadd(remote.frames_key(11), {"t": "hello"})
        entries = await joining.next_entries(10)
        took = time.monotonic() - started
        assert tokens_of(entries) == ["hello"]
        waiting.close()
        joining.close()
        return took

    assert run_in_new_loop(scenario()) < 2.5


def test_entries_added_in_one_loop_round_are_written_in_one_pipeline(shared_redis, monkeypatch):
    pipelines: list[int] = []

    async def scenario() -> list[list[str]]:
        client = redis_client.redis_client()
        real_pipeline = client.pipeline

        def counted_pipeline(*args, **kwargs):
            pipelines.append(1)
            return real_pipeline(*args, **kwargs)

        monkeypatch.setattr(client, "pipeline", counted_pipeline)
        batch = remote.entries_batch()
        streams = [remote.frames_key(20 + n) for n in range(5)]
        await asyncio.gather(
            *(batch.xadd(stream, {"t": f"entry {n}"}) for n, stream in enumerate(streams))
        )
        return [tokens_of(await client.xrange(stream)) for stream in streams]

    written = run_in_new_loop(scenario())

    assert written == [[f"entry {n}"] for n in range(5)]
    assert len(pipelines) == 1


def test_a_failed_batch_raises_in_every_writer(shared_redis, settings):
    """Redis out of reach: each mirror's write raises (and the mirror stops, as before)."""
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    redis_client.redis_client.cache_clear()

    async def scenario() -> list:
        batch = remote.entries_batch()
        return await asyncio.gather(
            *(batch.xadd(remote.frames_key(30 + n), {"t": "x"}) for n in range(3)),
            return_exceptions=True,
        )

    results = run_in_new_loop(scenario())

    assert len(results) == 3
    assert all(isinstance(result, remote.RedisError | OSError) for result in results)
