"""One assistant reply in flight, from the first upstream call to its single finalisation.

The producing side (a task iterating the provider) is apart from the responses that carry the
reply: each attaches at a position (``attach``), reads the tokens past it (``tokens_from``,
``wait_beyond``) and detaches when its client goes. A reply nobody is attached to any more goes
on for CHAT_DETACH_GRACE_SECONDS, so a client that reloads or reconnects can pick it up, and is
stopped (upstream closed, partial text saved as cancelled) if none does. An explicit stop
(``stop``, ``aclose``) ends it at once. Nothing here runs a timer per token: keep-alives, the
time limit, checkpoints and the grace are one timer each per reply.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from array import array
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from chatsite import metrics

from ..models import Message
from ..providers import ChatMessage, ChatProvider, ProviderError, StreamOutcome
from ..services import (
    INTERRUPTED_CODE,
    INTERRUPTED_MESSAGE,
    message_acheckpoint,
    message_afinalize,
)
from ..storable import storable
from ..usage import prompt_chars, reply_usage

logger = logging.getLogger(__name__)

CANCEL_RETRY_SECONDS = 0.05


@dataclass(frozen=True)
class Finished:
    """How a reply ended."""

    status: str
    error_code: str = ""
    error_message: str = ""

    @classmethod
    def of(cls, message: Message) -> Finished:
        return cls(message.status, message.error_code, message.error_message)


COMPLETE = Finished(Message.Status.COMPLETE)
STOPPED = Finished(Message.Status.CANCELLED, "stopped", "The reply was stopped on request.")
CLIENT_LEFT = Finished(
    Message.Status.CANCELLED, "client_left", "The client left and no client came back for it."
)
TIMED_OUT = Finished(
    Message.Status.ERROR, "stream_timeout", "The reply took too long and was stopped."
)
INTERRUPTED = Finished(Message.Status.INTERRUPTED, INTERRUPTED_CODE, INTERRUPTED_MESSAGE)
INTERNAL_ERROR = Finished(
    Message.Status.ERROR, "internal_error", "The reply failed because of an error on the server."
)
NOT_SAVED = Finished(Message.Status.ERROR, "save_failed", "The reply could not be saved.")
STOP_REASONS = {
    "stopped": STOPPED,
    "client_left": CLIENT_LEFT,
    "timeout": TIMED_OUT,
    "shutdown": INTERRUPTED,
}


def too_long(max_chars: int) -> Finished:
    return Finished(
        Message.Status.ERROR,
        "reply_too_long",
        f"The reply passed the limit of {max_chars} characters and was stopped.",
    )


class Reply:
    # A worker holds one per open stream: slots keep each to its fields (no __dict__).
    __slots__ = (
        "provider",
        "model",
        "owner_id",
        "conversation_id",
        "message_id",
        "keepalive_seconds",
        "max_seconds",
        "checkpoint_seconds",
        "max_chars",
        "detach_grace_seconds",
        "finished",
        "attached",
        "detached_ever",
        "mirrored",
        "attaches",
        "_parts",
        "_text",
        "_ends",
        "_waiters",
        "_on_end",
        "_checkpointed",
        "_checkpoint",
        "_checkpointing",
        "_task",
        "_deadline",
        "_keepalive",
        "_grace",
        "_cancel_retry",
        "_last_news",
        "_stop_reason",
        "_finalising",
        "_saved",
        "_loop",
        "_prompt_chars",
        "_began",
    )

    def __init__(
        self,
        *,
        provider: ChatProvider,
        keepalive_seconds: float,
        max_seconds: float,
        checkpoint_seconds: float = 0.0,
        max_chars: int = 200_000,
        detach_grace_seconds: float = 0.0,
    ) -> None:
        self.provider = provider
        self.model = provider.model
        self.owner_id: int | None = None
        self.conversation_id: int | None = None
        self.message_id: int | None = None
        self.keepalive_seconds = keepalive_seconds
        self.max_seconds = max_seconds
        self.checkpoint_seconds = checkpoint_seconds
        self.max_chars = max_chars
        self.detach_grace_seconds = detach_grace_seconds
        self.finished: Finished | None = None
        """Set once the reply has ended and been saved (or could not be)."""
        self.attached = 0
        self.detached_ever = False
        """A client left before the end: one may come back, here or through another process."""
        self.mirrored = 0
        """How many tokens have been copied to Redis for readers in other processes."""
        self.attaches = 0
        """Attachments after the first (resumes, reloads, other tabs), saved with the reply."""
        self._parts: list[str] = []
        self._text = ""
        self._ends: array[int] | None = None
        """After the end, the tokens are kept compactly: the text and where each token ends."""
        self._waiters: list[asyncio.Future[None]] = []
        self._on_end: list[Callable[[], Awaitable[None]]] = []
        self._checkpointed = 0
        self._checkpoint: asyncio.TimerHandle | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._cancel_retry: asyncio.TimerHandle | None = None
        self._last_news = 0.0
        self._stop_reason: str | None = None
        self._finalising = False
        self._saved: asyncio.Future[bool] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prompt_chars = 0
        """The prompt's length, to estimate its tokens if the upstream does not count them."""
        self._began = False
        """Whether the producing task has run its first step (a task cancelled before that
        would never run its body, and so never save the reply)."""

    # -- the producing side ---------------------------------------------------------------

    def start(self, prompt: Sequence[ChatMessage], *, model: str | None = None) -> None:
        """Send the prompt upstream (to ``model``, default the provider's); the rows may be
        bound later, before the reply is saved."""
        self.model = model or self.provider.model
        self._prompt_chars = prompt_chars(prompt)
        loop = self._loop = asyncio.get_running_loop()
        self._last_news = loop.time()
        self._saved = loop.create_future()
        self._task = loop.create_task(self._produce(prompt, self.model), name="reply")
        self._deadline = loop.call_later(self.max_seconds, self.stop, "timeout")
        if self.keepalive_seconds > 0:
            self._keepalive = loop.call_later(self.keepalive_seconds, self._keepalive_tick)
        if self.checkpoint_seconds > 0:
            self._checkpoint = loop.call_later(self.checkpoint_seconds, self._checkpoint_tick)

    def bind(self, *, owner_id: int, conversation_id: int, message_id: int) -> None:
        """The saved rows this reply finalises (after ``start``, once)."""
        self._rows_settled("bind", saved=True)
        self.owner_id = owner_id
        self.conversation_id, self.message_id = conversation_id, message_id

    @property
    def rows(self) -> tuple[int, int]:
        """The conversation and message ids given to ``bind``. Every reply handed out of
        ``running`` is bound; asking an unbound one is a programming error."""
        conversation_id, message_id = self.conversation_id, self.message_id
        if conversation_id is None or message_id is None:
            raise RuntimeError("Reply.bind() must be called before its rows are used")
        return conversation_id, message_id

    def on_end(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Await ``callback`` once the reply has ended and been saved (or could not be)."""
        self._on_end.append(callback)

    async def adiscard(self) -> None:
        """Stop a reply whose rows could not be saved (after ``start``, instead of ``bind``);
        it then saves nothing."""
        self._rows_settled("adiscard", saved=False)
        self.stop("discarded")
        await self.aended()

    def _saved_future(self) -> asyncio.Future[bool]:
        """Whether the reply's rows were saved: set once, by ``bind`` or ``adiscard``, and
        awaited before the reply is finalised. ``start`` creates it, so both must follow it."""
        saved = self._saved
        if saved is None:
            raise RuntimeError("Reply.start() must be called before bind() or adiscard()")
        return saved

    def _rows_settled(self, caller: str, *, saved: bool) -> None:
        """Tell the producing task, which waits for it before saving, whether the reply has
        rows to save: once, and only for a reply that has started."""
        if self._saved is None:
            raise RuntimeError(f"Reply.{caller}() before start(): there is no reply to settle")
        if self._saved.done():
            raise RuntimeError(f"Reply.{caller}(): the reply was already bound or discarded")
        self._saved.set_result(saved)

    def stop(self, reason: str = "stopped") -> None:
        """Stop producing: the upstream request is closed and the partial reply saved."""
        task = self._task
        if task is None or task.done() or self._finalising or self._stop_reason:
            return
        if not self._began:
            # The task has not run yet: it starts stopped, and saves the reply as any stop does.
            self._stop_reason = reason
            return
        loop = asyncio.get_running_loop()
        if task.cancelling():
            # Being cancelled already: a server shutting down cancels every task at once, and
            # such a reply is saved as interrupted. But the count can also be left above zero by
            # code below (seen while the upstream request was on its way), so a task still
            # running shortly after is stopped as asked.
            self._cancel_retry = loop.call_later(CANCEL_RETRY_SECONDS, self._stop_late, reason)
            return
        self._stop_reason = reason
        self._cancel()

    def _stop_late(self, reason: str) -> None:
        task = self._task
        if task is not None and not (task.done() or self._finalising or self._stop_reason):
            self._stop_reason = reason
            self._cancel()

    def _cancel(self) -> None:
        """Cancel the producing task, and again until it gives up: code below it can swallow a
        cancellation, and a reply left waiting for its upstream would never end."""
        task = self._task
        if task is None or task.done() or self._finalising:
            return
        task.cancel()
        loop = asyncio.get_running_loop()
        self._cancel_retry = loop.call_later(CANCEL_RETRY_SECONDS, self._cancel)

    async def aclose(self) -> None:
        """Stop if still running and wait until the reply is saved."""
        self.stop()
        await self.aended()

    async def _produce(self, prompt: Sequence[ChatMessage], model: str | None) -> None:
        self._began = True
        loop = asyncio.get_running_loop()
        started = loop.time()
        first_token_at: float | None = None
        parts = self._parts
        room = self.max_chars
        outcome = StreamOutcome()
        finished = COMPLETE
        produced = self.provider.stream(prompt, outcome, model=model)
        # The provider holds the prompt until it is sent, and then lets it go; so does this.
        prompt = ()
        try:
            if self._stop_reason is not None:
                # Stopped before it began: the upstream is never asked.
                await produced.aclose()
                raise asyncio.CancelledError()
            async with aclosing(produced) as deltas:
                async for delta in deltas:
                    if first_token_at is None:
                        first_token_at = loop.time()
                    # What the database cannot store is replaced before any client sees it,
                    # so what is sent is what is saved.
                    delta = storable(delta)
                    room -= len(delta)
                    if room < 0:
                        # Closing the provider's stream closes the upstream request.
                        finished = too_long(self.max_chars)
                        delta = delta[:room]
                        if delta:
                            parts.append(delta)
                        break
                    parts.append(delta)
                    self._wake()
        except ProviderError as exc:
            finished = Finished(Message.Status.ERROR, exc.code, exc.message)
            metrics.upstream_failed(code=exc.code)
        except asyncio.CancelledError:
            finished = INTERRUPTED
            if self._stop_reason is None:
                raise
            finished = STOP_REASONS.get(self._stop_reason, STOPPED)
        except Exception:
            logger.exception("reply %s failed", self.message_id)
            finished = INTERNAL_ERROR
        finally:
            self._finalising = True
            for timer in (
                self._deadline,
                self._keepalive,
                self._cancel_retry,
                self._checkpoint,
                self._grace,
            ):
                if timer is not None:
                    timer.cancel()
            ended: float | None = None
            try:
                if await self._saved_future():
                    ended = loop.time()
                    await self._finalize(finished, outcome, parts, started, first_token_at, ended)
            except Exception:
                logger.exception("reply %s could not be saved", self.message_id)
                finished = NOT_SAVED
            finally:
                self._end(finished)
                if ended is not None:  # not for a reply discarded before its rows existed
                    metrics.reply_ended(
                        status=finished.status,
                        ttft_seconds=None if first_token_at is None else first_token_at - started,
                        duration_seconds=ended - started,
                        tokens=self.token_count,
                    )
                for callback in self._on_end:
                    try:
                        await callback()
                    except Exception:
                        logger.exception("reply %s: the work for its end failed", self.message_id)

    def _end(self, finished: Finished) -> None:
        """Mark the reply ended, and keep its tokens compactly for clients that resume it."""
        self._text = "".join(self._parts)
        self._ends = array("I", _running_total(self._parts))
        self._parts = []
        self.finished = finished
        self._wake()

    async def _finalize(
        self,
        finished: Finished,
        outcome: StreamOutcome,
        parts: list[str],
        started: float,
        first_token_at: float | None,
        ended: float,
    ) -> None:
        await message_afinalize(
            message_id=self.message_id,
            status=finished.status,
            content="".join(parts),
            ttft_ms=_ms(first_token_at - started) if first_token_at is not None else None,
            duration_ms=_ms(ended - started),
            prompt_tokens=outcome.prompt_tokens,
            completion_tokens=outcome.completion_tokens,
            finish_reason=outcome.finish_reason,
            error_code=finished.error_code,
            error_message=finished.error_message,
            attach_count=self.attaches,
            user_id=self.owner_id,
            model=self.model,
            usage=reply_usage(
                reported_prompt_tokens=outcome.prompt_tokens,
                reported_completion_tokens=outcome.completion_tokens,
                prompt_chars=self._prompt_chars,
                deltas=len(parts),
            ),
        )
        reported = outcome.completion_tokens
        logger.info(
            "reply %s %s: %d deltas in %.0f ms",
            self.message_id,
            finished.status,
            len(parts),
            (ended - started) * 1000,
            extra={
                "conversation_id": self.conversation_id,
                "message_id": self.message_id,
                "user_id": self.owner_id,
                "model": self.model,
                "status": finished.status,
                "end_reason": finished.error_code or outcome.finish_reason,
                "ttft_ms": _ms(first_token_at - started) if first_token_at is not None else None,
                "duration_ms": _ms(ended - started),
                "tokens": reported if reported is not None else len(parts),
                "tokens_estimated": reported is None,
            },
        )

    # -- the reading side -----------------------------------------------------------------

    @property
    def token_count(self) -> int:
        return len(self._ends) if self._ends is not None else len(self._parts)

    def tokens_from(self, position: int) -> list[str]:
        """The tokens after the first ``position``."""
        if self._ends is None:
            return self._parts[position:]
        ends = self._ends
        if position >= len(ends):
            return []
        starts = [ends[position - 1] if position else 0, *ends[position:-1]]
        return [self._text[start:end] for start, end in zip(starts, ends[position:], strict=True)]

    async def wait_beyond(self, position: int) -> bool:
        """Wait until there are tokens past ``position`` or the reply has ended (True), or
        until it is time for a keep-alive (False)."""
        if self.token_count > position or self.finished is not None:
            return True
        loop = self._loop
        if loop is None:
            raise RuntimeError("Reply.start() must be called before wait_beyond()")
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:  # cancelled, not woken
                self._waiters.remove(waiter)
        return self.token_count > position or self.finished is not None

    def attach(self) -> None:
        """A client reads this reply: it is not stopped for want of one."""
        if self.attached == 0 and self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.attached += 1

    def reattach(self) -> None:
        """A client resumes or joins this reply (counted, and saved with it)."""
        self.attaches += 1
        self.attach()

    def detach(self) -> bool:
        """A client has gone. When it was the last, the reply is stopped after the grace
        unless another attaches meanwhile, or at once with no grace (then True)."""
        self.attached -= 1
        self.detached_ever = True
        if self.attached > 0 or self.finished is not None or self._finalising:
            return False
        if self.detach_grace_seconds <= 0:
            self.stop("client_left")
            return True
        if self._grace is None:
            loop = asyncio.get_running_loop()
            self._grace = loop.call_later(self.detach_grace_seconds, self._grace_over)
        return False

    async def aended(self) -> None:
        """Wait until the reply has ended and been saved."""
        if self._task is not None:
            await asyncio.wait([self._task])

    def _grace_over(self) -> None:
        self._grace = None
        if self.attached == 0:
            self.stop("client_left")

    def _wake(self) -> None:
        loop = self._loop
        if loop is not None:  # always, once started: only the producer and its timers wake
            self._last_news = loop.time()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _keepalive_tick(self) -> None:
        loop = asyncio.get_running_loop()
        idle = loop.time() - self._last_news
        if idle >= self.keepalive_seconds * 0.99:
            self._wake()
            idle = 0.0
        self._keepalive = loop.call_later(self.keepalive_seconds - idle, self._keepalive_tick)

    def _checkpoint_tick(self) -> None:
        """Save the text so far, if it grew, while the reply goes on: a process that dies
        mid-reply then leaves it behind for ``interrupt_stale_replies``."""
        loop = asyncio.get_running_loop()
        grew = len(self._parts) > self._checkpointed
        idle = self._checkpointing is None or self._checkpointing.done()
        if self.message_id is not None and grew and idle and not self._finalising:
            self._checkpointed = len(self._parts)
            save = message_acheckpoint(message_id=self.message_id, content="".join(self._parts))
            self._checkpointing = loop.create_task(save, context=contextvars.Context())
        self._checkpoint = loop.call_later(self.checkpoint_seconds, self._checkpoint_tick)


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _running_total(parts: list[str]) -> Iterator[int]:
    total = 0
    for part in parts:
        total += len(part)
        yield total
