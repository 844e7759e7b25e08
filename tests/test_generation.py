"""The reply lifecycle called in-process: the real SDK to the fake upstream, the real database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.db import IntegrityError

from conversations.models import Conversation
from conversations.providers import ChatProvider, StreamOutcome, get_provider
from conversations.replies.reply import Reply
from conversations.replies.running import RUNNING, reply_astart
from conversations.services import ChatRequest
from tests.conftest import UPSTREAM_KEY
from tests.helpers import await_for, conversation_rows_locked
from tests.loops import run_in_new_loop


@pytest.fixture
def openai_provider(settings, own_upstream):
    settings.CHAT_PROVIDER = "openai"
    settings.OPENAI_API_KEY = UPSTREAM_KEY
    settings.OPENAI_BASE_URL = own_upstream.base_url
    settings.OPENAI_MAX_RETRIES = 0
    get_provider.cache_clear()
    yield get_provider()
    get_provider.cache_clear()


@pytest.mark.django_db(transaction=True)
def test_upstream_request_is_closed_when_a_new_conversation_cannot_be_saved(
    own_upstream, openai_provider
):
    """A new conversation asks upstream while its rows are written; if the write fails, the
    upstream request is closed and nothing is left behind."""
    own_upstream.script("rows cannot be saved", first_token_delay=5.0)
    own_upstream.script("warm up", tokens=["ok"])
    nobody = get_user_model()(pk=987654, username="nobody")

    async def open_reply_that_cannot_be_saved() -> None:
        # A connection to the upstream is open already, as on a server that has been serving
        # (a cancellation that lands while httpx is still connecting leaves that socket to the
        # garbage collector, a ResourceWarning).
        warm_up = [{"role": "user", "content": "warm up"}]
        assert [d async for d in openai_provider.stream(warm_up, StreamOutcome())] == ["ok"]
        with pytest.raises(IntegrityError):
            await reply_astart(
                user=nobody, chat_request=ChatRequest(message="rows cannot be saved")
            )
        # Polled while this loop still runs, as a server's would, well inside the 5 s delay.
        await await_for(lambda: own_upstream.requests_for("rows cannot be saved")[0].aborted)
        await openai_provider.client.close()

    with ThreadPoolExecutor(1) as executor:
        with conversation_rows_locked():
            opening = executor.submit(run_in_new_loop, open_reply_that_cannot_be_saved())
            # The request has gone out while the rows wait for the lock; once they fail, it
            # must be closed.
            own_upstream.wait_for_request("rows cannot be saved")
        opening.result(timeout=10)

    [request] = own_upstream.requests_for("rows cannot be saved")
    assert request.aborted
    assert request.finished_at is None
    assert not Conversation.objects.exists()
    assert not RUNNING


class Waiting(ChatProvider):
    """A provider that says when the request is on its way (``waiting``: then it waits for an
    answer that never comes)."""

    def __init__(self) -> None:
        self.waiting = False


class LosesOneCancellation(Waiting):
    """Like a library below the SDK that catches a cancellation and carries on."""

    model = "loses-one-cancellation"

    async def stream(self, messages, outcome, *, model=None):
        self.waiting = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)
        await asyncio.sleep(30)
        yield "never"


class HoldsACancelCount(Waiting):
    """Code below that leaves the task's cancel count above zero while the request goes on,
    which is also how a task looks when a server shutting down has just cancelled it."""

    model = "holds-a-cancel-count"

    async def stream(self, messages, outcome, *, model=None):
        asyncio.current_task().cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0)
        self.waiting = True
        await asyncio.sleep(30)
        yield "never"


@pytest.mark.parametrize("provider_class", [LosesOneCancellation, HoldsACancelCount])
def test_stopping_a_reply_ends_it_even_if_the_code_below_keeps_a_cancellation(provider_class):
    """A stop that did not take was a reply (and its upstream request) left running."""
    provider = provider_class()

    async def start_then_stop() -> float:
        reply = Reply(provider=provider, keepalive_seconds=0, max_seconds=60)
        reply.start([{"role": "user", "content": "hello"}])
        await await_for(lambda: provider.waiting)
        started = time.monotonic()
        await asyncio.wait_for(reply.adiscard(), timeout=5)
        return time.monotonic() - started

    assert run_in_new_loop(start_then_stop()) < 1.0
