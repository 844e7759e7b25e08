"""The reply state machine (``conversations.replies.reply.Reply``) in-process: a provider the
test drives and the saves recorded instead of written, so that a failure here is the state
machine's (its timers, its stops, its one save) and nothing below it. The whole path through
a server is in test_stream_failures.py, test_resume.py and test_generation.py."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import pytest

from conversations.models import Message
from conversations.providers import ChatProvider, ProviderError
from conversations.replies import reply as reply_module
from conversations.replies.reply import (
    CLIENT_LEFT,
    COMPLETE,
    INTERNAL_ERROR,
    INTERRUPTED,
    NOT_SAVED,
    STOPPED,
    TIMED_OUT,
    Finished,
    Reply,
)
from tests.helpers import await_for

PROMPT = [{"role": "user", "content": "hello"}]
END = object()
"""Put in a Scripted provider's queue: the upstream ends the stream."""


class Scripted(ChatProvider):
    """A provider the test drives: ``send`` deltas, ``finish`` or ``fail`` the stream. It
    records what it was asked, and whether its stream was cancelled and closed (which is the
    upstream request being closed)."""

    model = "scripted"

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.asked: list = []
        self.cancelled = False
        self.closed = False

    def send(self, *deltas: str) -> None:
        for delta in deltas:
            self.queue.put_nowait(delta)

    def finish(self) -> None:
        self.queue.put_nowait(END)

    def fail(self, error: Exception) -> None:
        self.queue.put_nowait(error)

    async def stream(self, messages, outcome, *, model=None):
        self.asked.append((list(messages), model))
        try:
            while (item := await self.queue.get()) is not END:
                if isinstance(item, Exception):
                    raise item
                yield item
            outcome.finish_reason = "stop"
            outcome.prompt_tokens, outcome.completion_tokens = 3, 2
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.closed = True


class Saves:
    """What the reply asked to be saved, in place of message_afinalize/message_acheckpoint."""

    def __init__(self) -> None:
        self.finals: list[dict] = []
        self.checkpoints: list[dict] = []
        self.events: list[str] = []
        self.failure: Exception | None = None

    async def finalize(self, **fields) -> bool:
        self.events.append("saved")
        if self.failure is not None:
            raise self.failure
        self.finals.append(fields)
        return True

    async def checkpoint(self, **fields) -> None:
        self.checkpoints.append(fields)


@pytest.fixture
def saves(monkeypatch) -> Saves:
    recorded = Saves()
    monkeypatch.setattr(reply_module, "message_afinalize", recorded.finalize)
    monkeypatch.setattr(reply_module, "message_acheckpoint", recorded.checkpoint)
    return recorded


def run(coroutine):
    """The coroutine in an event loop of its own (in a thread: a browser test may have left
    one in this thread)."""
    with ThreadPoolExecutor(1) as executor:
        return executor.submit(asyncio.run, coroutine).result()


async def started(provider: Scripted, *, bound: bool = True, **options) -> Reply:
    """A reply whose request is on its way upstream (as on a server, where the rows are
    written meanwhile), bound to its rows unless ``bound`` is False."""
    options = {"keepalive_seconds": 0, "max_seconds": 60, **options}
    reply = Reply(provider=provider, **options)
    reply.start(PROMPT)
    if bound:
        reply.bind(owner_id=1, conversation_id=2, message_id=3)
    await await_for(lambda: provider.asked)
    return reply


async def ended(reply: Reply) -> None:
    await asyncio.wait_for(reply.aended(), 5)


# -- ending once -----------------------------------------------------------------------------


