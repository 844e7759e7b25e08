"""A Reply used out of order fails with a clear error, not an AttributeError on None.

``start`` creates the future ``bind`` and ``adiscard`` settle and the loop readers wait on;
``rows`` are there only once bound. In-process: nothing here reaches a server or a database.
(``bind`` and ``adiscard`` before ``start`` are tests/test_reply.py's.)
"""

from __future__ import annotations

import asyncio

import pytest

from conversations.providers.demo import DemoProvider
from conversations.replies.reply import Reply
from tests.loops import run_in_new_loop


def new_reply() -> Reply:
    return Reply(provider=DemoProvider(tokens_per_second=0), keepalive_seconds=0, max_seconds=5)


def test_waiting_on_a_reply_never_started_says_start_comes_first():
    with pytest.raises(RuntimeError, match=r"start\(\) must be called before wait_beyond\(\)"):
        run_in_new_loop(new_reply().wait_beyond(0))


def test_rows_of_an_unbound_reply_say_bind_comes_first():
    with pytest.raises(RuntimeError, match=r"bind\(\) must be called before its rows are used"):
        new_reply().rows  # noqa: B018


def test_a_started_reply_can_be_discarded_and_ends_without_rows():
    async def scenario() -> Reply:
        reply = new_reply()
        reply.start([{"role": "user", "content": "hello"}])
        await asyncio.sleep(0)  # its task starts (as while the rows are written)
        await reply.adiscard()
        return reply

    reply = run_in_new_loop(scenario())
    assert reply.finished is not None
    with pytest.raises(RuntimeError, match="bind"):
        reply.rows  # noqa: B018
