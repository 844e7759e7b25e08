"""Token usage per user, model and UTC day, and the daily token quota.

Counting. Each finished reply adds to one ``UsageDay`` row (user, UTC day, model), in the very
statement that saves the reply on PostgreSQL (``services.message_finalize``), so a reply is
counted exactly once, when it is saved, and never per token. What is counted is the upstream's
own report (``usage.prompt_tokens`` / ``completion_tokens`` of the stream's last chunk). When the
upstream does not report a figure (a server without ``stream_options.include_usage``, a reply
stopped before its end), it is estimated, and the row says how many of its tokens are estimates:

- completion: the number of text deltas received (OpenAI-compatible servers send about one
  token per delta; the reply log's ``tokens`` is the same figure);
- prompt: the prompt's characters divided by 4, rounded up (OpenAI's rule of thumb for English).

A reply with neither a report nor any text (the upstream refused or failed, or it was stopped
before its first token) counts as a reply with no tokens. A reply whose process died before
saving it (saved ``interrupted`` by another) is not counted: its usage is unknown.

Quota. With ``CHAT_DAILY_TOKEN_QUOTA`` (or a user's own ``UserQuota``) a user whose prompt and
completion tokens today (UTC) are at or over it gets Busy ``quota_exceeded`` before a reply is
started: before the upstream is called and before any row is written. A reply already running
finishes, so a user can end a day somewhat over the quota.

What a reply's start costs here: with no site quota and no override for the user, nothing but
a look into a set in memory (which users have an override, loaded by one query and refreshed
in the background every ``CHAT_QUOTA_OVERRIDES_CACHE_SECONDS``); otherwise one read by primary
and unique keys (the user's override and today's total), on the event loop on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from django.utils import timezone

from . import asyncdb, statements
from .errors import Busy
from .models import UsageDay, UserQuota

if TYPE_CHECKING:
    from django.db.models import Model

    from .providers import ChatMessage

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
"""The prompt's estimate: this many characters per token."""
MAX_USAGE_DAYS = 90
"""The most days ``GET /api/usage`` reports."""


