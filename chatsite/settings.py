"""Settings for chatsite, read from environment variables in this one place.

Local defaults are safe for a developer machine (SQLite, in-process cache, the offline demo
provider); production values fail fast when they are missing. ``.env.example`` lists every variable.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import overload
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value.lower() in {"1", "true", "yes", "on"}:
        return True
    if value.lower() in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


@overload
def env_number(name: str, default: int, cast: type[int] = int) -> int: ...
@overload
def env_number(name: str, default: float, cast: Callable[[str], float]) -> float: ...
def env_number(name: str, default: float, cast: Callable[[str], float] = int) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return cast(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def networks(name: str, values: list[str]) -> list[str]:
    """``values`` if each is an IP network (a CIDR, or one address); else the site refuses to
    start, naming the setting."""
    for value in values:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            message = f"{name} must list networks (CIDRs), not {value!r}"
            raise ImproperlyConfigured(message) from None
    return values


def database_from_url(url: str) -> dict:
    """Translate ``sqlite:///path`` or ``postgres://user:pass@host:port/name`` into DATABASES."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = Path(unquote(parts.path)[1:])
        if not path.is_absolute():
            path = BASE_DIR / path
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(path),
            "TEST": {"NAME": str(path.with_name(f"test_{path.name}"))},
            "OPTIONS": {
                "timeout": 20,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        # A request waits at most DATABASE_POOL_TIMEOUT seconds for a connection, then is
        # answered 503 (conversations/outages.py), as is one whose connection cannot be made.
        timeout = env_number("DATABASE_POOL_TIMEOUT", 3.0, float)
        pool = {"min_size": 1, "max_size": env_number("DATABASE_POOL_SIZE", 20), "timeout": timeout}
        options: dict = {"pool": pool, "connect_timeout": max(1, round(timeout))}
        options.update(dict(parse_qsl(parts.query)))
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")) or "postgres",
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "OPTIONS": options,
        }
    raise ImproperlyConfigured(f"DATABASE_URL scheme {parts.scheme!r} is not supported")


DEBUG = env_bool("DJANGO_DEBUG", default=False)

SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is off "
            "(set DJANGO_DEBUG=1 for local development)."
        )
    SECRET_KEY = "django-insecure-local-development-key-do-not-use-in-production"

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_ratelimit",
    "chatsite",
    "conversations",
]

# The fast path (CHAT_FAST_PATH=1, the default): Django's middlewares re-hooked onto the event
# loop (chatsite/middleware.py), a custom ASGI handler (chatsite/asgi.py), hand-built SQL on
# PostgreSQL (conversations/statements/), an async database pool (conversations/asyncdb.py) and
# an aiohttp transport upstream. CHAT_FAST_PATH=0 serves the same site on Django's, WhiteNoise's
# and httpx's stock classes and the ORM: the way back when an upgrade breaks a shortcut below a
# public API (docs/internals.md lists them all, each with its guard test).
CHAT_FAST_PATH = env_bool("CHAT_FAST_PATH", default=True)

STOCK_MIDDLEWARE = [
    "chatsite.middleware.proxy_headers_middleware",
    "django.middleware.security.SecurityMiddleware",
    "chatsite.middleware.default_headers_middleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# On the fast path each of these stock middlewares is replaced by its subclass, which runs its
# hooks on the event loop instead of in a thread (chatsite/middleware.py).
FAST_MIDDLEWARE = {
    "django.middleware.security.SecurityMiddleware": "chatsite.middleware.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware": "chatsite.middleware.StaticFilesMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware": "chatsite.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware": "chatsite.middleware.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware": "chatsite.middleware.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware": (
        "chatsite.middleware.AuthenticationMiddleware"
    ),
    "django.contrib.messages.middleware.MessageMiddleware": "chatsite.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware": (
        "chatsite.middleware.XFrameOptionsMiddleware"
    ),
}
MIDDLEWARE = (
    [FAST_MIDDLEWARE.get(path, path) for path in STOCK_MIDDLEWARE]
    if CHAT_FAST_PATH
    else STOCK_MIDDLEWARE
)
# Django's deploy checks look for its security, CSRF and X-Frame-Options middlewares by path, so
# they missed the subclasses above (security.W001-W003, though the headers are sent) and then
# skipped the checks that depend on them. chatsite.checks checks by class and runs those.
SILENCED_SYSTEM_CHECKS = ["security.W001", "security.W002", "security.W003"]

ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "conversations.context_processors.site",
            ],
        },
    },
]