def test_a_reply_that_completes_is_saved_once_with_its_text_and_figures(saves):
    async def scenario():
        provider = Scripted()
        reply = await started(provider)
        provider.send("Hel", "lo")
        provider.finish()
        await ended(reply)
        return provider, reply

    provider, reply = run(scenario())

    assert reply.finished == COMPLETE
    assert provider.asked == [(PROMPT, "scripted")]
    [final] = saves.finals
    assert {key: final[key] for key in ("message_id", "status", "content")} == {
        "message_id": 3,
        "status": "complete",
        "content": "Hello",
    }
    assert (final["finish_reason"], final["prompt_tokens"], final["completion_tokens"]) == (
        "stop",
        3,
        2,
    )
    assert (final["error_code"], final["error_message"], final["attach_count"]) == ("", "", 0)
    assert 0 <= final["ttft_ms"] <= final["duration_ms"]
    assert (reply.token_count, reply.tokens_from(0), reply.tokens_from(1)) == (
        2,
        ["Hel", "lo"],
        ["lo"],
    )


def test_a_stop_closes_the_upstream_and_saves_the_text_so_far_as_cancelled(saves):
    async def scenario():
        provider = Scripted()
        reply = await started(provider)
        provider.send("partial ")
        await await_for(lambda: reply.token_count == 1)
        reply.stop()
        await ended(reply)
        return provider, reply

    provider, reply = run(scenario())

    assert (provider.cancelled, provider.closed) == (True, True)
    assert reply.finished == STOPPED
    [final] = saves.finals
    assert (final["status"], final["error_code"], final["content"]) == (
        "cancelled",
        "stopped",
        "partial ",
    )


def test_a_reply_stopped_before_its_task_first_ran_is_saved_and_never_asks_upstream(saves):
    """A stop in the same step as the start (before the loop ran the producing task once)
    used to cancel a task that then never ran its body: nothing saved, readers left waiting."""

    async def scenario():
        provider = Scripted()
        reply = Reply(provider=provider, keepalive_seconds=0, max_seconds=60)
        reply.start(PROMPT)
        reply.bind(owner_id=1, conversation_id=2, message_id=3)
        reply.stop()
        await ended(reply)
        return provider, reply

    provider, reply = run(scenario())

    assert provider.asked == []
    assert reply.finished == STOPPED
    [final] = saves.finals
    assert (final["status"], final["error_code"], final["content"]) == ("cancelled", "stopped", "")


def test_stops_after_the_first_and_after_the_end_change_nothing(saves):
    async def scenario():
        provider = Scripted()
        reply = await started(provider)
        reply.stop()
        reply.stop("timeout")
        await ended(reply)
        reply.stop("shutdown")
        await asyncio.wait_for(reply.aclose(), 5)
        return reply

    reply = run(scenario())

    assert reply.finished == STOPPED
    assert [final["error_code"] for final in saves.finals] == ["stopped"]


@pytest.mark.parametrize(
    ("reason", "finished"),
    [("stopped", STOPPED), ("client_left", CLIENT_LEFT), ("timeout", TIMED_OUT)],
)
def test_each_stop_reason_is_saved_as_its_status(saves, reason, finished):
    async def scenario():
        reply = await started(Scripted())
        reply.stop(reason)
        await ended(reply)
        return reply

    assert run(scenario()).finished == finished
    assert [(f["status"], f["error_code"]) for f in saves.finals] == [
        (finished.status, finished.error_code)
    ]


def test_a_server_shutting_down_saves_the_reply_interrupted(saves):
    async def scenario():
        provider = Scripted()
        reply = await started(provider)
        provider.send("so far")
        await await_for(lambda: reply.token_count == 1)
        reply.stop("shutdown")
        await ended(reply)
        return reply

    assert run(scenario()).finished == INTERRUPTED
    [final] = saves.finals
    assert (final["status"], final["content"]) == (Message.Status.INTERRUPTED, "so far")


def test_the_callbacks_for_its_end_run_after_the_save_even_when_one_fails(saves, caplog):
    async def scenario():
        provider = Scripted()
        reply = await started(provider)

        async def first() -> None:
            saves.events.append("first")
            raise RuntimeError("a callback failed")

        async def second() -> None:
            saves.events.append("second")

        reply.on_end(first)
        reply.on_end(second)
        provider.finish()
        await ended(reply)

    run(scenario())

    assert saves.events == ["saved", "first", "second"]
    assert "reply 3: the work for its end failed" in caplog.text


