"""Deploy checks that find Django's middlewares as the subclasses chatsite uses.

Django's security checks test ``"django.middleware.security.SecurityMiddleware" in
settings.MIDDLEWARE`` (and the same for the CSRF and X-Frame-Options middlewares). MIDDLEWARE
lists subclasses of them (chatsite.middleware), so Django reported security.W001-W003 falsely and
then skipped every check that depends on those middlewares: HSTS, SSL redirect, nosniff,
Referrer-Policy, X-Frame-Options DENY, a secure CSRF cookie. Settings silence exactly W001-W003;
here a missing middleware is reported by class, and the skipped checks are run again with
Django's own warnings (``django.core.checks.security``), so their ids and words are Django's.
With the stock middlewares (CHAT_FAST_PATH=0) Django finds them by path and runs its own checks;
these then stay silent, so that no warning is given twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Tags, register
from django.core.checks import Warning as CheckWarning
from django.core.checks.security import base, csrf
from django.middleware import clickjacking, security
from django.middleware import csrf as csrf_middleware
from django.utils.module_loading import import_string

SECURITY_PATH = "django.middleware.security.SecurityMiddleware"
XFRAME_PATH = "django.middleware.clickjacking.XFrameOptionsMiddleware"
CSRF_PATH = "django.middleware.csrf.CsrfViewMiddleware"

W001 = CheckWarning(
    f"You have neither '{SECURITY_PATH}' nor a subclass of it in your MIDDLEWARE, so the "
    "SECURE_HSTS_SECONDS, SECURE_CONTENT_TYPE_NOSNIFF, SECURE_REFERRER_POLICY, "
    "SECURE_CROSS_ORIGIN_OPENER_POLICY, and SECURE_SSL_REDIRECT settings will have no effect.",
    id="chatsite.W001",
)
W002 = CheckWarning(
    f"You have neither '{XFRAME_PATH}' nor a subclass of it in your MIDDLEWARE, so your pages "
    "will not be served with an 'x-frame-options' header. Unless there is a good reason for "
    "your site to be served in a frame, you should consider enabling this header to help "
    "prevent clickjacking attacks.",
    id="chatsite.W002",
)
W003 = CheckWarning(
    f"You have neither '{CSRF_PATH}' nor a subclass of it in your MIDDLEWARE, so Django's "
    "built-in cross-site request forgery protection is off. Enabling the middleware is the "
    "safest approach to ensure you don't leave any holes.",
    id="chatsite.W003",
)


def django_checks_it(path: str) -> bool:
    """Whether Django's own deploy checks find the middleware (they look for its path)."""
    return path in settings.MIDDLEWARE


def middleware_has(cls: type) -> bool:
    """Whether MIDDLEWARE lists ``cls`` or a subclass of it (function middlewares are not)."""
    for path in settings.MIDDLEWARE:
        try:
            candidate = import_string(path)
        except ImportError:
            continue  # Django reports a middleware that cannot be imported as it loads it
        if isinstance(candidate, type) and issubclass(candidate, cls):
            return True
    return False


@register(Tags.security, deploy=True)
def check_security_middleware(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """security.W001 by class, then what Django runs only when it finds the middleware."""
    if django_checks_it(SECURITY_PATH):
        return []
    if not middleware_has(security.SecurityMiddleware):
        return [W001]
    messages: list[CheckMessage] = []
    if not settings.SECURE_HSTS_SECONDS:
        messages.append(base.W004)
    else:
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS is not True:
            messages.append(base.W005)
        if settings.SECURE_HSTS_PRELOAD is not True:
            messages.append(base.W021)
    if settings.SECURE_CONTENT_TYPE_NOSNIFF is not True:
        messages.append(base.W006)
    if settings.SECURE_SSL_REDIRECT is not True:
        messages.append(base.W008)
    messages.extend(referrer_policy_messages())
    coop = settings.SECURE_CROSS_ORIGIN_OPENER_POLICY
    if coop is not None and coop not in base.CROSS_ORIGIN_OPENER_POLICY_VALUES:
        messages.append(base.E024)
    return messages


def referrer_policy_messages() -> list[CheckMessage]:
    policy = settings.SECURE_REFERRER_POLICY
    if policy is None:
        return [base.W022]
    if isinstance(policy, str):
        values = {value.strip() for value in policy.split(",")}
    else:
        values = set(policy)
    return [] if values <= base.REFERRER_POLICY_VALUES else [base.E023]


@register(Tags.security, deploy=True)
def check_xframe_options_middleware(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """security.W002 by class, then security.W019 (X_FRAME_OPTIONS should be DENY)."""
    if django_checks_it(XFRAME_PATH):
        return []
    if not middleware_has(clickjacking.XFrameOptionsMiddleware):
        return [W002]
    return [] if settings.X_FRAME_OPTIONS == "DENY" else [base.W019]


@register(Tags.security, deploy=True)
def check_csrf_middleware(
    app_configs: Sequence[AppConfig] | None, **kwargs: Any
) -> list[CheckMessage]:
    """security.W003 by class, then security.W016 (a secure CSRF cookie)."""
    if django_checks_it(CSRF_PATH):
        return []
    if not middleware_has(csrf_middleware.CsrfViewMiddleware):
        return [W003]
    if settings.CSRF_USE_SESSIONS or settings.CSRF_COOKIE_SECURE is True:
        return []
    return [csrf.W016]