DATABASES = {"default": database_from_url(env_str("DATABASE_URL", "sqlite:///db.sqlite3"))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env_str("CACHE_KEY_PREFIX", "chatsite"),
            # One Redis connection pool per process (chatsite/cache.py); stock: one per cache
            # object, so under ASGI one per request.
            "OPTIONS": {"pool_class": "chatsite.cache.SharedConnectionPool"}
            if CHAT_FAST_PATH
            else {},
        }
    }
    # django-ratelimit 4.1 lists django-redis but not Django's own RedisCache (new in Django 4.0,
    # jsocol/django-ratelimit#283). It has what the check asks for: one server shared by every
    # worker, and atomic counters (add is SET NX, incr is INCRBY).
    SILENCED_SYSTEM_CHECKS += ["django_ratelimit.W001"]
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # Without REDIS_URL the site runs as one process (make run, the tests): this process's memory
    # is then the only place requests are counted, so it is shared by everything that counts, as
    # for the chat limits. Several workers need REDIS_URL.
    SILENCED_SYSTEM_CHECKS += ["django_ratelimit.E003", "django_ratelimit.W001"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "chatsite.storage.StaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("DJANGO_SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
CSRF_FAILURE_VIEW = "conversations.views.csrf_failure"
X_FRAME_OPTIONS = "DENY"
# HTTPS. Off by default: the tests and the bench serve DJANGO_DEBUG=0 over plain HTTP on
# loopback. Production values are in .env.example (HSTS is hard to take back: read it first).
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
SECURE_HSTS_SECONDS = env_number("DJANGO_SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env_bool("DJANGO_SECURE_HSTS_PRELOAD", default=False)

# --- The chat relay -------------------------------------------------------------------------

CHAT_SIGNUP_ENABLED = env_bool("CHAT_SIGNUP_ENABLED", default=True)
CHAT_PROVIDER = env_str("CHAT_PROVIDER", "demo")
if CHAT_PROVIDER not in {"demo", "openai"}:
    raise ImproperlyConfigured(f"CHAT_PROVIDER must be 'demo' or 'openai', got {CHAT_PROVIDER!r}")
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL") or None
OPENAI_TIMEOUT_SECONDS = env_number("OPENAI_TIMEOUT_SECONDS", 60.0, float)
OPENAI_MAX_RETRIES = env_number("OPENAI_MAX_RETRIES", 2)
if CHAT_PROVIDER == "openai" and not OPENAI_API_KEY:
    raise ImproperlyConfigured(
        "OPENAI_API_KEY is required when CHAT_PROVIDER=openai "
        "(local servers such as Ollama accept any value, e.g. 'ollama')."
    )
CHAT_MODEL = env_str("CHAT_MODEL", "demo" if CHAT_PROVIDER == "demo" else "gpt-4o-mini")
# The models users may pick (comma-separated); unset: the provider's list (an upstream's
# GET /v1/models), kept this many seconds. CHAT_MODEL, the default, is always on offer.
CHAT_MODELS = env_list("CHAT_MODELS", [])
CHAT_MODELS_CACHE_SECONDS = env_number("CHAT_MODELS_CACHE_SECONDS", 300.0, float)
CHAT_SYSTEM_PROMPT = env_str("CHAT_SYSTEM_PROMPT", "You are a helpful assistant.")
CHAT_DEMO_TOKENS_PER_SECOND = env_number("CHAT_DEMO_TOKENS_PER_SECOND", 30.0, float)
# After a new conversation's first reply completes, the model names it (a short request of its
# own, after the reply has ended); until then, or if that fails, its first words are its title.
CHAT_AUTO_TITLES = env_bool("CHAT_AUTO_TITLES", default=True)
CHAT_TITLE_TIMEOUT_SECONDS = env_number("CHAT_TITLE_TIMEOUT_SECONDS", 5.0, float)
CHAT_KEEPALIVE_SECONDS = env_number("CHAT_KEEPALIVE_SECONDS", 15.0, float)
CHAT_STREAM_MAX_SECONDS = env_number("CHAT_STREAM_MAX_SECONDS", 600.0, float)
# A streaming reply's text so far is saved this often (0: only when it ends).
CHAT_CHECKPOINT_SECONDS = env_number("CHAT_CHECKPOINT_SECONDS", 10.0, float)
# A reply past this many characters is stopped and saved as an error (reply_too_long).
CHAT_MAX_REPLY_CHARS = env_number("CHAT_MAX_REPLY_CHARS", 200_000)
CHAT_MAX_BODY_BYTES = env_number("CHAT_MAX_BODY_BYTES", 256 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = CHAT_MAX_BODY_BYTES
CHAT_MAX_MESSAGE_CHARS = env_number("CHAT_MAX_MESSAGE_CHARS", 32_000)
CHAT_MAX_SYSTEM_PROMPT_CHARS = env_number("CHAT_MAX_SYSTEM_PROMPT_CHARS", 8_000)
CHAT_MAX_HISTORY_ITEMS = env_number("CHAT_MAX_HISTORY_ITEMS", 100)
CHAT_MAX_HISTORY_ITEM_CHARS = env_number("CHAT_MAX_HISTORY_ITEM_CHARS", 32_000)

# Limits. Request counters and stream slots live in Redis when REDIS_URL is set, else in-process.
CHAT_RATE_LIMIT = env_str("CHAT_RATE_LIMIT", "100/m")
CHAT_STREAMS_PER_USER = env_number("CHAT_STREAMS_PER_USER", 10)
CHAT_STREAM_QUEUE_LENGTH = env_number("CHAT_STREAM_QUEUE_LENGTH", 20)
CHAT_STREAM_QUEUE_WAIT_SECONDS = env_number("CHAT_STREAM_QUEUE_WAIT_SECONDS", 10.0, float)
CHAT_TRUSTED_PROXIES = env_list("CHAT_TRUSTED_PROXIES", [])
# Tokens (prompt and completion, as the upstream counts them or estimated) a user may use per
# UTC day; at or over it a new reply gets 429 quota_exceeded. 0: no quota. A user's own quota
# (admin, "daily token quotas") replaces it; which users have one is kept in each process and
# re-read this often (an override saved through the admin counts at once in that process).
CHAT_DAILY_TOKEN_QUOTA = env_number("CHAT_DAILY_TOKEN_QUOTA", 0)
CHAT_QUOTA_OVERRIDES_CACHE_SECONDS = env_number("CHAT_QUOTA_OVERRIDES_CACHE_SECONDS", 30.0, float)
if CHAT_DAILY_TOKEN_QUOTA < 0:
    raise ImproperlyConfigured("CHAT_DAILY_TOKEN_QUOTA must be 0 (no quota) or more")
# With REDIS_URL: how often a process vouches in Redis for the replies it produces (a reply
# whose producer stopped vouching for three beats may be marked interrupted).
CHAT_HEARTBEAT_SECONDS = env_number("CHAT_HEARTBEAT_SECONDS", 5.0, float)
# /readyz: how long PostgreSQL and Redis each have to answer before the site says it is not ready.
CHAT_READY_TIMEOUT_SECONDS = env_number("CHAT_READY_TIMEOUT_SECONDS", 2.0, float)
# A reply whose last client left goes on this long for one to come back (0: stopped at once).
CHAT_DETACH_GRACE_SECONDS = env_number("CHAT_DETACH_GRACE_SECONDS", 10.0, float)
# How long an ended reply's tokens are kept for clients that resume it frame for frame.
CHAT_REPLY_RETENTION_SECONDS = env_number("CHAT_REPLY_RETENTION_SECONDS", 60.0, float)
# GET /metrics (chatsite.metrics): Prometheus's text format, on by default. Served to clients in
# these networks (the client as CHAT_TRUSTED_PROXIES reveal it) or presenting this bearer token.
CHAT_METRICS = env_bool("CHAT_METRICS", default=True)
CHAT_METRICS_ALLOWED = networks(
    "CHAT_METRICS_ALLOWED", env_list("CHAT_METRICS_ALLOWED", ["127.0.0.0/8", "::1/128"])
)
CHAT_METRICS_TOKEN = env_str("CHAT_METRICS_TOKEN")
# X-Forwarded-Proto: https marks a request as HTTPS, but only from CHAT_TRUSTED_PROXIES: the
# security middleware drops the header from anyone else (chatsite.middleware).
if env_bool("DJANGO_SECURE_PROXY_SSL_HEADER", default=False):
    if not CHAT_TRUSTED_PROXIES:
        raise ImproperlyConfigured(
            "DJANGO_SECURE_PROXY_SSL_HEADER=1 needs CHAT_TRUSTED_PROXIES: X-Forwarded-Proto is "
            "believed only from those proxies."
        )
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Sign-in and sign-up attempts (POSTs), per client IP and per POSTed username, in the same
# rate syntax; counted in Django's cache (Redis when REDIS_URL is set) by django-ratelimit.
CHAT_SIGNIN_RATE_PER_USERNAME = env_str("CHAT_SIGNIN_RATE_PER_USERNAME", "5/5m")
CHAT_SIGNIN_RATE_PER_IP = env_str("CHAT_SIGNIN_RATE_PER_IP", "20/5m")
CHAT_SIGNUP_RATE_PER_IP = env_str("CHAT_SIGNUP_RATE_PER_IP", "10/h")
# How long a cancel or a delete waits for another process to stop a reply (REDIS_URL only).
CHAT_STOP_WAIT_SECONDS = env_number("CHAT_STOP_WAIT_SECONDS", 5.0, float)

LOG_FORMAT = env_str("LOG_FORMAT", "plain")
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be plain or json, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "chatsite.logs.JsonFormatter"},
    },
    "filters": {
        "without_outage_tracebacks": {"()": "conversations.outages.WithoutOutageTracebacks"},
        "request_id": {"()": "chatsite.logs.RequestIdFilter"},
        "client_errors_without_tracebacks": {"()": "chatsite.logs.ClientErrorsWithoutTracebacks"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # A database outage is logged once by conversations.outages, not once per request.
        # A 4xx is logged in one line (a denied permission is no fault of the site's).
        "django.request": {
            "filters": ["without_outage_tracebacks", "client_errors_without_tracebacks"]
        },
        # One line per upstream request duplicates the reply's own line (conversations.replies).
        "httpx": {"level": "WARNING"},
        # uvicorn's own lines (start, stop, errors, and its access log unless it is off:
        # uvicorn keeps it off by leaving that logger without a handler) in the same format.
        **(
            {
                name: {"handlers": ["console"], "level": "INFO", "propagate": False}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
                if name != "uvicorn.access" or logging.getLogger(name).handlers
            }
            if LOG_FORMAT == "json"
            else {}
        ),
    },
}