def test_a_reply_that_cannot_be_saved_ends_as_not_saved(saves, caplog):
    saves.failure = RuntimeError("the database refused")

    async def scenario():
        provider = Scripted()
        reply = await started(provider)

        async def after() -> None:
            saves.events.append("ended")

        reply.on_end(after)
        provider.finish()
        await ended(reply)
        return reply

    assert run(scenario()).finished == NOT_SAVED
    assert saves.events == ["saved", "ended"]
    assert "reply 3 could not be saved" in caplog.text


# -- the rows it saves to --------------------------------------------------------------------


def test_a_reply_that_ends_before_its_rows_are_bound_is_saved_once_they_are(saves):
    async def scenario():
        provider = Scripted()
        reply = await started(provider, bound=False)
        provider.send("early")
        provider.finish()
        await await_for(lambda: provider.closed)
        nothing_yet = list(saves.finals)
        reply.bind(owner_id=1, conversation_id=2, message_id=3)
        await ended(reply)
        return nothing_yet

    assert run(scenario()) == []
    [final] = saves.finals
    assert (final["message_id"], final["status"], final["content"]) == (3, "complete", "early")


def test_a_discarded_reply_closes_the_upstream_and_saves_nothing(saves):
    async def scenario():
        provider = Scripted()
        reply = await started(provider, bound=False)
        await asyncio.wait_for(reply.adiscard(), 5)
        return provider, reply

    provider, reply = run(scenario())

    assert (provider.cancelled, provider.closed) == (True, True)
    assert reply.finished is not None
    assert saves.finals == []


@pytest.mark.parametrize("call", ["bind", "adiscard"])
def test_binding_or_discarding_a_reply_that_has_not_started_is_a_clear_error(call):
    reply = Reply(provider=Scripted(), keepalive_seconds=0, max_seconds=60)

    async def settle() -> None:
        if call == "bind":
            reply.bind(owner_id=1, conversation_id=2, message_id=3)
        else:
            await reply.adiscard()

    with pytest.raises(RuntimeError, match=rf"Reply\.{call}\(\) before start\(\)"):
        run(settle())


def test_binding_a_reply_twice_is_a_clear_error(saves):
    async def scenario():
        provider = Scripted()
        reply = await started(provider)
        try:
            reply.bind(owner_id=1, conversation_id=2, message_id=4)
        finally:
            provider.finish()
            await ended(reply)

    with pytest.raises(RuntimeError, match="already bound or discarded"):
        run(scenario())
    assert [final["message_id"] for final in saves.finals] == [3]


# -- what the provider does ------------------------------------------------------------------


def test_an_upstream_failure_is_saved_with_its_code_and_the_text_so_far(saves):
    async def scenario():
        provider = Scripted()
        reply = await started(provider)
        provider.send("half ")
        provider.fail(ProviderError("upstream_interrupted", "The model service stopped."))
        await ended(reply)
        return reply

    reply = run(scenario())

    assert reply.finished == Finished(
        Message.Status.ERROR, "upstream_interrupted", "The model service stopped."
    )
    [final] = saves.finals
    assert (final["status"], final["error_code"], final["content"]) == (
        "error",
        "upstream_interrupted",
        "half ",
    )


def test_a_bug_below_is_saved_as_an_internal_error_and_logged(saves, caplog):
    async def scenario():
        provider = Scripted()
        reply = await started(provider)
        provider.fail(KeyError("choices"))
        await ended(reply)
        return reply

    with caplog.at_level(logging.ERROR):
        assert run(scenario()).finished == INTERNAL_ERROR
    assert "reply 3 failed" in caplog.text
    assert [final["error_code"] for final in saves.finals] == ["internal_error"]


def test_a_reply_past_its_size_limit_is_cut_there_and_its_upstream_closed(saves):
    async def scenario():
        provider = Scripted()
        reply = await started(provider, max_chars=5)
        provider.send("abc", "defg", "never")
        await ended(reply)
        return provider, reply

    provider, reply = run(scenario())

    assert provider.closed
    assert reply.tokens_from(0) == ["abc", "de"]
    [final] = saves.finals
    assert (final["status"], final["error_code"], final["content"]) == (
        "error",
        "reply_too_long",
        "abcde",
    )


