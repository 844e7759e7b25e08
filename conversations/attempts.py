"""Sign-in and sign-up attempts, limited per client IP and per username (django-ratelimit).

Only POSTs count: showing a form is free. The counters live in Django's cache, so in Redis
(shared by every worker) when REDIS_URL is set and in this process's memory otherwise. Over a
limit the view does not run at all (a right password sent then signs nobody in); the visitor
gets the plain 429 page with Retry-After instead of django-ratelimit's 403. When Redis cannot be
reached the attempt is refused too (503, logged), as the API's limits do: taking Redis down must
not lift the limits.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import render
from django.utils.cache import add_never_cache_headers
from django_ratelimit.core import get_usage
from django_ratelimit.decorators import ratelimit
from django_ratelimit.exceptions import Ratelimited
from redis.exceptions import RedisError

from chatsite import metrics

from .limits import Rate, client_ip

logger = logging.getLogger(__name__)

# One IPv6 host usually holds a whole /64: counting single addresses would let it rotate freely
# (django-ratelimit's own "ip" key masks the same way).
IPV6_PREFIX = 64

View = Callable[..., HttpResponseBase]


def ip_key(group: str, request: HttpRequest) -> str:
    """The project's client IP (X-Forwarded-For only from CHAT_TRUSTED_PROXIES); IPv6 by /64."""
    address = client_ip(request)
    if ":" in address:
        try:
            return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False))
        except ValueError:
            pass
    return address


def username_key(group: str, request: HttpRequest) -> str:
    """The POSTed username as Django's forms read it (NFKC, stripped), case-folded: 'Frank',
    ' frank' and 'ｆｒａｎｋ' all count against the same username."""
    username = unicodedata.normalize("NFKC", request.POST.get("username", ""))
    return username.strip().casefold()


@dataclass(frozen=True)
class AttemptLimit:
    """One counter: a group of views, what to count by, and the setting holding the rate."""

    group: str
    key: Callable[[str, HttpRequest], str]
    setting: str

    def rate(self, group: str, request: HttpRequest) -> tuple[int, int]:
        """The rate as django-ratelimit's ``(count, seconds)``, in the project's rate syntax."""
        rate = Rate.parse(getattr(settings, self.setting))
        return rate.limit, rate.period


SIGN_IN = (
    AttemptLimit("sign-in:ip", ip_key, "CHAT_SIGNIN_RATE_PER_IP"),
    AttemptLimit("sign-in:username", username_key, "CHAT_SIGNIN_RATE_PER_USERNAME"),
)
SIGN_UP = (AttemptLimit("sign-up:ip", ip_key, "CHAT_SIGNUP_RATE_PER_IP"),)
RATE_SETTINGS = tuple(limit.setting for limit in SIGN_IN + SIGN_UP)


def attempts_limited(limits: tuple[AttemptLimit, ...]) -> Callable[[View], View]:
    """Decorate a form view so that its POSTs count against every limit in ``limits``; past
    any of them the view is not run and the visitor gets the 429 page."""

    def decorator(view: View) -> View:
        counted = view
        for limit in reversed(limits):
            counted = ratelimit(
                group=limit.group, key=limit.key, rate=limit.rate, method=["POST"], block=True
            )(counted)

        @wraps(view)
        def limited_view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                response: HttpResponseBase = counted(request, *args, **kwargs)
                return response
            except Ratelimited:
                retry_after = seconds_until_allowed(request, limits)
                return too_many_attempts(request, retry_after=retry_after)
            except RedisError:  # only the counters use the cache on these views
                logger.error("sign-in attempts cannot be counted: Redis failed", exc_info=True)
                return attempts_uncountable(request)

        return limited_view

    return decorator


def seconds_until_allowed(request: HttpRequest, limits: tuple[AttemptLimit, ...]) -> int:
    """When the last of the limits this request is over lets it through again (at least 1 s)."""
    waits = [1]
    for limit in limits:
        usage = get_usage(
            request, group=limit.group, key=limit.key, rate=limit.rate, method=["POST"]
        )
        if usage is not None and usage["should_limit"]:
            waits.append(usage["time_left"])
    return max(waits)


def wait_text(seconds: int) -> str:
    """``seconds`` in words, rounded up: "45 seconds", "5 minutes", "3 hours"."""
    if seconds < 60:
        count, unit = seconds, "second"
    elif seconds < 2 * 3600:
        count, unit = math.ceil(seconds / 60), "minute"
    else:
        count, unit = math.ceil(seconds / 3600), "hour"
    return f"{count} {unit}{'' if count == 1 else 's'}"


def too_many_attempts(request: HttpRequest, *, retry_after: int) -> HttpResponse:
    metrics.request_refused(status=429, reason="too_many_attempts")
    response = render(request, "429.html", {"wait": wait_text(retry_after)}, status=429)
    response["Retry-After"] = str(retry_after)
    add_never_cache_headers(response)
    return response


def attempts_uncountable(request: HttpRequest) -> HttpResponse:
    metrics.request_refused(status=503, reason="attempts_uncountable")
    reason = "The site cannot check sign-in attempts right now, so this one was not tried."
    response = render(request, "503.html", {"reason": reason}, status=503)
    response["Retry-After"] = "5"
    add_never_cache_headers(response)
    return response