# -- counting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyUsage:
    """What one reply adds to its user's day."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_tokens: int = 0
    """How many of the two counts are estimates."""
    estimated: bool = False


def reply_usage(
    *,
    reported_prompt_tokens: int | None,
    reported_completion_tokens: int | None,
    prompt_chars: int,
    deltas: int,
) -> ReplyUsage:
    """The upstream's counts, each estimated where it gave none (see the module's docstring)."""
    reported_prompt_tokens = _count(reported_prompt_tokens)
    reported_completion_tokens = _count(reported_completion_tokens)
    if reported_prompt_tokens is None and reported_completion_tokens is None and not deltas:
        return ReplyUsage()
    estimated = 0
    prompt = reported_prompt_tokens
    if prompt is None:
        prompt = math.ceil(prompt_chars / CHARS_PER_TOKEN)
        estimated += prompt
    completion = reported_completion_tokens
    if completion is None:
        completion = deltas
        estimated += completion
    unreported = reported_prompt_tokens is None or reported_completion_tokens is None
    return ReplyUsage(prompt, completion, estimated, unreported)


MAX_REPORTED = 2**31 - 1
"""The largest count taken from an upstream (the reply's own columns hold no more)."""


def _count(reported: object) -> int | None:
    """A count the upstream reported, or None for one that is not a count (estimated then)."""
    if isinstance(reported, int) and not isinstance(reported, bool) and reported >= 0:
        return min(reported, MAX_REPORTED)
    return None


def prompt_chars(prompt: Iterable[ChatMessage]) -> int:
    """The characters of a prompt's messages (once per reply)."""
    return sum(len(message["content"]) for message in prompt)


# -- days ----------------------------------------------------------------------------------


def utc_day(now: datetime) -> date:
    return now.astimezone(UTC).date()


def next_reset(now: datetime) -> datetime:
    """When the day's usage starts again from nothing: the next midnight UTC."""
    return datetime.combine(utc_day(now) + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


def iso_utc(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- the quota -----------------------------------------------------------------------------


class QuotaOverrides:
    """Which users have a quota of their own, kept in memory so that, with no site quota, a
    reply of a user without one costs no query. Loaded by the first request that asks, then
    refreshed in the background once older than ``max_age`` while requests go on with the set
    they have. An override saved or deleted in this process (the admin) counts at once; one
    saved through another process, within ``max_age``."""

    def __init__(
        self,
        *,
        load: Callable[[], Awaitable[set[int]]],
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.load = load
        self.max_age = max_age
        self.clock = clock
        self.user_ids: frozenset[int] | None = None
        self._expires = 0.0
        self._loading: asyncio.Task[None] | None = None
        self._edits: list[tuple[int, bool]] = []
        """Overrides saved or deleted here while a load runs: applied to what it read."""

    async def ahas(self, user_id: int) -> bool:
        if self.user_ids is None or self.clock() >= self._expires:
            if self._loading is None or self._loading.done():
                self._edits = []
                # A fresh context: nothing of the request that happened to start it.
                self._loading = asyncio.get_running_loop().create_task(
                    self._aload(), context=contextvars.Context()
                )
            if self.user_ids is None:
                await asyncio.shield(self._loading)
        user_ids = self.user_ids
        if user_ids is None:  # a failed first load raised above
            raise RuntimeError("the users with a quota of their own were not loaded")
        return user_id in user_ids

    async def _aload(self) -> None:
        try:
            loaded = set(await self.load())
        except Exception:
            if self.user_ids is None:
                raise
            logger.warning("the users with a quota of their own could not be read", exc_info=True)
            self._expires = self.clock() + min(self.max_age, LOAD_RETRY_SECONDS)
            return
        for user_id, present in self._edits:
            (loaded.add if present else loaded.discard)(user_id)
        self.user_ids, self._expires = frozenset(loaded), self.clock() + self.max_age

    def edited(self, user_id: int, *, present: bool) -> None:
        """An override of ``user_id`` was saved (``present``) or deleted in this process.
        Called from any thread: the set is replaced, never changed in place."""
        if self._loading is not None and not self._loading.done():
            self._edits.append((user_id, present))
        if self.user_ids is not None:
            edited = self.user_ids | {user_id} if present else self.user_ids - {user_id}
            self.user_ids = frozenset(edited)


LOAD_RETRY_SECONDS = 5.0
"""After a failed refresh, the set in hand is used this long before the next try."""


@cache
def quota_overrides() -> QuotaOverrides:
    return QuotaOverrides(
        load=_aoverride_user_ids, max_age=settings.CHAT_QUOTA_OVERRIDES_CACHE_SECONDS
    )


@receiver(post_save, sender=UserQuota)
def _override_saved(sender: type[UserQuota], instance: UserQuota, **kwargs: Any) -> None:
    quota_overrides().edited(instance.user_id, present=True)


@receiver(post_delete, sender=UserQuota)
def _override_deleted(sender: type[UserQuota], instance: UserQuota, **kwargs: Any) -> None:
    quota_overrides().edited(instance.user_id, present=False)


@dataclass(frozen=True)
class QuotaStanding:
    """A user's quota today: ``quota`` None means no limit."""

    quota: int | None
    source: str | None
    """``user`` (an override), ``site`` (CHAT_DAILY_TOKEN_QUOTA) or None."""
    used: int
    resets_at: datetime

    @property
    def exceeded(self) -> bool:
        return self.quota is not None and self.used >= self.quota

    @property
    def remaining(self) -> int | None:
        return None if self.quota is None else max(0, self.quota - self.used)


def quota_standing(*, override: int | None, used: int, now: datetime) -> QuotaStanding:
    site = settings.CHAT_DAILY_TOKEN_QUOTA
    source: str | None
    if override is not None:
        quota, source = (override or None), "user"
    else:
        quota, source = (site or None), ("site" if site else None)
    return QuotaStanding(quota, source, used, next_reset(now))


async def quota_acheck(*, user: User) -> None:
    """Busy ``quota_exceeded`` (with the reset time) if the user has used their tokens for
    today; free with no quota in force for them (see the module's docstring)."""
    if not settings.CHAT_DAILY_TOKEN_QUOTA and not await quota_overrides().ahas(user.pk):
        return
    now = timezone.now()
    override, used = await _aoverride_and_used(user.pk, utc_day(now))
    standing = quota_standing(override=override, used=used, now=now)
    if standing.exceeded:
        raise quota_exceeded(standing, now)


def quota_exceeded(standing: QuotaStanding, now: datetime) -> Busy:
    resets_at = iso_utc(standing.resets_at)
    return Busy(
        "quota_exceeded",
        f"You have used {standing.used} tokens today, and your daily quota is "
        f"{standing.quota}. It resets at midnight UTC ({resets_at}).",
        retry_after=max(1, math.ceil((standing.resets_at - now).total_seconds())),
        details={"quota": standing.quota, "used": standing.used, "resets_at": resets_at},
    )


# -- reading usage -------------------------------------------------------------------------


@dataclass
class UsageTotals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replies: int = 0
    estimated_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, row: UsageDay) -> None:
        self.prompt_tokens += row.prompt_tokens
        self.completion_tokens += row.completion_tokens
        self.replies += row.replies
        self.estimated_tokens += row.estimated_tokens


@dataclass
class DayUsage:
    day: date
    totals: UsageTotals = field(default_factory=UsageTotals)
    models: dict[str, UsageTotals] = field(default_factory=dict)


@dataclass(frozen=True)
class UsageSummary:
    standing: QuotaStanding
    days: list[DayUsage]
    """Newest first, today first, a day with no replies included."""


async def usage_asummary(*, user: User, days: int) -> UsageSummary:
    """The user's usage over the last ``days`` UTC days (today included) per day and model,
    and where they stand against their quota today."""
    now = timezone.now()
    today = utc_day(now)
    by_day = {today - timedelta(days=n): DayUsage(today - timedelta(days=n)) for n in range(days)}
    rows = UsageDay.objects.filter(user=user, day__gt=today - timedelta(days=days))
    async for row in rows.order_by("day", "model"):
        day = by_day.get(row.day)
        if day is None:  # a day after today, with a clock set back
            continue
        day.totals.add(row)
        day.models.setdefault(row.model, UsageTotals()).add(row)
    overrides = UserQuota.objects.filter(user=user).values_list("daily_tokens", flat=True)
    override = await overrides.afirst()
    standing = quota_standing(override=override, used=by_day[today].totals.total_tokens, now=now)
    return UsageSummary(standing, list(by_day.values()))


# -- statements ----------------------------------------------------------------------------


@cache
def _override_and_used_sql() -> str:
    quote = connection.ops.quote_name

    def column(model: type[Model], name: str) -> str:
        return quote(statements.concrete_field(model, name).column)

    return (
        f"SELECT (SELECT {column(UserQuota, 'daily_tokens')} "
        f"FROM {quote(UserQuota._meta.db_table)} WHERE {column(UserQuota, 'user')} = %s), "
        f"(SELECT COALESCE(SUM({column(UsageDay, 'prompt_tokens')} + "
        f"{column(UsageDay, 'completion_tokens')}), 0) "
        f"FROM {quote(UsageDay._meta.db_table)} "
        f"WHERE {column(UsageDay, 'user')} = %s AND {column(UsageDay, 'day')} = %s)"
    )


async def _aoverride_and_used(user_id: int, day: date) -> tuple[int | None, int]:
    """The user's own quota (None: none) and their tokens on ``day``, in one statement."""
    if asyncdb.available():
        # psycopg adapts the date itself: nothing touches Django's connection on the loop.
        params = [user_id, user_id, day]
        [(override, used)] = await asyncdb.fetchall(_override_and_used_sql(), params)
    else:
        override, used = await _override_and_used_in_thread(user_id, day)
    return (None if override is None else int(override)), int(used)


@sync_to_async
def _override_and_used_in_thread(user_id: int, day: date) -> tuple[Any, Any]:
    """The raw row (the caller makes its numbers ints)."""
    with connection.cursor() as cursor:
        cursor.execute(
            _override_and_used_sql(),
            [user_id, user_id, connection.ops.adapt_datefield_value(day)],
        )
        row: tuple[Any, Any] = cursor.fetchone()
        return row


@cache
def _override_user_ids_sql() -> str:
    quote = connection.ops.quote_name
    user = quote(UserQuota._meta.get_field("user").column)
    return f"SELECT {user} FROM {quote(UserQuota._meta.db_table)}"


async def _aoverride_user_ids() -> set[int]:
    if asyncdb.available():
        return {user_id for (user_id,) in await asyncdb.fetchall(_override_user_ids_sql(), [])}
    return await _override_user_ids_in_thread()


@sync_to_async(thread_sensitive=False)
def _override_user_ids_in_thread() -> set[int]:
    try:
        with connection.cursor() as cursor:
            cursor.execute(_override_user_ids_sql())
            return {user_id for (user_id,) in cursor.fetchall()}
    finally:
        connection.close()