def test_text_no_database_can_store_is_replaced_before_anyone_sees_it(saves):
    async def scenario():
        provider = Scripted()
        reply = await started(provider)
        provider.send("a\x00b")
        provider.finish()
        await ended(reply)
        return reply

    assert run(scenario()).tokens_from(0) == ["a\ufffdb"]
    assert saves.finals[0]["content"] == "a\ufffdb"


# -- timers ----------------------------------------------------------------------------------


def test_a_reply_past_its_time_limit_is_stopped_as_an_error(saves):
    async def scenario():
        loop = asyncio.get_running_loop()
        provider = Scripted()
        began = loop.time()
        reply = await started(provider, max_seconds=0.05)
        await ended(reply)
        return provider, reply, loop.time() - began

    provider, reply, took = run(scenario())

    assert reply.finished == TIMED_OUT
    assert provider.cancelled
    assert took >= 0.05
    assert saves.finals[0]["status"] == "error"


def test_a_reader_is_woken_for_a_keepalive_when_nothing_came(saves):
    async def scenario():
        provider = Scripted()
        reply = await started(provider, keepalive_seconds=0.05)
        idle = await asyncio.wait_for(reply.wait_beyond(0), 2)
        provider.send("t")
        news = await asyncio.wait_for(reply.wait_beyond(0), 2)
        provider.finish()
        await ended(reply)
        after_end = await asyncio.wait_for(reply.wait_beyond(reply.token_count), 2)
        return idle, news, after_end

    assert run(scenario()) == (False, True, True)


def test_checkpoints_save_the_text_so_far_while_the_reply_grows(saves):
    async def scenario():
        provider = Scripted()
        reply = await started(provider, checkpoint_seconds=0.02)
        provider.send("a")
        await await_for(lambda: len(saves.checkpoints) == 1)
        provider.send("b")
        await await_for(lambda: len(saves.checkpoints) == 2)
        provider.finish()
        await ended(reply)

    run(scenario())

    assert saves.checkpoints == [
        {"message_id": 3, "content": "a"},
        {"message_id": 3, "content": "ab"},
    ]


# -- clients attaching and leaving -----------------------------------------------------------


def test_the_last_client_leaving_stops_the_reply_after_the_grace(saves):
    async def scenario():
        loop = asyncio.get_running_loop()
        provider = Scripted()
        reply = await started(provider, detach_grace_seconds=0.05)
        reply.attach()
        left_at = loop.time()
        stopped_at_once = reply.detach()
        still_running = not provider.cancelled and reply.finished is None
        await ended(reply)
        return stopped_at_once, still_running, reply, loop.time() - left_at

    stopped_at_once, still_running, reply, took = run(scenario())

    assert (stopped_at_once, still_running) == (False, True)
    assert reply.finished == CLIENT_LEFT
    assert took >= 0.05
    assert saves.finals[0]["error_code"] == "client_left"


def test_a_client_back_within_the_grace_keeps_the_reply_going(saves):
    async def scenario():
        loop = asyncio.get_running_loop()
        provider = Scripted()
        reply = await started(provider, detach_grace_seconds=0.05)
        reply.attach()
        reply.detach()
        reply.reattach()
        loop.call_later(0.15, provider.finish)  # well past the grace
        await ended(reply)
        return reply

    reply = run(scenario())

    assert reply.finished == COMPLETE
    assert (reply.attaches, reply.detached_ever) == (1, True)
    assert saves.finals[0]["attach_count"] == 1


def test_without_a_grace_the_last_client_leaving_stops_the_reply_at_once(saves):
    async def scenario():
        reply = await started(Scripted(), detach_grace_seconds=0)
        reply.attach()
        reply.attach()
        first_left = reply.detach()
        last_left = reply.detach()
        await ended(reply)
        return first_left, last_left, reply

    first_left, last_left, reply = run(scenario())

    assert (first_left, last_left) == (False, True)
    assert reply.finished == CLIENT_LEFT
