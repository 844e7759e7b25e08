"""The reply lifecycle called in-process: the real SDK to the fake upstream, the real database."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError

from conversations.models import Conversation
from conversations.providers import ChatProvider, StreamOutcome, get_provider
from conversations.replies.reply import Reply
from conversations.replies.running import RUNNING, reply_astart
from conversations.services import ChatRequest
from tests.conftest import UPSTREAM_KEY
from tests.loops import run_in_new_loop


@pytest.fixture
def openai_provider(settings, fake_upstream):
    settings.CHAT_PROVIDER = "openai"
    settings.OPENAI_API_KEY = UPSTREAM_KEY
    settings.OPENAI_BASE_URL = fake_upstream.base_url
    settings.OPENAI_MAX_RETRIES = 0
    get_provider.cache_clear()
    yield get_provider()
    get_provider.cache_clear()


@pytest.mark.django_db(transaction=True)
def test_upstream_request_is_closed_when_a_new_conversation_cannot_be_saved(
    fake_upstream, openai_provider
):
    """A new conversation asks upstream while its rows are written; if the write fails, the
    upstream request is closed (or never sent) and nothing is left behind."""
    fake_upstream.script("rows cannot be saved", first_token_delay=5.0)
    fake_upstream.script("warm up", tokens=["ok"])
    nobody = get_user_model()(pk=987654, username="nobody")

    async def open_reply_then_look_upstream() -> list[bool]:
        # A connection to the upstream is open already, as on a server that has been serving:
        # the rows can fail within a millisecond, and a cancellation that lands while httpx is
        # still connecting leaves that socket to the garbage collector (a ResourceWarning).
        warm_up = [{"role": "user", "content": "warm up"}]
        assert [d async for d in openai_provider.stream(warm_up, StreamOutcome())] == ["ok"]
        with pytest.raises(IntegrityError):
            await reply_astart(
                user=nobody, chat_request=ChatRequest(message="rows cannot be saved")
            )
        # Poll while this loop still runs, as a server's would: until the request that went
        # out is aborted (or, if none went out, for half a second), well inside the 5 s delay.
        started = time.monotonic()
        while time.monotonic() - started < 3.0:
            aborted = [r.aborted for r in fake_upstream.requests_for("rows cannot be saved")]
            if all(aborted) and (aborted or time.monotonic() - started > 0.5):
                break
            await asyncio.sleep(0.02)
        await openai_provider.client.close()
        return aborted

    aborted = run_in_new_loop(open_reply_then_look_upstream())
    assert all(aborted)
    assert not Conversation.objects.exists()
    assert not RUNNING


class LosesOneCancellation(ChatProvider):
    """Like a library below the SDK that catches a cancellation and carries on."""

    model = "loses-one-cancellation"

    async def stream(self, messages, outcome, *, model=None):
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        await asyncio.sleep(30)
        yield "never"


class HoldsACancelCount(ChatProvider):
    """Code below that leaves the task's cancel count above zero while the request goes on,
    which is also how a task looks when a server shutting down has just cancelled it."""

    model = "holds-a-cancel-count"

    async def stream(self, messages, outcome, *, model=None):
        asyncio.current_task().cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        await asyncio.sleep(30)
        yield "never"


@pytest.mark.parametrize("provider", [LosesOneCancellation(), HoldsACancelCount()])
def test_stopping_a_reply_ends_it_even_if_the_code_below_keeps_a_cancellation(provider):
    """A stop that did not take was a reply (and its upstream request) left running."""

    async def start_then_stop() -> float:
        reply = Reply(provider=provider, keepalive_seconds=0, max_seconds=60)
        reply.start([{"role": "user", "content": "hello"}])
        await asyncio.sleep(0.01)
        started = time.monotonic()
        await asyncio.wait_for(reply.adiscard(), timeout=5)
        return time.monotonic() - started

    assert run_in_new_loop(start_then_stop()) < 1.0
