"""Metrics for Prometheus: the one owner of every metric's definition, the small functions the
rest of the site records with, and ``GET /metrics``.

Recording costs the relay nothing per token: a reply is counted once when it ends (its status,
tokens, time to first token and duration), a stream response once when it opens and once when
its request has been handled, a stream slot once when it is granted or refused. What is read
only when scraped (the database and Redis connections this process holds) is collected then,
from the pools' own counts, without any I/O.

With several workers (``python -m chatsite.serve --workers N``), the launcher gives them a
directory (``PROMETHEUS_MULTIPROC_DIR``) where each keeps its values in memory-mapped files
(prometheus_client's multi-process mode), and whichever worker answers a scrape adds them all
up; the connection gauges are the answering worker's own, labelled with its ``pid``.

``CHAT_METRICS=0`` records nothing and ``/metrics`` answers 404. Otherwise it answers clients in
``CHAT_METRICS_ALLOWED`` (the client's address as ``CHAT_TRUSTED_PROXIES`` reveal it; a request
forwarded by a proxy the site does not trust counts as from nowhere) and anyone sending
``Authorization: Bearer <CHAT_METRICS_TOKEN>``; others get 403. Like ``/healthz``, it needs no
session, counts against no limit and is not logged when it succeeds.

Private attributes read when scraped (each guarded by a test in ``tests/test_metrics.py``; a
missing one leaves its gauge out rather than failing the scrape): Django's PostgreSQL pools
(``DatabaseWrapper._connection_pools``), and the asyncio Redis pool's
``_available_connections`` and ``_in_use_connections``.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from collections.abc import Iterable
from functools import cache

import prometheus_client
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from chatsite.lifecycle import run_after_request
from conversations import asyncdb
from conversations.errors import error_response
from conversations.limits import client_ip, is_trusted_proxy
from conversations.redis_client import redis_client

ENABLED: bool = settings.CHAT_METRICS

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
"""Set (by the launcher, for several workers): prometheus_client's multi-process mode, which it
chose when it was imported, from this same variable."""
if MULTIPROCESS_DIR is not None:
    if not MULTIPROCESS_DIR.strip():
        raise ImproperlyConfigured("PROMETHEUS_MULTIPROC_DIR is set but empty: name a directory")
    # A management command run before the server (make serve) may come first.
    os.makedirs(MULTIPROCESS_DIR, exist_ok=True)

# Counters without their `_created` series: one series each, as in multi-process mode.
prometheus_client.disable_created_metrics()

STREAMS_OPEN = Gauge(
    "chatsite_streams_open",
    "Stream responses (SSE) open now.",
    multiprocess_mode="livesum",
)
REPLIES = Counter("chatsite_replies", "Replies ended, by final status.", ["status"])
for _status in ("complete", "cancelled", "error", "interrupted"):  # shown from the start, at 0
    REPLIES.labels(_status)
TIME_TO_FIRST_TOKEN = Histogram(
    "chatsite_reply_ttft_seconds",
    "Time from sending a reply's request upstream to its first token.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
REPLY_DURATION = Histogram(
    "chatsite_reply_duration_seconds",
    "Time from sending a reply's request upstream to its end.",
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
)
TOKENS_RELAYED = Counter(
    "chatsite_tokens_relayed", "Tokens (the upstream's text deltas) relayed in replies."
)
UPSTREAM_ERRORS = Counter(
    "chatsite_upstream_errors", "Replies ended by an upstream failure, by its code.", ["code"]
)
REQUESTS_REFUSED = Counter(
    "chatsite_requests_refused",
    "Requests refused for a limit (429) or a service out of reach (503), by status and reason.",
    ["status", "reason"],
)
STREAM_QUEUE_WAIT = Histogram(
    "chatsite_stream_queue_wait_seconds",
    "Time a new reply waited for one of its user's stream slots (granted or refused).",
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30),
)
ATTACHES = Counter(
    "chatsite_reply_attaches",
    "Clients joining a reply after the one that started it: kind is resume (Last-Event-ID), "
    "attach (a message's stream) or repeat (a repeated Idempotency-Key); source is where the "
    "reply was found: here, elsewhere (another process) or saved.",
    ["kind", "source"],
)


# -- recording (each a no-op with CHAT_METRICS=0) ---------------------------------------------


def stream_track() -> None:
    """Count a stream response as open until its request has been handled to the end, however
    it ended (``chatsite.lifecycle``). Outside the site's ASGI handler nothing is counted."""
    if ENABLED and run_after_request(_stream_closed):
        STREAMS_OPEN.inc()


async def _stream_closed() -> None:
    STREAMS_OPEN.dec()


def reply_ended(
    *, status: str, ttft_seconds: float | None, duration_seconds: float, tokens: int
) -> None:
    """Once per reply, when it has ended and been saved (or could not be)."""
    if not ENABLED:
        return
    REPLIES.labels(status).inc()
    if ttft_seconds is not None:
        TIME_TO_FIRST_TOKEN.observe(ttft_seconds)
    REPLY_DURATION.observe(duration_seconds)
    if tokens:
        TOKENS_RELAYED.inc(tokens)


def upstream_failed(*, code: str) -> None:
    if ENABLED:
        UPSTREAM_ERRORS.labels(code).inc()


def request_refused(*, status: int, reason: str) -> None:
    """A 429 (a limit) or 503 (something the service needs is out of reach); ``reason`` is
    the error code the client got."""
    if ENABLED:
        REQUESTS_REFUSED.labels(str(status), reason).inc()


def stream_slot_waited(*, seconds: float) -> None:
    if ENABLED:
        STREAM_QUEUE_WAIT.observe(seconds)


