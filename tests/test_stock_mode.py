"""CHAT_FAST_PATH: one setting chooses the fast path or stock Django, and each piece follows it.

``make test`` runs the tests of the site's behaviour over HTTP twice, the second time with
CHAT_FAST_PATH=0 (its STOCK_TESTS); this module is among them, and checks that the servers the
suite starts really run in the mode the run is in.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest
from django.conf import settings
from django.utils.module_loading import import_string

from tests.conftest import ROOT

STOCK_LOG_LINE = "CHAT_FAST_PATH=0: serving on Django's stock handler"

REPORT = """
import gc, json
import chatsite.asgi
from django.conf import settings
from conversations import asyncdb, statements
from conversations.providers import get_provider

print(json.dumps({
    "application": type(chatsite.asgi.application).__name__,
    "middleware": settings.MIDDLEWARE,
    "statements": statements.implementation().__name__,
    "async_pool": asyncdb.available(),
    "upstream_client": type(get_provider().http_client).__name__,
    "frozen": gc.get_freeze_count() > 0,
    "cache_options": settings.CACHES["default"].get("OPTIONS", {}),
}))
"""


def pieces(fast_path: str) -> dict:
    """What a fresh process on PostgreSQL with Redis picks with CHAT_FAST_PATH=``fast_path``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CHAT_"))}
    env = {
        **clean,
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        # Nothing here connects: the choice depends on the database's kind, not on reaching it.
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/not_connected",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "CHAT_PROVIDER": "openai",
        "OPENAI_API_KEY": "sk-not-used",
        "CHAT_FAST_PATH": fast_path,
    }
    result = subprocess.run(
        [sys.executable, "-c", REPORT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])


def test_the_fast_path_is_the_default_and_uses_every_shortcut():
    fast = pieces("")

    assert fast["application"] == "ChatASGIHandler"
    assert fast["middleware"] == [
        settings.FAST_MIDDLEWARE.get(path, path) for path in settings.STOCK_MIDDLEWARE
    ]
    assert fast["statements"] == "conversations.statements.postgresql"
    assert fast["async_pool"] is True
    assert fast["upstream_client"] == "UpstreamHttpClient"
    assert fast["frozen"] is True
    assert fast["cache_options"] == {"pool_class": "chatsite.cache.SharedConnectionPool"}


def test_chat_fast_path_0_serves_on_stock_classes_only():
    stock = pieces("0")

    assert stock["application"] == "StockApplication"
    assert stock["middleware"] == settings.STOCK_MIDDLEWARE
    assert stock["statements"] == "conversations.statements.orm"
    assert stock["async_pool"] is False
    assert stock["upstream_client"] == "StockUpstreamHttpClient"
    assert stock["frozen"] is False
    assert stock["cache_options"] == {}


def test_each_fast_middleware_is_its_stock_middleware_rehooked_in_the_same_place():
    for stock_path, fast_path in settings.FAST_MIDDLEWARE.items():
        assert stock_path in settings.STOCK_MIDDLEWARE
        assert issubclass(import_string(fast_path), import_string(stock_path)), fast_path
    stock_classes = [
        path for path in settings.STOCK_MIDDLEWARE if not path.startswith("chatsite.middleware.")
    ]
    assert set(stock_classes) == set(settings.FAST_MIDDLEWARE), (
        "every stock middleware class has its fast twin"
    )


def test_the_suites_servers_run_in_the_mode_of_the_run(server):
    """CHAT_FAST_PATH reaches the servers the tests start (they inherit the environment)."""
    assert (STOCK_LOG_LINE in server.log()) is (not settings.CHAT_FAST_PATH)


def check_deploy(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CHAT_"))}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env={
            **clean,
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DJANGO_ALLOWED_HOSTS": "chat.example.com",
            "CHAT_FAST_PATH": "0",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("fast_path", ["0", "1"])
def test_check_deploy_gives_each_warning_once_in_either_mode(fast_path):
    """With the stock middlewares Django's own checks find them; the project's (which find
    the fast path's subclasses) then say nothing more."""
    result = check_deploy(CHAT_FAST_PATH=fast_path)

    assert result.returncode != 0
    assert result.stderr.count("(security.W004)") == 1
    assert result.stderr.count("(security.W008)") == 1
    assert "W001" not in result.stderr and "W003" not in result.stderr
