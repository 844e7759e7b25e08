"""Read queries for the staff dashboard: how the replies of a recent period went, from the
assistant rows of ``Message`` (status, error code, time to first token, duration, tokens).

Four aggregate queries per period (replies by bucket and status; the figures; errors by code;
top users), whatever the number of rows. They find the period's rows by ``created_at`` (the
``message_recent`` index); no index of their own, which every saved message would pay for. With
a million messages, a quarter of them replies of the last 30 days, the page takes about 2 s on
PostgreSQL, mostly reading the 30 days. Percentiles are PostgreSQL's ``percentile_cont``;
other databases (SQLite, for development) get the same interpolation in Python over the
period's values, one more query.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import tzinfo as tzinfo_type
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import (
    Aggregate,
    Count,
    Expression,
    F,
    FloatField,
    IntegerField,
    Q,
    QuerySet,
    Sum,
)
from django.db.models.functions import Coalesce, TruncDay, TruncHour
from django.utils import timezone

from .models import Message

TOP_USERS = 10
UPSTREAM_ERROR_PREFIX = "upstream_"
"""Error codes of failures the model service caused (``providers.openai_compatible``)."""
STATUSES = [status for status, _ in Message.Status.choices]


class PercentileCont(Aggregate):
    """PostgreSQL's ``percentile_cont(fraction) WITHIN GROUP (ORDER BY expression)``."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: str | Expression, *, fraction: float, **extra: Any) -> None:
        super().__init__(expression, fraction=repr(float(fraction)), **extra)


def percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """``percentile_cont`` in Python: linear interpolation between the two nearest ranks of
    ``ordered`` (sorted ascending); None when it is empty."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Bucket:
    """The replies started in one hour or one day, by status."""

    start: datetime
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class TopUser:
    username: str
    tokens: int
    replies: int


@dataclass(frozen=True)
class ReplyPeriod:
    """How the replies started since ``since`` went."""

    label: str
    unit: str
    """``hour`` or ``day``: the width of each bucket."""
    since: datetime
    buckets: list[Bucket]
    ttft_p50_ms: float | None = None
    ttft_p95_ms: float | None = None
    tokens_per_second: float | None = None
    """Completion tokens per second of sending (from the first token to the end), over every
    reply with a token count, a time to first token and a duration."""
    completion_tokens: int = 0
    upstream_errors: list[tuple[str, int]] = field(default_factory=list)
    top_users: list[TopUser] = field(default_factory=list)

    @property
    def replies(self) -> int:
        return sum(bucket.total for bucket in self.buckets)

    def status_totals(self) -> dict[str, int]:
        return {status: sum(b.counts[status] for b in self.buckets) for status in STATUSES}


def replies_since(since: datetime) -> QuerySet[Message]:
    return Message.objects.filter(role=Message.Role.ASSISTANT, created_at__gte=since).order_by()


def reply_dashboard(*, now: datetime | None = None) -> list[ReplyPeriod]:
    """The last 24 hours by hour and the last 30 days by day (in the site's time zone), each
    bucket whole: the current hour or day, and the 23 hours or 29 days before it."""
    now = now or timezone.now()
    local = timezone.localtime(now)
    this_hour = local.replace(minute=0, second=0, microsecond=0)
    today = timezone.make_aware(datetime(local.year, local.month, local.day), local.tzinfo)
    return [
        reply_period(
            label="Last 24 hours", unit="hour", starts=_hours(this_hour, 24), tzinfo=local.tzinfo
        ),
        reply_period(
            label="Last 30 days", unit="day", starts=_days(today, 30), tzinfo=local.tzinfo
        ),
    ]


def _hours(last: datetime, count: int) -> list[datetime]:
    """``count`` hour starts ending with ``last`` (exact hours apart, across DST changes)."""
    utc = last.astimezone(UTC)
    return [timezone.localtime(utc - timedelta(hours=n), last.tzinfo) for n in range(count)][::-1]


def _days(last: datetime, count: int) -> list[datetime]:
    """``count`` local midnights ending with ``last``."""
    days = [last.date() - timedelta(days=n) for n in range(count)][::-1]
    return [timezone.make_aware(datetime(d.year, d.month, d.day), last.tzinfo) for d in days]


def reply_period(
    *, label: str, unit: str, starts: list[datetime], tzinfo: tzinfo_type | None
) -> ReplyPeriod:
    """The figures of the replies started from ``starts[0]`` on, bucketed at ``starts``."""
    since = starts[0]
    replies = replies_since(since)
    trunc = TruncHour if unit == "hour" else TruncDay
    counts = {start: dict.fromkeys(STATUSES, 0) for start in starts}
    rows = (
        replies.annotate(bucket=trunc("created_at", tzinfo=tzinfo))
        .values("bucket", "status")
        .annotate(n=Count("id"))
    )
    for row in rows:
        bucket = counts.get(row["bucket"])
        if bucket is not None:  # a reply dated in the future (a clock step) is left out
            bucket[row["status"]] = row["n"]
    sending = Q(
        completion_tokens__isnull=False, ttft_ms__isnull=False, duration_ms__gt=F("ttft_ms")
    )
    on_postgresql = connection.vendor == "postgresql"
    figures = replies.aggregate(
        all_completion_tokens=Coalesce(Sum("completion_tokens"), 0),
        sending_tokens=Sum("completion_tokens", filter=sending),
        sending_ms=Sum(
            F("duration_ms") - F("ttft_ms"), filter=sending, output_field=IntegerField()
        ),
        # percentile_cont leaves out the rows without a time to first token.
        **(
            {
                "p50": PercentileCont("ttft_ms", fraction=0.5),
                "p95": PercentileCont("ttft_ms", fraction=0.95),
            }
            if on_postgresql
            else {}
        ),
    )
    if on_postgresql:
        p50, p95 = figures["p50"], figures["p95"]
    else:
        ordered = [
            ttft
            for ttft in replies.filter(ttft_ms__isnull=False)
            .order_by("ttft_ms")
            .values_list("ttft_ms", flat=True)
            if ttft is not None
        ]
        p50, p95 = percentile(ordered, 0.5), percentile(ordered, 0.95)
    tokens_per_second = None
    if figures["sending_ms"]:
        tokens_per_second = figures["sending_tokens"] * 1000 / figures["sending_ms"]
    return ReplyPeriod(
        label=label,
        unit=unit,
        since=since,
        buckets=[Bucket(start, by_status) for start, by_status in counts.items()],
        ttft_p50_ms=p50,
        ttft_p95_ms=p95,
        tokens_per_second=tokens_per_second,
        completion_tokens=figures["all_completion_tokens"],
        upstream_errors=upstream_errors(replies),
        top_users=top_users(replies),
    )


def upstream_errors(replies: QuerySet[Message]) -> list[tuple[str, int]]:
    """Replies that failed because of the model service, by error code, most first."""
    rows = (
        replies.filter(status=Message.Status.ERROR, error_code__startswith=UPSTREAM_ERROR_PREFIX)
        .values("error_code")
        .annotate(n=Count("id"))
        .order_by("-n", "error_code")
    )
    return [(row["error_code"], row["n"]) for row in rows]


def top_users(replies: QuerySet[Message], *, limit: int = TOP_USERS) -> list[TopUser]:
    """The users whose replies used the most tokens (prompt and completion, where counted)."""
    tokens = Coalesce(F("prompt_tokens"), 0) + Coalesce(F("completion_tokens"), 0)
    name = f"conversation__owner__{get_user_model().USERNAME_FIELD}"
    rows = (
        replies.values("conversation__owner_id", name)
        .annotate(tokens=Sum(tokens, output_field=IntegerField()), replies=Count("id"))
        .filter(tokens__gt=0)
        .order_by("-tokens", name)[:limit]
    )
    return [TopUser(row[name], row["tokens"], row["replies"]) for row in rows]