def reply_attached(*, kind: str, source: str) -> None:
    if ENABLED:
        ATTACHES.labels(kind, source).inc()


# -- read when scraped ----------------------------------------------------------------------


class ConnectionsCollector(Collector):
    """The database and Redis connections this process holds, read from the pools' own
    counts when scraped: no query, no I/O, nothing opened."""

    def __init__(self, *, with_pid: bool) -> None:
        self.labels = ["pool", "pid"] if with_pid else ["pool"]
        self.pid = [str(os.getpid())] if with_pid else []

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return self._families()

    def _families(self) -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "chatsite_db_connections",
                "PostgreSQL connections this process holds open, by pool (django: Django's, "
                "for the ORM; async: the event loop's, for the token lookup).",
                labels=self.labels,
            ),
            GaugeMetricFamily(
                "chatsite_db_connections_idle",
                "Of those, the ones idle in their pool.",
                labels=self.labels,
            ),
            GaugeMetricFamily(
                "chatsite_db_connections_waiting",
                "Requests waiting for a connection of the pool.",
                labels=self.labels,
            ),
            GaugeMetricFamily(
                "chatsite_redis_connections",
                "Redis connections of this process's client (limits, stops, replies).",
                labels=self.labels,
            ),
            GaugeMetricFamily(
                "chatsite_redis_connections_idle",
                "Of those, the ones idle in the pool.",
                labels=self.labels,
            ),
        ]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        opened, idle, waiting, redis_open, redis_idle = families = self._families()
        for name, stats in database_pool_stats():
            labels = [name, *self.pid]
            opened.add_metric(labels, stats.get("pool_size", 0))
            idle.add_metric(labels, stats.get("pool_available", 0))
            waiting.add_metric(labels, stats.get("requests_waiting", 0))
        counts = redis_pool_counts()
        if counts is not None:
            labels = ["client", *self.pid]
            redis_open.add_metric(labels, counts[0] + counts[1])
            redis_idle.add_metric(labels, counts[0])
        return families


def database_pool_stats() -> list[tuple[str, dict[str, int]]]:
    """psycopg_pool's own figures for Django's pool and the async pools (zeros for a pool not
    opened yet); none on a database without pools (SQLite)."""
    found: list[tuple[str, dict[str, int]]] = []
    wrapper = connections["default"]
    if wrapper.vendor != "postgresql" or not wrapper.settings_dict["OPTIONS"].get("pool"):
        return found
    django_pool = getattr(type(wrapper), "_connection_pools", {}).get("default")
    found.append(("django", django_pool.get_stats() if django_pool is not None else {}))
    found.append(("async", asyncdb.pools_stats()))
    return found


def redis_pool_counts() -> tuple[int, int] | None:
    """(idle, in use) connections of the process's Redis client; None without Redis, or if
    redis-py no longer keeps them where this looks."""
    if not settings.REDIS_URL:
        return None
    pool = redis_client().connection_pool
    available = getattr(pool, "_available_connections", None)
    in_use = getattr(pool, "_in_use_connections", None)
    if available is None or in_use is None:
        return None
    return len(available), len(in_use)


@cache
def registries() -> tuple[CollectorRegistry, CollectorRegistry | None]:
    """What a scrape reads: in one process, the default registry (these metrics, the
    process's own and the connections); with several, every worker's files (read in a thread:
    they are files), then this worker's connections."""
    if MULTIPROCESS_DIR is None:
        REGISTRY.register(ConnectionsCollector(with_pid=False))
        return REGISTRY, None
    shared = CollectorRegistry()
    multiprocess.MultiProcessCollector(shared)
    local = CollectorRegistry()
    local.register(ConnectionsCollector(with_pid=True))
    return shared, local


async def aexposition() -> bytes:
    shared, local = registries()
    if local is None:
        return generate_latest(shared)
    text = await sync_to_async(generate_latest, thread_sensitive=False)(shared)
    return text + generate_latest(local)


async def aprocess_stopping() -> None:
    """A worker that stops takes its open-streams count with it (multi-process mode); what it
    counted stays in the sums. A worker killed outright leaves its count behind until the
    server restarts."""
    if MULTIPROCESS_DIR is not None:
        multiprocess.mark_process_dead(os.getpid(), MULTIPROCESS_DIR)


# -- GET /metrics -----------------------------------------------------------------------------


async def metrics(request: HttpRequest) -> HttpResponse:
    if not ENABLED:
        return error_response(404, "not_found", "No such endpoint.")
    if not may_read(request):
        return error_response(
            403,
            "forbidden",
            "Metrics are served to the networks in CHAT_METRICS_ALLOWED, or with the metrics "
            "token.",
        )
    return HttpResponse(await aexposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)


def may_read(request: HttpRequest) -> bool:
    return has_token(request) or from_allowed_network(request)


def has_token(request: HttpRequest) -> bool:
    expected = settings.CHAT_METRICS_TOKEN
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if not expected or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def from_allowed_network(request: HttpRequest) -> bool:
    """The client, as ``CHAT_TRUSTED_PROXIES`` reveal it, is in ``CHAT_METRICS_ALLOWED``. A
    request that another proxy forwarded (``X-Forwarded-For`` from an address not trusted)
    is not: behind a proxy on the same machine it would come from loopback, whoever sent it."""
    if "HTTP_X_FORWARDED_FOR" in request.META and not is_trusted_proxy(
        request.META.get("REMOTE_ADDR", "")
    ):
        return False
    try:
        address = ipaddress.ip_address(client_ip(request))
    except ValueError:
        return False
    return any(address in network for network in allowed_networks())


@cache
def allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(
        ipaddress.ip_network(network, strict=False) for network in settings.CHAT_METRICS_ALLOWED
    )
